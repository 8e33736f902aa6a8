"""Tensor parallelism on a fake 4-device CPU mesh (data 2 x model 2): parameters really sharded on the
model axis, and the first losses equal the 1-device run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from train_helpers import prepare_tiny_data, run_train, tiny_config, train_losses

pytestmark = pytest.mark.slow
FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def probe(model_dir, axes, method="lora"):
    env = {**os.environ, **FOUR_DEVICES, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "tp_probe.py"), str(model_dir), "2", ",".join(axes), method],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def model_sharded(params, name):
    entry = next(v for k, v in params.items() if k.endswith(name))
    return {axis for axis, mesh_axis in zip(entry["axes"], entry["spec"]) if mesh_axis == "model"}


def test_parameters_are_sharded_on_the_model_axis(tiny_model_dir):
    out = probe(tiny_model_dir, ["mlp", "heads", "kv_head", "vocab"])
    assert out["devices"] == 4 and out["mesh"]["model"] == 2 and out["mesh"]["data"] == 2
    params = out["params"]
    assert model_sharded(params, "q_proj.wrapped.weight") == {"kv_head"}
    assert model_sharded(params, "k_proj.wrapped.weight") == {"kv_head"}
    assert model_sharded(params, "v_proj.wrapped.weight") == {"kv_head"}
    assert model_sharded(params, "o_proj.wrapped.weight") == {"heads"}
    for mlp in ("gate_proj", "up_proj", "down_proj"):
        assert model_sharded(params, f"{mlp}.wrapped.weight") == {"mlp"}
    assert model_sharded(params, "token_embeddings.weight") == {"vocab"}
    assert model_sharded(params, "q_proj.lora.lora_B.weight") == {"kv_head"}, "LoRA B follows its layer"


def test_heads_alone_leaves_llama_qkv_replicated(tiny_model_dir):
    """Why the configs name kv_head: Llama's q/k/v projections are laid out by KV head."""
    params = probe(tiny_model_dir, ["mlp", "heads"], method="full")["params"]
    assert model_sharded(params, "q_proj.weight") == set()
    assert model_sharded(params, "o_proj.weight") == {"heads"}


@pytest.mark.parametrize("method", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "full"}], ids=["lora", "full"])
def test_tensor_parallel_losses_equal_one_device(method, tiny_model_dir, tmp_path):
    data = prepare_tiny_data(tmp_path / "data", tiny_model_dir)
    overrides = ("--trainer.num_train_steps", "4", "--export", "false")
    one = tiny_config(tmp_path / "one.yaml", tiny_model_dir, data, tmp_path / "one", method)
    assert run_train(one, *overrides).returncode == 0
    tp = tiny_config(tmp_path / "tp.yaml", tiny_model_dir, data, tmp_path / "tp", method,
                     model_axis_size=2, tensor_parallel_axes=["mlp", "heads", "kv_head", "vocab"])
    result = run_train(tp, *overrides, env=FOUR_DEVICES)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "tp")
    assert sorted(got) == [0, 1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-5, rel=1e-5), step
