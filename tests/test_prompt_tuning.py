"""Prompt tuning (``method.type: prompt_tuning``) on the tiny Llama: the soft prompt's forward against
PEFT's, training with the real trainer (only the prompt moves), the PEFT adapter export, generation
from the adapter, and the settings errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import levanter_model, run_cli
from test_train_e2e import PROMPTS
from train_helpers import metrics, prepare_tiny_data, run_train, tiny_config, train_losses

K = 5


def levanter_logits(model, ids):
    import haliax as hax
    import jax.numpy as jnp
    from levanter.layers.attention import AttentionMask

    tokens = hax.named(jnp.asarray(ids, dtype=jnp.int32), hax.Axis("position", len(ids)))
    return np.asarray(hax.named_jit(lambda m, t: m(t, AttentionMask.causal()))(model, tokens).array)


def peft_logits(base_dir, adapter_dir, prompt: str):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return ids[0].numpy(), model(input_ids=ids).logits[0].numpy()


def test_soft_prompt_forward_equals_peft(tiny_model_dir, tmp_path):
    """Our model with the virtual ids first computes PEFT's prompt-tuning logits, position for position
    (the K virtual positions included), from the adapter we write."""
    from parsetune.hf_files import read_hf_config
    from parsetune.soft_prompt import prefix_ids, with_soft_prompt, write_adapter

    rng = np.random.default_rng(0)
    with levanter_model(tiny_model_dir) as (model, _, _):
        prompt = (rng.standard_normal((K, model.Embed.size)) * 0.3).astype(np.float32)
        write_adapter(str(tmp_path / "adapter"), prompt, str(tiny_model_dir), read_hf_config(str(tiny_model_dir)))
        prompted = with_soft_prompt(model, prompt)
        assert prefix_ids(prompted) == list(range(model.Vocab.size, model.Vocab.size + K))
        for text in PROMPTS:
            ids, expected = peft_logits(tiny_model_dir, tmp_path / "adapter", text)
            ours = levanter_logits(prompted, prefix_ids(prompted) + ids.tolist())
            assert ours.shape == expected.shape == (K + len(ids), model.Vocab.size)
            np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=0)
            # and the prompt matters: the base model alone differs after the prompt
            assert np.abs(levanter_logits(model, ids.tolist()) - expected[K:]).max() > 1e-2


def test_text_init_repeats_the_text_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from pipelines.prompt_tuning import text_init_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("Sentence", add_special_tokens=False)["input_ids"]
    got = text_init_ids("Sentence", tokenizer, 2 * len(ids) + 1)
    assert got == (ids * 3)[: 2 * len(ids) + 1]
    assert text_init_ids("Sentence: a long text for few tokens", tokenizer, 2) == tokenizer("Sentence: a long text for few tokens", add_special_tokens=False)["input_ids"][:2]


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


@pytest.fixture(scope="module")
def prompt_run(tiny_model_dir, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt")
    config = tiny_config(root / "config.yaml", tiny_model_dir, tiny_data, root / "run",
                         {"type": "prompt_tuning", "num_virtual_tokens": K, "init": "text", "init_text": "Sentence meaning"})  # fmt: skip
    result = run_train(config, "--optimizer.learning_rate", "0.05", "--trainer.num_train_steps", "8")
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "run"


def test_training_lowers_the_loss_and_moves_only_the_prompt(prompt_run, tiny_model_dir):
    losses = train_losses(prompt_run)
    assert len(losses) == 8 and losses[max(losses)] < losses[min(losses)]
    assert [r["eval_loss"] for r in metrics(prompt_run) if "eval_loss" in r]
    assert not (prompt_run / "hf").exists()  # nothing to merge: the adapter is the export
    adapter = prompt_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == K
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    marker = json.loads((adapter / "parsetune_export.json").read_text())
    assert marker["method"] == "prompt_tuning" and marker["completed_steps"] == 8 and marker["init_text"] == "Sentence meaning"

    # the trained prompt moved away from its text init; the base model in the checkpoint did not move
    import jax
    import equinox as eqx
    from transformers import AutoTokenizer

    from parsetune.soft_prompt import read_adapter
    from pipelines.checkpoint_export import trained_model
    from pipelines.prompt_tuning import text_init_ids

    trained = read_adapter(str(adapter)).prompt
    with levanter_model(tiny_model_dir) as (base, _, _):
        vocabulary = np.asarray(base.embeddings.token_embeddings.weight.array)
        base_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(base, eqx.is_array))]
    init = vocabulary[text_init_ids("Sentence meaning", AutoTokenizer.from_pretrained(tiny_model_dir), K)]
    assert np.abs(trained - init).max() > 1e-3
    checkpoint = sorted((prompt_run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    with trained_model(str(checkpoint)) as (model, _, _, _):
        from parsetune.soft_prompt import prompt_array, soft_prompt_of

        inner = eqx.tree_at(lambda m: m.embeddings.token_embeddings, model, soft_prompt_of(model).inner)
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(inner, eqx.is_array))]
        assert len(leaves) == len(base_leaves)
        for got, want in zip(leaves, base_leaves):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(prompt_array(model), trained, atol=1e-6)


def test_trained_adapter_loads_in_peft_with_our_logits(prompt_run, tiny_model_dir):
    from parsetune.soft_prompt import read_adapter, with_soft_prompt

    adapter = read_adapter(str(prompt_run / "adapter"))
    with levanter_model(tiny_model_dir) as (model, _, _):
        prompted = with_soft_prompt(model, adapter.prompt)
        ids, expected = peft_logits(tiny_model_dir, prompt_run / "adapter", PROMPTS[0])
        vocab = model.Vocab.size
        np.testing.assert_allclose(levanter_logits(prompted, list(range(vocab, vocab + K)) + ids.tolist()), expected, atol=2e-4, rtol=0)


def test_eval_generate_runs_the_adapter(prompt_run, tiny_data, tmp_path):
    """``eval generate --model RUN_DIR/adapter``: the base model named in the adapter, the soft
    prompt before every row, under the ViGGO grammar (valid MRs whatever the tiny model thinks)."""
    out = tmp_path / "predictions.jsonl"
    result = run_cli("eval", "generate", "--model", str(prompt_run / "adapter"), "--data", str(tiny_data / "validation.jsonl"),
                     "--out", str(out), "--limit", "4", "--batch-size", "4", "--max-new-tokens", "24", "--constrain", "viggo")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["prediction"] for r in rows)


def test_generation_reads_the_prompt(prompt_run, tiny_model_dir, tiny_data):
    """Greedy decoding with the soft prompt is the PEFT model's greedy continuation, and not the base model's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.generate import decode_records, read_prompts
    from eval.generation_model import GenerationModel
    from parsetune.soft_prompt import read_adapter

    records = read_prompts(str(tiny_data / "validation.jsonl"), 2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = [tokenizer.eos_token_id]
    model = GenerationModel.load(str(tiny_model_dir), "float32", soft_prompt=read_adapter(str(prompt_run / "adapter")).prompt)
    ours, _, _ = decode_records(model, tokenizer, records, eos, eos[0], None, 2, 8, 0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(base, str(prompt_run / "adapter")).eval()
    for record, prediction in zip(records, ours):
        ids = tokenizer(record.input, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                eos_token_id=eos[0], pad_token_id=eos[0])  # fmt: skip
        assert prediction == tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ({"type": "prompt_tuning", "num_virtual_tokens": 256}, (), "256 virtual tokens leave no room in data.max_seq_len=256"),
        ({"type": "prompt_tuning", "num_virtual_tokens": 0}, (), "method.num_virtual_tokens: 0; expected at least 1"),
        ({"type": "prompt_tuning", "init": "vocab"}, (), "method.init: unknown init 'vocab' (expected text or random)"),
        ({"type": "prompt_tuning", "quantize_base": "int8"}, (), "method.quantize_base: LoRA only (method.type: lora); prompt tuning trains only its soft prompt"),
        ({"type": "prompt_tuning", "num_virtual_tokens": 40}, ("--data.max_seq_len", "48"), "virtual tokens, longer than data.max_seq_len=48"),
    ],
)
def test_bad_settings_fail_in_one_line(tiny_model_dir, tiny_data, tmp_path, method, overrides, message):
    config = tiny_config(tmp_path / "config.yaml", tiny_model_dir, tiny_data, tmp_path / "run", method)
    result = run_train(config, *overrides)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_serve_a_prompt_tuning_run(prompt_run, tiny_model_dir, tmp_path):
    """``parsetune serve RUN_DIR`` of a prompt-tuning run (adapter/, no hf/): the base model with the
    soft prompt, the same greedy text as ``decode_records`` with the adapter."""
    import shutil

    import httpx
    from transformers import AutoTokenizer

    from eval.generate import decode_records
    from eval.generation_model import GenerationModel
    from parsetune.records import PreparedRecord
    from parsetune.soft_prompt import read_adapter
    from serve_helpers import make_tiny_run, serving

    run = make_tiny_run(tiny_model_dir, tmp_path / "run")
    shutil.rmtree(run / "hf")
    shutil.copytree(prompt_run / "adapter", run / "adapter")
    prompt = "Sentence: BioShock is a shooter.\nMeaning representation:\n"
    with serving(run) as url:
        answer = httpx.post(f"{url}/v1/completions", json={"model": "run", "prompt": prompt, "max_tokens": 8, "grammar": "none"}, timeout=120)
        assert answer.status_code == 200, answer.text
        info = httpx.get(f"{url}/v1/models", timeout=30).json()
    assert info["data"][0]["id"] == "run"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = GenerationModel.load(str(tiny_model_dir), "float32", soft_prompt=read_adapter(str(prompt_run / "adapter")).prompt)
    eos = [tokenizer.eos_token_id]
    expected, _, _ = decode_records(model, tokenizer, [PreparedRecord("r", prompt, "")], eos, eos[0], None, 1, 8, 0)
    assert answer.json()["choices"][0]["text"].strip() == expected[0]
    assert answer.json()["usage"]["prompt_tokens"] == K + len(tokenizer(prompt)["input_ids"])


def test_parsetune_export_of_a_step_writes_the_adapter(prompt_run, tmp_path):
    from parsetune.soft_prompt import is_prompt_adapter, read_adapter

    checkpoint = sorted((prompt_run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    result = run_cli("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert is_prompt_adapter(str(tmp_path / "out"))
    np.testing.assert_array_equal(read_adapter(str(tmp_path / "out")).prompt, read_adapter(str(prompt_run / "adapter")).prompt)
