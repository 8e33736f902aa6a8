"""Each fix in pipelines/levanter_compat.py: the upstream bug is still there, and the fix works.

When an upgrade fixes a bug upstream, its `test_upstream_*` test fails: drop that fix then.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import haliax as hax
import pytest
from levanter.layers.attention import AttentionMask
from levanter.lora import DEFAULT_DICT_PREFIX, LoraConfig, loraize, merge_lora_modules

from conftest import levanter_model
from pipelines.config import DEFAULT_LORA_TARGETS
from parsetune.model_families import converter_for_checkpoint
from pipelines.levanter_compat import (
    count_lora_modules, loraize_from_base, merge_lora, peft_prefix, restack_layers, unroll_layers,
)

LORA = LoraConfig(target_modules=DEFAULT_LORA_TARGETS, r=4, alpha=8)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    with levanter_model(tiny_model_dir) as (model, _, _):
        yield model


def logits(model):
    Pos = hax.Axis("position", 12)
    tokens = hax.named(jnp.arange(12, dtype=jnp.int32) * 7 + 3, Pos)
    return model(tokens, AttentionMask.causal()).array


def test_upstream_from_hf_needs_the_hub(tiny_model_dir, monkeypatch):
    from levanter.compat.hf_checkpoints import HFCheckpointConverter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception):
        HFCheckpointConverter.from_hf(str(tiny_model_dir))


def test_converter_from_local_config_json_works_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    converter = converter_for_checkpoint(str(tiny_model_dir))
    assert type(converter.default_config).__name__ == "LlamaConfig"
    assert converter.default_config.rope.theta == 100000.0 and converter.default_config.tie_word_embeddings


def test_upstream_loraize_changes_the_model(base):
    stock = loraize(base, LORA, key=jax.random.PRNGKey(0))
    assert jnp.max(jnp.abs(logits(stock) - logits(base))) > 1e-2


def test_loraize_from_base_starts_as_the_base_model(base):
    ours = loraize_from_base(base, LORA, key=jax.random.PRNGKey(0))
    assert count_lora_modules(ours) == 7  # q k v o gate up down (stacked over layers)
    assert jnp.array_equal(logits(ours), logits(base))
    # A is still random (else the gradient of B would be zero forever)
    a = ours.transformer.layers.stacked.self_attn.q_proj.lora.lora_A.weight.array
    assert jnp.abs(a).max() > 0


def test_upstream_merge_flips_the_weight_axes(base):
    lora = loraize(base, LORA, key=jax.random.PRNGKey(0))
    merged = merge_lora_modules(lora)
    wrapped = lora.transformer.layers.stacked.mlp.up_proj.wrapped.weight
    assert merged.transformer.layers.stacked.mlp.up_proj.weight.axes != wrapped.axes


def test_merge_lora_keeps_axes_and_logits(base):
    lora = loraize(base, LORA, key=jax.random.PRNGKey(0))
    merged = merge_lora(lora)
    for name in ("up_proj", "down_proj", "gate_proj"):
        assert getattr(merged.transformer.layers.stacked.mlp, name).weight.axes == getattr(lora.transformer.layers.stacked.mlp, name).wrapped.weight.axes
    assert merged.transformer.layers.stacked.self_attn.q_proj.weight.axes == lora.transformer.layers.stacked.self_attn.q_proj.wrapped.weight.axes
    assert jnp.max(jnp.abs(logits(merged) - logits(lora))) < 1e-4
    assert jnp.max(jnp.abs(logits(merged) - logits(base))) > 1e-2


def test_upstream_peft_prefix_is_gpt2s():
    assert DEFAULT_DICT_PREFIX == "base_model.model.transformer"


def test_peft_prefix_for_llama():
    assert peft_prefix("llama") == "base_model.model"
    assert peft_prefix("gpt2") == "base_model.model.transformer"


def test_hub_ids_are_read_from_the_hub_with_a_clear_error_offline(monkeypatch, tmp_path):
    from parsetune.errors import UserError
    from parsetune.hf_files import is_hub_id, read_hf_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert is_hub_id("meta-llama/Llama-2-7b-hf") and not is_hub_id("gs://b/m") and not is_hub_id(str(tmp_path))
    with pytest.raises(UserError, match="cannot read its config from the Hugging Face hub"):
        read_hf_config("meta-llama/Llama-2-7b-hf")


def test_relative_local_paths_are_made_absolute(tiny_model_dir, monkeypatch):
    """`models/x` looks like a hub id to Levanter's loader; an absolute path never does."""
    monkeypatch.chdir(tiny_model_dir.parent.parent)
    relative = f"{tiny_model_dir.parent.name}/{tiny_model_dir.name}"
    converter = converter_for_checkpoint(relative)
    assert converter.reference_checkpoint.model_name_or_path == str(tiny_model_dir)


def test_upstream_qwen2_config_has_no_no_bias(tiny_family_dir):
    """Levanter's QwenConfig.from_hf_config reads `no_bias`, which transformers' Qwen2Config lacks."""
    from levanter.compat.hf_checkpoints import HFCheckpointConverter
    from levanter.models.qwen import QwenConfig
    from transformers import Qwen2Config

    model_dir = str(tiny_family_dir("qwen2"))
    converter = HFCheckpointConverter(QwenConfig, reference_checkpoint=model_dir, HfConfigClass=Qwen2Config, tokenizer=model_dir)
    with pytest.raises(AttributeError, match="no_bias"):
        converter.default_config


def test_converter_reads_a_qwen2_checkpoint(tiny_family_dir):
    config = converter_for_checkpoint(str(tiny_family_dir("qwen2"))).default_config
    assert type(config).__name__ == "QwenConfig"
    assert not config.use_bias and config.attention_config().use_bias  # biases on q/k/v only, as in HF's Qwen2


def test_upstream_cannot_load_unrolled_layers(tiny_model_dir):
    import dataclasses

    converter = converter_for_checkpoint(str(tiny_model_dir))
    config = dataclasses.replace(converter.default_config, scan_layers=False)
    with pytest.raises(AttributeError, match="from_state_dict"):
        converter.load_pretrained(config.model_type, config=config, dtype=jnp.float32)


def test_unrolled_layers_compute_the_same_and_restack_exactly(base):
    from haliax.nn.scan import BlockSeq, Stacked

    unrolled = unroll_layers(base)
    assert isinstance(unrolled.transformer.layers, BlockSeq) and len(unrolled.transformer.layers.blocks) == base.config.num_layers
    assert jnp.max(jnp.abs(logits(unrolled) - logits(base))) < 1e-5
    back = restack_layers(unrolled)
    assert isinstance(back.transformer.layers, Stacked)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(base)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(base)):
        assert jnp.array_equal(a.array if hasattr(a, "array") else a, b.array if hasattr(b, "array") else b)
    # LoRA on unrolled layers restacks to the stacked LoRA layout (what merge and PEFT export read)
    lora = restack_layers(loraize_from_base(unrolled, LORA, key=jax.random.PRNGKey(0)))
    stacked_lora = loraize_from_base(base, LORA, key=jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(lora) == jax.tree_util.tree_structure(stacked_lora)
    assert lora.transformer.layers.stacked.mlp.up_proj.lora.lora_B.weight.axes == stacked_lora.transformer.layers.stacked.mlp.up_proj.lora.lora_B.weight.axes


def _final_save_after_a_timed_one(base_path, save_forced):
    """A timed (temporary) save of step 3, then the trainer's final forced save of the same step,
    both after save_interval has elapsed; returns the checkpoints left and their metadata."""
    import datetime
    import json
    import os
    import types

    from levanter.checkpoint import Checkpointer

    now = [datetime.datetime(2026, 1, 1)]
    checkpointer = Checkpointer(str(base_path), datetime.timedelta(minutes=1), [], dt_now_injection=lambda: now[0])
    info = lambda step: types.SimpleNamespace(step=step, state=types.SimpleNamespace(saveable_state={"w": jnp.ones(3) * step}))  # noqa: E731
    checkpointer.on_step(info(0))
    now[0] += datetime.timedelta(minutes=2)
    checkpointer.on_step(info(3))
    now[0] += datetime.timedelta(minutes=2)
    save_forced(checkpointer, info(3))
    checkpointer.wait_until_finished()
    names = sorted(os.listdir(base_path)) if os.path.exists(base_path) else []
    return names, [json.loads((base_path / n / "metadata.json").read_text()) for n in names]


def test_upstream_final_forced_save_deletes_itself(tmp_path):
    names, _ = _final_save_after_a_timed_one(tmp_path / "ckpt", lambda c, info: c.on_step(info, force=True))
    assert names == [], "upstream fixed: the forced save survives; save_forced_checkpoint may go"


def test_forced_save_is_permanent(tmp_path):
    from pipelines.levanter_compat import save_forced_checkpoint

    names, metadata = _final_save_after_a_timed_one(tmp_path / "ckpt", save_forced_checkpoint)
    assert names == ["step-3"] and metadata[0]["is_temporary"] is False
