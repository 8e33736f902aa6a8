"""MFU on paper: the device table, the FLOPs per token (checked against Levanter's own formula and
parameter counts on real Levanter Llama objects), and step_mfu's arithmetic."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import haliax as hax
import jax
import pytest
from levanter.models.llama import LlamaConfig, LlamaLMHeadModel

from pipelines.config import DEFAULT_LORA_TARGETS
from pipelines.mfu import (
    DEVICES,
    MfuReport,
    forward_flops_per_token,
    levanter_train_flops_per_token,
    measure_matmul_flops,
    peak_flops_per_device,
    step_mfu,
    train_flops_per_token,
)
from pipelines.model_dims import LLAMA2_7B, ModelDims

# the tiny test Llama's shape (tests/tiny.py): GQA (4 heads, 2 KV heads) and tied embeddings
TINY = LlamaConfig(seq_len=512, hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   tie_word_embeddings=True)
TINY_VOCAB = 300


@pytest.mark.parametrize(
    "kind, dtype, expected",
    [("TPU v3", "bfloat16", 61.5e12), ("TPU v4", "bf16", 275e12), ("TPU v5 lite", "bfloat16", 197e12),
     ("TPU v5", "bfloat16", 459e12), ("TPU v6 lite", "bfloat16", 918e12), ("TPU v2", "bfloat16", 22.5e12),
     ("tpu  V5e", "bfloat16", 197e12), ("TPU v4", "float32", None), ("cpu", "float32", None),
     ("NVIDIA H100", "bfloat16", None), ("TPU v7x", "bfloat16", None)],
)
def test_peak_lookup_by_device_kind(kind, dtype, expected):
    assert peak_flops_per_device(kind, dtype) == expected


def test_table_is_per_jax_device():
    assert DEVICES["v3"].hbm_bytes == 16 * 2**30 and DEVICES["v3"].devices_per_chip == 2
    assert DEVICES["v4"].bf16_flops == 275e12 and DEVICES["v5e"].hbm_bytes == 16 * 2**30


@pytest.mark.parametrize("seq_len", [32, 256, 512])
def test_tiny_llama_flops_match_levanter(seq_len):
    levanter_forward = dataclasses.replace(TINY, seq_len=seq_len).flops_per_token(TINY_VOCAB)
    dims = ModelDims.from_levanter(TINY, TINY_VOCAB)
    assert forward_flops_per_token(dims, seq_len).total == pytest.approx(levanter_forward, rel=1e-12)
    assert levanter_train_flops_per_token(TINY, TINY_VOCAB, seq_len) == pytest.approx(3 * levanter_forward, rel=1e-12)


def test_param_counts_match_levanter_models():
    dims = ModelDims.from_levanter(TINY, TINY_VOCAB)
    assert dims.num_params() == TINY.total_trainable_params(TINY_VOCAB)
    model = eqx.filter_eval_shape(LlamaLMHeadModel.init, hax.Axis("vocab", TINY_VOCAB), TINY, key=jax.random.PRNGKey(0))
    arrays = [x for x in jax.tree_util.tree_leaves(model) if hasattr(x, "shape")]
    assert sum(math.prod(a.shape) for a in arrays) == dims.num_params()
    assert LLAMA2_7B.num_params() == 6_738_415_616  # the published "7B": 6.74 B


def test_lora_param_count_matches_a_loraized_levanter_model():
    from levanter.lora import LoraConfig, loraize

    base = eqx.filter_eval_shape(LlamaLMHeadModel.init, hax.Axis("vocab", TINY_VOCAB), TINY, key=jax.random.PRNGKey(0))
    lora = eqx.filter_eval_shape(lambda m: loraize(m, LoraConfig(r=8, alpha=8, target_modules=DEFAULT_LORA_TARGETS), key=jax.random.PRNGKey(1)), base)
    leaves = jax.tree_util.tree_leaves_with_path(lora)
    count = sum(math.prod(a.shape) for path, a in leaves if ".lora." in jax.tree_util.keystr(path) and hasattr(a, "shape"))
    assert count == ModelDims.from_levanter(TINY, TINY_VOCAB).num_lora_params(8)
    assert LLAMA2_7B.num_lora_params(8) == 19_988_480


def test_llama2_7b_known_numbers():
    fwd = forward_flops_per_token(LLAMA2_7B, 256)
    # per layer: q,k,v,o 4 x 2 x 4096^2 + MLP 3 x 2 x 4096 x 11008 = 404,750,336; x 32 layers
    assert fwd.linear == 32 * 404_750_336 == 12_952_010_752
    assert fwd.attention == 32 * 256 * 32 * (4 * 128 + 3) == 135_004_160
    assert fwd.lm_head == 2 * 4096 * 32000
    assert fwd.total == 13_349_158_912  # ~2 x 6.74 B params
    assert train_flops_per_token(LLAMA2_7B, 256) == 3 * 13_349_158_912
    lora = train_flops_per_token(LLAMA2_7B, 256, lora_rank=8)
    assert lora == 2 * (12_952_010_752 + 262_144_000) + 3 * 135_004_160 + 3 * 2 * 19_988_480 == 26_953_252_864
    # prompt tuning (train.step_flops passes rank 0): frozen weights, so forward + activation gradients only
    assert train_flops_per_token(LLAMA2_7B, 256, lora_rank=0) == 2 * (12_952_010_752 + 262_144_000) + 3 * 135_004_160


def test_step_mfu_on_a_v3_8():
    # the full-fine-tune config's step: 128 x 256 tokens; 8 v3 TensorCores x 61.5 TFLOP/s = 492 TFLOP/s
    report = step_mfu(128 * 256, 10.0, 3 * 13_349_158_912, "TPU v3", 8, "bfloat16")
    assert isinstance(report, MfuReport)
    assert report.model_flops_per_step == 32768 * 40_047_476_736
    assert report.achieved_flops_per_second == pytest.approx(1.31227572e14)
    assert report.peak_flops_per_second == 492e12
    assert report.mfu == pytest.approx(0.266722, abs=1e-6)
    assert report.tokens_per_second == 3276.8


def test_unknown_device_or_dtype_gives_no_mfu():
    for kind, dtype in (("NVIDIA A100-SXM4-80GB", "bfloat16"), ("cpu", "float32"), ("TPU v4", "float32")):
        report = step_mfu(1024, 2.0, 1e9, kind, 4, dtype)
        assert report.mfu is None and report.peak_flops_per_second is None
        assert report.achieved_flops_per_second == 1024 * 1e9 / 2.0


def test_measured_peak_overrides_the_table():
    report = step_mfu(1024, 2.0, 1e9, "cpu", 1, "float32", peak_per_device=1.024e12)
    assert report.mfu == pytest.approx(0.5)


@pytest.mark.parametrize("args", [(1024, 0.0), (1024, -1.0), (-1, 1.0)])
def test_bad_steps_raise(args):
    with pytest.raises(ValueError):
        step_mfu(*args, 1e9, "TPU v4", 4, "bfloat16")


def test_matmul_benchmark_measures_something():
    assert measure_matmul_flops(n=128, repeats=2) > 1e6
