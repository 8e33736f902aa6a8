"""Every family `eval generate` supports generates like transformers; the others fail at once, in one line.

For each family in ``parsetune.model_families.GENERATES`` (Llama plain and with Llama-3 ``rope_scaling``,
Mistral, Qwen2 with random q/k/v biases) a tiny random checkpoint (``tiny.build_tiny_model``, weights
std 0.2 so greedy output changes token to token) is run three ways against transformers: the
Levanter model's own plain forward (localises a failure in Levanter's conversion rather than in our
cache), the cached prefill's last-position logits, and greedy decoding token for token with HF
``generate`` on left-padded prompts of different lengths. A GPT-2 checkpoint (trainable, not
generating) is refused by ``GenerationModel.load``, ``generate_predictions`` and ``parsetune run``,
the last before it prepares or trains anything.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from parsetune.errors import UserError
from parsetune.model_families import GENERATES
from test_generate import PROMPTS, _hf_greedy, last_logits
from train_helpers import tiny_config

FAMILIES = ["llama", "llama3", "mistral", "qwen2"]  # llama3: a Llama with Llama-3 rope_scaling
NEW_TOKENS = 24


def test_every_generating_family_is_covered():
    assert {"llama" if f == "llama3" else f for f in FAMILIES} == set(GENERATES)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_family_dir):
    """One family's checkpoint, its HF tokenizer (left padding) and model, and its GenerationModel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.generation_model import GenerationModel

    model_dir = tiny_family_dir(request.param)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return SimpleNamespace(name=request.param, dir=model_dir, hf=(tok, hf_model), jax=GenerationModel.load(str(model_dir)))


def _hf_logits(model, enc):
    import torch

    with torch.no_grad():
        return model(**enc).logits.numpy()


def test_levanter_plain_forward_matches_hf(family):
    """Levanter's own conversion and forward (no cache, one unpadded prompt), every position."""
    import haliax as hax
    import jax.numpy as jnp
    from levanter.layers.attention import AttentionMask

    tok, model = family.hf
    enc = tok([PROMPTS[1]], return_tensors="pt")
    ref = _hf_logits(model, enc)[0]
    gm = family.jax
    with gm._context():
        tokens = hax.named(jnp.asarray(enc["input_ids"].numpy()[0], jnp.int32), ("position",))
        out = hax.named_jit(lambda m, t: m(t, AttentionMask.causal()))(gm.model, tokens)
    assert np.abs(np.asarray(out.rearrange(("position", "vocab")).array) - ref).max() < 1e-4


def test_cached_prefill_logits_match_hf(family):
    tok, model = family.hf
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    pad = (enc["attention_mask"].numpy() == 0).sum(1).astype(np.int32)
    assert len(set(pad.tolist())) == len(PROMPTS) and 0 in pad  # prompts of four lengths, left-padded
    ref = _hf_logits(model, enc)[:, -1]
    got = last_logits(family.jax, enc["input_ids"].numpy().astype(np.int32), pad)
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("draft_tokens", [0, 4])
def test_greedy_equals_hf_generate_token_for_token(family, draft_tokens):
    """Plain one-token steps, and prompt lookup (drafts checked in the same pass, eval.decoding)."""
    from eval.decoding import BatchDecoder

    tok, _ = family.hf
    expected = _hf_greedy(family.hf, PROMPTS, NEW_TOKENS)
    decoder = BatchDecoder(family.jax, eos_ids=[2], pad_id=0, max_new_tokens=NEW_TOKENS, slots=128, draft_tokens=draft_tokens)
    got = decoder.generate([tok(p)["input_ids"] for p in PROMPTS])
    assert [g.tokens + [2] * g.stopped_at_eos for g in got] == expected
    if draft_tokens:  # drafts were checked (kept ones: tests/test_generate.py, where outputs repeat)
        assert decoder.stats.drafted > 0, decoder.stats
    for g in got:  # a meaningful comparison: the continuations change token to token
        assert len(set(g.tokens)) >= min(len(g.tokens), 8) // 2, g.tokens
    assert sum(len(g.tokens) for g in got) >= 2 * NEW_TOKENS


def test_the_family_features_are_in_play(family):
    """What makes each checkpoint its family is there and changes the model (so it is tested above)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((family.dir / "config.json").read_text())
    lev = family.jax.model.config
    assert config["model_type"] == ("llama" if family.name == "llama3" else family.name)
    tok, model = family.hf
    enc = tok([PROMPTS[1]], return_tensors="pt")
    if family.name == "llama3":  # the same weights without rope_scaling compute something else
        assert config["rope_scaling"]["rope_type"] == "llama3"
        assert type(lev.rope).__name__ == "Llama3RotaryEmbeddingsConfig" and lev.rope.original_max_position_embeddings == 64
        plain = AutoModelForCausalLM.from_pretrained(family.dir, rope_scaling=None).eval()
        assert np.abs(_hf_logits(plain, enc) - _hf_logits(model, enc)).max() > 1e-2
    elif family.name == "qwen2":  # random (non-zero) q/k/v biases that matter
        biases = model.model.layers[0].self_attn.q_proj.bias
        assert biases is not None and float(biases.detach().abs().min()) > 0
        unbiased = AutoModelForCausalLM.from_pretrained(family.dir).eval()
        with torch.no_grad():
            for layer in unbiased.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.zero_()
        assert np.abs(_hf_logits(unbiased, enc) - _hf_logits(model, enc)).max() > 1e-2
    elif family.name == "mistral":  # its own lm_head; no sliding window at these lengths
        assert not config["tie_word_embeddings"] and config["sliding_window"] is None
    else:
        assert config.get("rope_scaling") is None and config["tie_word_embeddings"]


# ---- a family that trains but does not generate -------------------------------------------------


def _assert_refuses_gpt2(message: str, model_dir) -> None:
    assert message == f"{model_dir}: generation does not support model_type 'gpt2' (it trains and exports, but cannot be evaluated); supported: llama, mistral, qwen2"


def test_gpt2_is_refused_by_load_and_generate_predictions(tiny_family_dir, tmp_path):
    from eval.generate import generate_predictions
    from eval.generation_model import GenerationModel

    model_dir = str(tiny_family_dir("gpt2"))
    with pytest.raises(UserError) as err:
        GenerationModel.load(model_dir)
    _assert_refuses_gpt2(str(err.value), model_dir)
    data = tmp_path / "validation.jsonl"
    data.write_text(json.dumps({"id": "a", "input": "Sentence: hi\n", "output": "x"}) + "\n")
    out = tmp_path / "preds.jsonl"
    with pytest.raises(UserError) as err:
        generate_predictions(model_dir, str(data), str(out), progress=False)
    _assert_refuses_gpt2(str(err.value), model_dir)
    assert not out.exists()


def test_run_refuses_gpt2_before_preparing_or_training(tiny_family_dir, tmp_path, capsys):
    from conftest import ASSETS
    from parsetune.cli import main

    model_dir = tiny_family_dir("gpt2")
    run_dir = tmp_path / "run"
    config_path = tiny_config(tmp_path / "config.yaml", model_dir, tmp_path / "unused", run_dir, {"type": "lora", "r": 4, "alpha": 8})
    config = yaml.safe_load(config_path.read_text())
    train = tmp_path / "train-source.jsonl"
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    config["prep"] = {"task": "viggo", "train": str(train), "validation": str(ASSETS / "viggo_validation_50.jsonl"), "instruction": "", "base_model": None}
    config_path.write_text(yaml.safe_dump(config))

    assert main(["run", str(config_path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    _assert_refuses_gpt2(errors[0].removeprefix("parsetune run: error: "), model_dir)
    assert "[2/5]" not in err and "[3/5]" not in err  # stopped in step 1: no prep, no training
    leftovers = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    assert not {"prep", "hf", "checkpoints", "config.yaml", "metrics.jsonl"} & set(leftovers), leftovers
