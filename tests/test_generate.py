"""`eval generate`: the Levanter model with a KV cache and greedy decoding equal transformers' on the tiny Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ASSETS, run_cli

PROMPTS = [
    "Sentence: BioShock is great",
    "Sentence: I like Portal 2, a puzzle game from 2011 by Valve, and I play it on PC a lot",
    "Meaning representation:\n",
    "Sentence: Have you played any first person shooter games for the Xbox from 2012? I am looking",
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    return tok, LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def jax_model(tiny_model_dir):
    from eval.generation_model import GenerationModel

    return GenerationModel.load(str(tiny_model_dir))


def last_logits(model, ids, pad):
    """Logits of each row's last prompt position from one cached prefill."""
    import haliax as hax
    from eval.cached_model import forward_cached

    cache = model.init_cache(len(ids), ids.shape[1] + 3)
    with model._context():
        run = hax.named_jit(lambda m, t, p, c: forward_cached(m, t, p, hax.zeros_like(p), c)[0].rearrange(("batch", "vocab")))
        out = run(model.model, model.to_global(ids, ("batch", "position")), model.to_global(pad, ("batch",)), cache)
    return model.fetch(out)


def test_logits_match_hf(hf, jax_model):
    import torch

    tok, model = hf
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**enc).logits.numpy()[:, -1]
    ids = enc["input_ids"].numpy().astype(np.int32)
    pad = (enc["attention_mask"].numpy() == 0).sum(1).astype(np.int32)
    assert np.abs(last_logits(jax_model, ids, pad) - ref).max() < 1e-4


def _hf_greedy(hf, prompts, max_new_tokens):
    import torch

    tok, model = hf
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0, eos_token_id=2)
    rows = []
    for seq in out[:, enc["input_ids"].shape[1] :].tolist():
        rows.append(seq[: seq.index(2) + 1] if 2 in seq else seq)  # HF pads finished rows
    return rows


def test_greedy_equals_hf_generate_token_for_token(hf, jax_model):
    from eval.decoding import BatchDecoder

    tok, _ = hf
    expected = _hf_greedy(hf, PROMPTS, 24)
    decoder = BatchDecoder(jax_model, eos_ids=[2], pad_id=0, max_new_tokens=24, slots=128)
    got = decoder.generate([tok(p)["input_ids"] for p in PROMPTS])
    assert [g.tokens + [2] * g.stopped_at_eos for g in got] == expected


def test_prompt_lookup_keeps_drafts_and_equals_hf(hf, jax_model):
    """The random tiny model repeats itself, so drafts copied from its own output are kept: several
    tokens per step, and still exactly HF's greedy tokens."""
    from eval.decoding import BatchDecoder

    tok, _ = hf
    expected = _hf_greedy(hf, PROMPTS, 24)
    decoder = BatchDecoder(jax_model, eos_ids=[2], pad_id=0, max_new_tokens=24, slots=160, draft_tokens=4)
    got = decoder.generate([tok(p)["input_ids"] for p in PROMPTS])
    assert [g.tokens + [2] * g.stopped_at_eos for g in got] == expected
    assert decoder.stats.tokens_per_step > 2.5, decoder.stats


def test_lookup_draft():
    from eval.decoding import lookup_draft

    assert lookup_draft([5, 6, 7, 8, 5, 6], 3) == [7, 8, 5]  # the last 2 tokens seen before: what followed
    assert lookup_draft([1, 2, 3, 9, 2, 3, 4, 2, 3], 2) == [4, 2]  # the most recent earlier occurrence
    assert lookup_draft([7, 7, 7, 7, 7, 7], 3) == [7, 7, 7]  # a repeat: not the occurrence right before the end
    assert lookup_draft([1, 2, 3], 4) == []  # nothing repeats
    assert lookup_draft([4, 1, 2, 9, 4], 2) == [1, 2] and lookup_draft([4, 1, 4], 0) == []


def _eos_loving_model(src, dst, after_token):
    """Copy of the tiny model whose lm_head maps hidden direction of `after_token`'s embedding to EOS:
    simplest honest way: make EOS's (tied) embedding row equal to a scaled copy of `after_token`'s."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"]
    emb[2] = emb[after_token] * 50.0
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_eos_stops_rows_and_matches_hf(tiny_model_dir, tmp_path, hf):
    """With EOS's embedding made dominant, some rows emit EOS early and stop; the others run to the limit."""
    from transformers import LlamaForCausalLM

    from eval.decoding import BatchDecoder
    from eval.generation_model import GenerationModel

    tok, _ = hf
    model_dir = _eos_loving_model(tiny_model_dir, tmp_path / "eos", after_token=300)
    decoder = BatchDecoder(GenerationModel.load(str(model_dir)), eos_ids=[2], pad_id=0, max_new_tokens=16, slots=128)
    got = decoder.generate([tok(p)["input_ids"] for p in PROMPTS])
    expected = _hf_greedy((tok, LlamaForCausalLM.from_pretrained(model_dir).eval()), PROMPTS, 16)
    assert [g.tokens + [2] * g.stopped_at_eos for g in got] == expected
    assert any(g.stopped_at_eos for g in got), "the biased model should produce EOS in some row"
    for g in got:
        assert 2 not in g.tokens
        assert g.stopped_at_eos or len(g.tokens) == 16


def _write_split(path, n=6):
    rows = [json.loads(line) for line in open(ASSETS / "viggo_validation_50.jsonl")][:n]
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            prompt = "Sentence: " + r["target"][: 20 + 15 * i] + "\nMeaning representation:\n"
            f.write(json.dumps({"id": f"v{i}", "input": prompt, "output": r["meaning_representation"]}) + "\n")
    return path


def test_generate_then_score_end_to_end(tiny_model_dir, tmp_path):
    from eval.generate import generate_predictions
    from eval.score import score_predictions

    data = _write_split(tmp_path / "validation.jsonl")
    out = tmp_path / "preds.jsonl"
    stats = generate_predictions(str(tiny_model_dir), str(data), str(out), batch_size=4, max_new_tokens=12, progress=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.n == 6 and [r["id"] for r in lines] == [f"v{i}" for i in range(6)]
    src = [json.loads(line) for line in data.read_text().splitlines()]
    assert [r["reference"] for r in lines] == [r["output"] for r in src]
    assert [r["input"] for r in lines] == [r["input"] for r in src]
    metrics = score_predictions(str(out), str(tmp_path / "scores"))
    assert metrics["n"] == 6
    assert (tmp_path / "scores" / "confusion_matrix.png").exists()


def test_output_order_and_batching_do_not_change_predictions(tiny_model_dir, tmp_path):
    from eval.generate import generate_predictions

    data = _write_split(tmp_path / "validation.jsonl")
    preds = []
    for bs in (1, 4):
        out = tmp_path / f"p{bs}.jsonl"
        generate_predictions(str(tiny_model_dir), str(data), str(out), batch_size=bs, max_new_tokens=8, progress=False)
        preds.append([json.loads(line)["prediction"] for line in out.read_text().splitlines()])
    assert preds[0] == preds[1]


def test_limit(tiny_model_dir, tmp_path):
    from eval.generate import generate_predictions

    data = _write_split(tmp_path / "validation.jsonl")
    out = tmp_path / "p.jsonl"
    generate_predictions(str(tiny_model_dir), str(data), str(out), max_new_tokens=2, limit=2, progress=False)
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope"], "model directory not found"),
        (["--model", "{tmp}"], "no config.json"),
        (["--data", "{tmp}/bad.jsonl"], "bad.jsonl:2: malformed JSON"),
        (["--constrain", "xml"], "unknown --constrain 'xml'"),
        (["--constrain", "json-schema"], "--constrain json-schema without FILE"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tiny_model_dir, tmp_path, capsys, args, message):
    from parsetune.cli import main

    data = _write_split(tmp_path / "validation.jsonl", n=2)
    (tmp_path / "bad.jsonl").write_text(data.read_text().splitlines()[0] + "\n{oops\n")
    argv = {"--model": str(tiny_model_dir), "--data": str(data)}
    extra = []
    for i in range(0, len(args), 2):
        if args[i] in argv:
            argv[args[i]] = args[i + 1].format(tmp=tmp_path)
        else:
            extra += args[i : i + 2]
    out = tmp_path / "preds.jsonl"
    flat = [x for k, v in argv.items() for x in (k, v)]
    assert main(["eval", "generate", *flat, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_generate_writes_predictions(tiny_model_dir, tmp_path):
    data = _write_split(tmp_path / "validation.jsonl", n=3)
    out = tmp_path / "preds.jsonl"
    result = run_cli("eval", "generate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert "examples/s" in result.stdout
    assert len(out.read_text().splitlines()) == 3


def test_cli_default_draft_tokens_is_generates():
    from eval.cli import DEFAULT_DRAFT_TOKENS
    from eval.generate import DEFAULT_DRAFT_TOKENS as GENERATE_DEFAULT
    from pipelines.config import EvalSection

    assert DEFAULT_DRAFT_TOKENS == GENERATE_DEFAULT == EvalSection().draft_tokens
