"""`parsetune train` end to end on the tiny Llama: run dir contract, LoRA starting point, merged HF
and PEFT exports with the same logits as the JAX model, `parsetune export` of a saved step."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import run_cli
from train_helpers import metrics, prepare_tiny_data, run_train, tiny_config, train_losses

PROMPTS = [
    "Sentence: BioShock is a great first person shooter from 2007.\nMeaning representation:\n",
    "Sentence: Do you like puzzle games?\nMeaning representation:\n",
]


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


def _run(tmp_path_factory, tiny_model_dir, tiny_data, name, method, **overrides):
    root = tmp_path_factory.mktemp(name)
    config = tiny_config(root / "config.yaml", tiny_model_dir, tiny_data, root / "run", method)
    result = run_train(config, *[x for k, v in overrides.items() for x in (f"--{k}", str(v))])
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "run"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, tiny_data):
    # the CPU configs' compute settings (unrolled layers, no remat); full_run keeps Levanter's defaults
    return _run(tmp_path_factory, tiny_model_dir, tiny_data, "lora", {"type": "lora", "r": 4, "alpha": 8},
                **{"compute.scan_layers": "false", "compute.gradient_checkpointing": "false"})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir, tiny_data):
    return _run(tmp_path_factory, tiny_model_dir, tiny_data, "full", {"type": "full"}, **{"optimizer.learning_rate": 1e-3})


def hf_logits(model_dir, prompts=PROMPTS):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(p, return_tensors="pt")["input_ids"]
            out.append((ids[0].numpy(), model(ids).logits[0].numpy()))
    return out


def jax_logits(checkpoint, token_lists):
    import haliax as hax
    import jax.numpy as jnp
    from levanter.layers.attention import AttentionMask

    from pipelines.checkpoint_export import trained_model

    with trained_model(str(checkpoint)) as (model, _, _, _):
        out = []
        for ids in token_lists:
            tokens = hax.named(jnp.asarray(ids, dtype=jnp.int32), hax.Axis("position", len(ids)))
            out.append(np.asarray(model(tokens, AttentionMask.causal()).array))
        return out


def test_run_dir_contract(lora_run):
    assert (lora_run / "config.yaml").exists()
    rows = metrics(lora_run)
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(6))
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in rows if "train_loss" in r)
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 5]
    assert (lora_run / "checkpoints" / "step-5" / "metadata.json").exists(), "a checkpoint after the last step"
    for sub in ("hf", "adapter"):
        assert json.loads((lora_run / sub / "parsetune_export.json").read_text())["completed_steps"] == 6
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"} <= set(os.listdir(lora_run / "hf"))
    assert not (lora_run / "hf" / "tokenizer.model").exists()
    assert list((lora_run / "wandb").glob("offline-run-*")), "W&B ran offline into RUN_DIR/wandb"


def test_lora_starts_as_the_base_model(lora_run, full_run):
    """Step 0 is scored before any update: LoRA (B = 0) and full fine-tuning see the same model and batch."""
    lora0, full0 = train_losses(lora_run)[0], train_losses(full_run)[0]
    assert lora0 == pytest.approx(full0, abs=1e-5)
    assert train_losses(lora_run)[5] < lora0


@pytest.mark.parametrize("which", ["lora", "full"])
def test_merged_hf_export_matches_the_jax_model(which, lora_run, full_run, tiny_model_dir):
    run = lora_run if which == "lora" else full_run
    hf = hf_logits(run / "hf")
    jx = jax_logits(run / "checkpoints" / "step-5", [ids for ids, _ in hf])
    for (_, torch_logits), jax_l in zip(hf, jx):
        np.testing.assert_allclose(torch_logits, jax_l, atol=1e-4, rtol=0)
    base = hf_logits(tiny_model_dir)
    assert max(np.abs(a - b).max() for (_, a), (_, b) in zip(hf, base)) > 1e-3, "training changed the model"


def test_peft_adapter_on_the_base_gives_the_merged_logits(lora_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    merged = hf_logits(lora_run / "hf")
    with torch.no_grad():
        for ids, merged_logits in merged:
            adapted = peft_model(torch.tensor(ids)[None]).logits[0].numpy()
            np.testing.assert_allclose(adapted, merged_logits, atol=1e-4, rtol=0)


def test_tokenizer_eos_and_chat_template_survive_export(lora_run, tiny_model_dir):
    from transformers import AutoTokenizer, GenerationConfig

    exported = AutoTokenizer.from_pretrained(lora_run / "hf")
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert exported.eos_token == "<|im_end|>" and exported.eos_token_id == 2 and exported.pad_token_id == 0
    assert exported.chat_template == base.chat_template
    assert exported("a b c").input_ids == base("a b c").input_ids
    config = json.loads((lora_run / "hf" / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (2, 1, 0)
    assert GenerationConfig.from_pretrained(lora_run / "hf").eos_token_id == 2


def test_export_command_for_a_saved_step(lora_run, tmp_path):
    out, adapter = tmp_path / "step2", tmp_path / "step2-adapter"
    result = run_cli("export", "--checkpoint", str(lora_run / "checkpoints" / "step-2"), "--out", str(out), "--adapter-out", str(adapter))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "parsetune_export.json").read_text())["completed_steps"] == 3
    hf = hf_logits(out)
    jx = jax_logits(lora_run / "checkpoints" / "step-2", [ids for ids, _ in hf])
    for (_, torch_logits), jax_l in zip(hf, jx):
        np.testing.assert_allclose(torch_logits, jax_l, atol=1e-4, rtol=0)
    assert (adapter / "adapter_model.safetensors").exists()
