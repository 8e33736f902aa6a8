"""``generate_predictions``: prepared data JSONL + HF checkpoint in, predictions JSONL out.

Reads ``{"id", "input", "output"}`` rows (DESIGN.md §2, "Prepared data"), sorts them by prompt
length into batches (less padding), decodes each batch greedily with ``eval.decoding`` on the
trainer's Levanter model (``eval.generation_model``; optionally grammar-constrained,
``eval.constrained``), and writes ``{"id", "input", "reference", "prediction"}`` lines in input
order, atomically: a failed run leaves nothing behind. Model, data and predictions may be local or
gs://. On a multi-host pod every process decodes (the model is sharded over all of them) and
process 0 alone writes the predictions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from parsetune import storage
from parsetune.errors import UserError
from parsetune.records import PreparedRecord, read_prepared


DEFAULT_DRAFT_TOKENS = 0  # prompt lookup off: on CPU a fine-tuned, constrained model gains ~1.2 tokens per step, less than the wider step costs (docs/benchmarks.md)


@dataclass(frozen=True)
class GenerateStats:
    n: int
    seconds: float
    examples_per_second: float
    stopped_at_eos: int  # rows that ended with EOS; the rest hit max_new_tokens
    tokens_per_step: float = 1.0  # tokens each row gained per decode step (> 1: drafts accepted)
    constraint: str = "none"  # what restricted the output (GrammarConstraint.description)


def read_prompts(path: str, limit: int | None = None) -> list[PreparedRecord]:
    """Prepared data through the one reader (``parsetune.records.read_prepared``)."""
    return read_prepared(path, limit)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def prompt_bucket(longest_prompt: int) -> int:
    """Prompt lengths are padded to multiples of this: 16 up to 128 tokens, then 32, then 64, so a
    whole split compiles a handful of prefill shapes."""
    return 16 if longest_prompt <= 128 else 32 if longest_prompt <= 512 else 64


def special_ids(model_dir: str, config: dict[str, Any], tokenizer) -> tuple[list[int], int]:
    """EOS ids (generation_config.json, else config.json, else the tokenizer) and the pad id."""
    gen: dict[str, Any] = {}
    gen_path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            gen = json.load(f)
    eos = _ids(gen.get("eos_token_id")) or _ids(config.get("eos_token_id")) or _ids(tokenizer.eos_token_id)
    if not eos:
        raise UserError(f"{model_dir}: no EOS token id in generation_config.json, config.json or the tokenizer")
    pad = next((p for p in (gen.get("pad_token_id"), config.get("pad_token_id"), tokenizer.pad_token_id) if p is not None), eos[0])
    return eos, int(pad)


def base_and_soft_prompt(model_dir: str):
    """``(model_dir, None)`` for a checkpoint; for a PEFT prompt-tuning adapter (``parsetune train``
    with ``method.type: prompt_tuning`` writes RUN_DIR/adapter), its base model and soft prompt."""
    from parsetune.soft_prompt import is_prompt_adapter, read_adapter

    if not is_prompt_adapter(model_dir):
        return model_dir, None
    adapter = read_adapter(model_dir)
    if not storage.exists(storage.join(adapter.base_model, "config.json")):
        raise UserError(f"{model_dir}: its base model {adapter.base_model} (base_model_name_or_path) has no config.json here")
    return adapter.base_model, adapter.prompt


def generate_predictions(
    model_dir: str,
    data_path: str,
    out_path: str,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    limit: int | None = None,
    constrain: str | None = None,
    schema_path: str | None = None,
    progress: bool = True,
    dtype: str = "auto",
    model_axis_size: int = 1,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    ground_values: bool = True,
) -> GenerateStats:
    """Generate a prediction for every row of ``data_path`` and write them to ``out_path``."""
    from eval.constrained import CONSTRAINTS, build_constraint
    from parsetune.tasks.viggo_values import read_grounding
    from eval.model_cache import local_model_dir

    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise UserError("--batch-size, --max-new-tokens and --limit must be positive")
    if draft_tokens < 0:
        raise UserError(f"--draft-tokens {draft_tokens}: expected 0 (off) or more")
    if constrain is not None and constrain not in CONSTRAINTS:
        raise UserError(f"unknown --constrain {constrain!r}; expected one of {', '.join(CONSTRAINTS)}")
    if not storage.is_gcs(out_path) and os.path.isdir(out_path):
        raise UserError(f"{out_path}: is a directory, expected a file path for the predictions")
    from parsetune.hf_files import read_hf_config
    from parsetune.model_families import check_generates

    if not storage.is_gcs(model_dir) and not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: model directory not found")
    given_model = model_dir
    model_dir, soft_prompt = base_and_soft_prompt(model_dir)
    check_generates(model_dir)
    from parsetune.output_guard import refuse_inputs_as_output

    refuse_inputs_as_output(out_path, [data_path, schema_path, given_model, model_dir])  # the data, schema or model being read
    records = read_prompts(data_path, limit)
    from eval.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    model_dir = local_model_dir(model_dir)
    config = read_hf_config(model_dir)

    from transformers import AutoTokenizer

    from eval.generation_model import GenerationModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos_ids, pad_id = special_ids(model_dir, config, tokenizer)
    model = GenerationModel.load(model_dir, dtype, model_axis_size, soft_prompt=soft_prompt)
    grounding = read_grounding(data_path) if constrain == "viggo" else None
    constraint = build_constraint(constrain, tokenizer, model.vocab_size, eos_ids, schema_path, grounding, ground_values)
    import jax

    chief = jax.process_index() == 0
    start = time.perf_counter()
    predictions, eos_count, decode_stats = decode_records(
        model, tokenizer, records, eos_ids, pad_id, constraint, batch_size, max_new_tokens, draft_tokens,
        progress=progress and chief, where=data_path,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    lines = [
        json.dumps({"id": r.id, "input": r.input, "reference": r.output, "prediction": p}, ensure_ascii=False)
        for r, p in zip(records, predictions)
    ]
    if chief:
        storage.write_bytes_atomic(out_path, ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
    return GenerateStats(
        len(records),
        seconds,
        len(records) / seconds if seconds else 0.0,
        eos_count,
        round(decode_stats.tokens_per_step, 2),
        constraint.description if constraint is not None else "none",
    )


def decode_records(
    model,
    tokenizer,
    records: list[PreparedRecord],
    eos_ids: list[int],
    pad_id: int,
    constraint,
    batch_size: int,
    max_new_tokens: int,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    progress: bool = False,
    where: str = "data",
):
    """Greedy (optionally constrained) predictions for ``records`` in their order, decoded in
    batches of similar prompt length: ``(predictions, rows that ended at EOS, DecodeStats)``.
    ``model`` is a ``GenerationModel`` (loaded from a checkpoint, or the trainer's model in training)."""
    from tqdm import tqdm

    from eval.decoding import BatchDecoder, bucket_length

    from parsetune.signals import raise_if_stopping
    from parsetune.soft_prompt import prefix_ids

    prefix = prefix_ids(model.model)  # prompt tuning: the soft prompt's virtual ids come first
    prompts = [prefix + tokenizer(r.input)["input_ids"] for r in records]
    for record, ids in zip(records, prompts):
        if len(ids) == len(prefix):
            raise UserError(f"{where}: row {record.id!r}: the prompt encodes to no tokens")
    bucket = prompt_bucket(max(len(p) for p in prompts))
    slots = bucket_length(max(len(p) for p in prompts), bucket) + max_new_tokens + draft_tokens
    decoder = BatchDecoder(model, eos_ids, pad_id, max_new_tokens, slots, bucket, draft_tokens)
    order = sorted(range(len(records)), key=lambda i: len(prompts[i]))
    predictions: list[str] = [""] * len(records)
    eos_count = 0
    with tqdm(total=len(records), desc="generate", unit="ex", disable=not progress) as bar:
        for first in range(0, len(order), batch_size):
            raise_if_stopping()
            rows = order[first : first + batch_size]
            batch = [prompts[i] for i in rows]
            batch += [batch[0]] * (batch_size - len(batch))  # a full batch keeps one compiled shape
            if constraint is not None:
                texts = [records[i].input for i in rows]
                constraint.for_prompts(texts + [texts[0]] * (batch_size - len(texts)))
            results = decoder.generate(batch, constraint)
            for i, result in zip(rows, results):
                predictions[i] = tokenizer.decode(result.tokens, skip_special_tokens=True).strip()
                eos_count += result.stopped_at_eos
            bar.update(len(rows))
    return predictions, eos_count, decoder.stats
