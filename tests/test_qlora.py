"""LoRA on a quantized base (``method.quantize_base``) on the tiny Llama: what the frozen weights
take in memory, the forward, training with the real trainer, the export, the config errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import levanter_model
from test_train_e2e import PROMPTS, hf_logits, jax_logits
from train_helpers import metrics, prepare_tiny_data, run_train, tiny_config, train_losses


def loraized(model):
    import jax
    from levanter.lora import LoraConfig

    from pipelines.config import DEFAULT_LORA_TARGETS
    from pipelines.levanter_compat import loraize_from_base

    return loraize_from_base(model, LoraConfig(target_modules=DEFAULT_LORA_TARGETS, r=4, alpha=8), jax.random.PRNGKey(0))


def logits(model, n=24):
    import haliax as hax
    import jax.numpy as jnp
    from levanter.layers.attention import AttentionMask

    tokens = hax.named(jnp.arange(3, 3 + n, dtype=jnp.int32), hax.Axis("position", n))
    return np.asarray(hax.named_jit(lambda m, t: m(t, AttentionMask.causal()))(model, tokens).array)


@pytest.fixture(scope="module")
def in_memory(tiny_model_dir):
    """The loraized tiny model in float and with each quantized base, plus their logits."""
    import haliax as hax

    from pipelines.quantized_base import quantize_base

    with levanter_model(tiny_model_dir) as (model, _, _):
        model = loraized(model)
        models = {"f32": model, **{k: hax.named_jit(lambda m, k=k: quantize_base(m, k))(model) for k in ("int8", "nf4")}}
        yield models, {k: logits(m) for k, m in models.items()}


def test_frozen_weights_take_a_quarter_and_an_eighth(in_memory):
    from pipelines.quantized_base import QuantizedLinear, base_weight_bytes, count_quantized

    models, _ = in_memory
    f32 = base_weight_bytes(models["f32"])
    assert f32 == 2 * 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)  # 2 layers of q, o; k, v (2 KV heads); gate, up, down; float32
    rows = 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)  # one int8 scale per output channel
    assert base_weight_bytes(models["int8"]) == f32 // 4 + 4 * rows
    assert base_weight_bytes(models["nf4"]) == f32 // 8 + f32 // 64  # + one float32 scale per 64 weights
    for kind in ("int8", "nf4"):
        assert count_quantized(models[kind]) == 7  # the stacked q, k, v, o, gate, up, down
        layer = models[kind].transformer.layers.stacked.mlp.down_proj.wrapped
        assert isinstance(layer, QuantizedLinear) and layer.codes.dtype == {"int8": np.int8, "nf4": np.uint8}[kind]
    print(f"\nbase linear weights, tiny Llama: f32 {f32} B, int8 {base_weight_bytes(models['int8'])} B, nf4 {base_weight_bytes(models['nf4'])} B")


def test_every_param_leaf_shrinks(in_memory):
    """All of the model's arrays (embeddings, norms and LoRA stay float): the codes really replace the weights."""
    import equinox as eqx
    import jax

    models, _ = in_memory
    total = {k: sum(x.nbytes for x in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))) for k, m in models.items()}
    linear = 4 * 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
    assert total["f32"] - total["int8"] > 0.7 * linear
    assert total["f32"] - total["nf4"] > 0.85 * linear


def test_quantized_weights_are_not_trainable(in_memory):
    """Levanter's LoRA filter leaves only the adapters' A and B: floats; no code or scale gets a gradient."""
    import jax
    from levanter.lora import lora_trainable_params_filter
    from levanter.trainer_state import trainables_only

    for kind in ("int8", "nf4"):
        model = in_memory[0][kind]
        trainable = jax.tree_util.tree_leaves(trainables_only(model, lora_trainable_params_filter(model)))
        assert len(trainable) == 2 * 7 and all(x.dtype == np.float32 for x in trainable)  # A and B of 7 stacked layers


@pytest.mark.parametrize("kind, tolerance", [("int8", 0.02), ("nf4", 0.25)])
def test_forward_is_the_dequantized_model(in_memory, kind, tolerance):
    """B = 0: the quantized model computes the base model up to the quantization error, and exactly
    what its dequantized float copy computes."""
    from pipelines.quantized_base import dequantize_base

    models, out = in_memory
    scale = np.abs(out["f32"]).max()
    assert 0 < np.abs(out[kind] - out["f32"]).max() < tolerance * scale
    np.testing.assert_allclose(logits(dequantize_base(models[kind])), out[kind], atol=1e-5, rtol=0)


def test_dequantized_weights_keep_the_linear_axes(in_memory):
    models, _ = in_memory
    for kind in ("int8", "nf4"):
        for name in ("q_proj", "o_proj"):
            floats = getattr(models["f32"].transformer.layers.stacked.self_attn, name).wrapped.weight
            quantized = getattr(models[kind].transformer.layers.stacked.self_attn, name).wrapped.weight
            assert quantized.axes == floats.axes


def test_merge_lora_on_a_quantized_base(in_memory):
    """What the task metrics decode with: LoRA folded into the dequantized weights, same logits."""
    from pipelines.levanter_compat import merge_lora

    models, out = in_memory
    for kind in ("int8", "nf4"):
        np.testing.assert_allclose(logits(merge_lora(models[kind])), out[kind], atol=1e-5, rtol=0)


def test_an_untied_lm_head_stays_float(tiny_family_dir):
    import haliax as hax
    import haliax.nn as hnn

    from pipelines.quantized_base import count_quantized, quantize_base

    with levanter_model(tiny_family_dir("llama3")) as (model, _, _):
        quantized = hax.named_jit(lambda m: quantize_base(m, "nf4"))(loraized(model))
        assert isinstance(quantized.lm_head, hnn.Linear) and count_quantized(quantized) == 7


@pytest.mark.slow
def test_codes_shard_like_the_weights_under_tensor_parallelism(tiny_model_dir):
    """int8 codes keep the weight's axes, so they shard exactly like it; nf4 codes shard on the
    output axes (their packed input axis is replicated)."""
    from test_tensor_parallel import model_sharded, probe

    axes = ["mlp", "heads", "kv_head", "vocab"]
    int8 = probe(tiny_model_dir, axes, method="lora-int8")["params"]
    for name, axis in [("q_proj", "kv_head"), ("o_proj", "heads"), ("up_proj", "mlp"), ("down_proj", "mlp")]:
        assert model_sharded(int8, f"{name}.wrapped.codes") == {axis}, name
    nf4 = probe(tiny_model_dir, axes, method="lora-nf4")["params"]
    for name, axis in [("q_proj", {"kv_head"}), ("up_proj", {"mlp"}), ("o_proj", set()), ("down_proj", set())]:
        assert model_sharded(nf4, f"{name}.wrapped.codes") == axis, name
        assert model_sharded(nf4, f"{name}.wrapped.scales") == axis, name


# --- the real trainer -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


def _qlora_run(tmp_path_factory, tiny_model_dir, tiny_data, kind, *overrides):
    root = tmp_path_factory.mktemp(f"qlora-{kind}")
    method = {"type": "lora", "r": 4, "alpha": 8, "quantize_base": kind}
    result = run_train(tiny_config(root / "config.yaml", tiny_model_dir, tiny_data, root / "run", method), *overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "run"


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory, tiny_model_dir, tiny_data):
    """Levanter's default compute: scanned (stacked) layers; task metrics (generation) at eval steps."""
    return _qlora_run(tmp_path_factory, tiny_model_dir, tiny_data, "nf4",
                      "--task_eval.examples", "4", "--task_eval.batch_size", "4", "--task_eval.max_new_tokens", "16")  # fmt: skip


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_model_dir, tiny_data):
    """The CPU configs' compute: unrolled layers (BlockSeq), no remat."""
    return _qlora_run(tmp_path_factory, tiny_model_dir, tiny_data, "int8", "--compute.scan_layers", "false", "--compute.gradient_checkpointing", "false")


@pytest.mark.parametrize("run", ["nf4_run", "int8_run"])
def test_lora_on_a_quantized_base_trains(run, request):
    losses = train_losses(request.getfixturevalue(run))
    assert sorted(losses) == list(range(6))
    assert losses[5] < losses[0] - 0.1, losses


def test_task_metrics_decode_with_the_quantized_model(nf4_run):
    rows = [r for r in metrics(nf4_run) if "task_exact_match" in r]
    assert [r["step"] for r in rows] == [2, 5] and all(r["task_rows"] == 4 for r in rows)


@pytest.mark.parametrize("run", ["nf4_run", "int8_run"])
def test_export_is_the_quantized_model_in_float(run, request):
    """RUN_DIR/hf (dequantized base + merged LoRA) gives the in-memory quantized + LoRA model's logits
    (rebuilt from the run's config and its last checkpoint)."""
    run_dir = request.getfixturevalue(run)
    hf = hf_logits(run_dir / "hf", PROMPTS)
    jx = jax_logits(run_dir / "checkpoints" / "step-5", [ids for ids, _ in hf])
    for (_, torch_logits), jax_l in zip(hf, jx):
        np.testing.assert_allclose(torch_logits, jax_l, atol=1e-4, rtol=0)
    from safetensors.numpy import load_file

    assert {str(w.dtype) for w in load_file(str(run_dir / "hf" / "model.safetensors")).values()} == {"float32"}


def test_export_command_for_a_saved_step(int8_run, tmp_path):
    """``parsetune export`` rebuilds the quantized model from the run's config and writes it in float."""
    from conftest import run_cli

    out = tmp_path / "step2"
    result = run_cli("export", "--checkpoint", str(int8_run / "checkpoints" / "step-2"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    hf = hf_logits(out, PROMPTS)
    jx = jax_logits(int8_run / "checkpoints" / "step-2", [ids for ids, _ in hf])
    for (_, torch_logits), jax_l in zip(hf, jx):
        np.testing.assert_allclose(torch_logits, jax_l, atol=1e-4, rtol=0)


def test_peft_adapter_loads_on_the_original_base(nf4_run, tiny_model_dir):
    """The adapter is the LoRA trained on the quantized base; on the float base it adds the same
    delta: exported weight = dequantize(quantize(base)) + (PEFT-merged weight - base)."""
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from pipelines.quantize import dequantize, quantize

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    base_sd = {k: v.detach().numpy().copy() for k, v in base.state_dict().items()}
    merged_peft = PeftModel.from_pretrained(base, nf4_run / "adapter").merge_and_unload()
    peft_sd = {k: v.detach().numpy() for k, v in merged_peft.state_dict().items()}
    exported = load_file(str(nf4_run / "hf" / "model.safetensors"))
    targets = [k for k in base_sd if k.endswith("_proj.weight")]
    assert len(targets) == 14
    for name in targets:
        delta = peft_sd[name] - base_sd[name]
        assert np.abs(delta).max() > 0, f"{name}: the adapter is a no-op on the base"
        base_nf4 = np.asarray(dequantize(quantize(base_sd[name], "nf4"), "nf4", base_sd[name].shape[-1]))
        np.testing.assert_allclose(exported[name], base_nf4 + delta, atol=1e-6, rtol=0)
    for name in set(base_sd) - set(targets):
        if name in exported:
            np.testing.assert_array_equal(exported[name], base_sd[name])


# --- config errors ----------------------------------------------------------------------------


def test_quantize_base_on_a_full_fine_tune_is_one_line(tmp_path, tiny_model_dir, tiny_data):
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, tmp_path / "run", {"type": "full", "quantize_base": "int8"})
    result = run_train(config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].endswith("method.quantize_base: LoRA only (method.type: lora); a full fine-tune trains every weight in float")
    assert not (tmp_path / "run").exists()


def test_unknown_quantization_is_one_line(tmp_path, tiny_model_dir, tiny_data):
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, tmp_path / "run", {"type": "lora", "quantize_base": "int4"})
    result = run_train(config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "parsetune train: error: method.quantize_base: unknown quantization 'int4' (expected int8 or nf4, or null for float weights)"
    )
    assert not (tmp_path / "run").exists()
