"""pipelines/dot_vjp.py: the linear layers' gradient for XLA:CPU equals JAX's autodiff, alone, in a
LoRA and a full fine-tune of a tiny Llama, on one device and on a tensor-parallel fake mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import REPO
from pipelines.dot_vjp import TransposeFreeDot

CASES = {  # x shape, w shape, dimension numbers (as haliax.nn.Linear builds them)
    "out_first": ((2, 3, 5), (7, 5), (((2,), (1,)), ((), ()))),
    "in_first": ((2, 3, 5), (5, 7), (((2,), (0,)), ((), ()))),
    "heads_out": ((2, 3, 6), (4, 2, 6), (((2,), (2,)), ((), ()))),  # q_proj: [heads, head_size, embed]
    "heads_in": ((2, 3, 4, 2), (6, 4, 2), (((2, 3), (1, 2)), ((), ()))),  # o_proj: [embed, heads, head_size]
    "wide_in": ((3, 9), (4, 9), (((1,), (1,)), ((), ()))),  # contraction longer than the output
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_equal_autodiff(case):
    x_shape, w_shape, numbers = CASES[case]
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    out = lax.dot_general(x, w, numbers)
    cotangent = jax.random.normal(kg, out.shape)

    def pullback(dot):
        y, vjp = jax.vjp(lambda x, w: dot(x, w, numbers), x, w)
        return y, *vjp(cotangent)

    y, dx, dw = pullback(TransposeFreeDot())
    y0, dx0, dw0 = pullback(lax.dot_general)
    np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw0, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda x, w: TransposeFreeDot()(x, w, numbers))(x, w))
    assert "custom_vjp_call" in jaxpr, "a linear layer's contraction goes through the custom gradient"


def test_other_contractions_are_plain_dot_general():
    """Batched contractions (attention scores) and unusual axis orders keep JAX's own gradient."""
    x, w = jnp.ones((2, 3, 5)), jnp.ones((2, 5, 4))
    numbers = (((2,), (1,)), ((0,), (0,)))
    jaxpr = str(jax.make_jaxpr(lambda x, w: TransposeFreeDot()(x, w, numbers))(x, w))
    assert "custom_vjp_call" not in jaxpr and "dot_general" in jaxpr
    np.testing.assert_array_equal(TransposeFreeDot()(x, w, numbers), lax.dot_general(x, w, numbers))


def probe(model_dir, model_axis_size: int, method: str, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "dot_vjp_probe.py"), str(model_dir), str(model_axis_size), method],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check(out: dict, method: str) -> None:
    assert out["plain_transpose_free_linears"] == 0
    # every Linear of the (scanned) layer block, LoRA's A and B included
    assert out["transpose_free_linears"] == (21 if method == "lora" else 7)
    assert abs(out["loss"] - out["plain_loss"]) <= 1e-6 * abs(out["plain_loss"])
    assert out["grad_scale"] > 1e-4, "the gradients compared are not all zero"
    assert out["relative_grad_diff"] <= 1e-5


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_gradients_equal_autodiff_on_one_device(tiny_model_dir, method):
    out = probe(tiny_model_dir, 1, method, devices=1)
    assert out["devices"] == 1
    check(out, method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_gradients_equal_autodiff_under_tensor_parallelism(tiny_model_dir, method):
    out = probe(tiny_model_dir, 2, method, devices=4)
    assert out["devices"] == 4 and out["mesh"]["model"] == 2 and out["mesh"]["data"] == 2
    check(out, method)
