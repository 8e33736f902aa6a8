"""Task metrics while training: greedy constrained generation on a fixed validation subset.

A loss curve does not say whether the model parses. At the same steps as the eval loss (every
``trainer.steps_per_eval`` steps and after the last), ``TaskMetrics`` decodes a fixed subset of the
validation split (``task_eval.examples`` rows spread evenly over the split, always the same rows)
with the eval package's decoder (``eval.generate.decode_records``: one decoding loop for training
and ``eval generate``), on the trainer's own model (LoRA merged, no checkpoint written), under the
same constraint as the final evaluation, and logs the task's headline scores next to the eval loss
(``metrics.jsonl`` rows ``task_*``; W&B ``eval/*``): for a ViGGO set (grounded ViGGO grammar) exact
match, overall accuracy and the valid rate; for a JSON set with a schema beside it (``prep json
--schema``, ``prep viggo-json``; decoded under that schema) exact match, field F1, the valid JSON
rate and schema adherence. Other sets skip it with one line.
"""

from __future__ import annotations

import sys
import time
from levanter.callbacks import Callback
from tqdm import tqdm

from parsetune.records import PreparedRecord
from pipelines.config import TaskEvalConfig


def spread_subset(records: list[PreparedRecord], count: int) -> list[PreparedRecord]:
    """``count`` rows spread evenly over ``records`` (validation splits are grouped by game, so the
    first rows would all be about one), always the same for the same split."""
    if count >= len(records):
        return list(records)
    return [records[(i * len(records)) // count] for i in range(count)]


class TaskMetrics(Callback):
    """Decode the subset with the current model at every ``every`` completed steps and at the end."""

    def __init__(self, log, records, tokenizer, eos_ids, pad_id, constraint, mesh, every: int, config: TaskEvalConfig,
                 is_lora: bool, show: bool = True, score=None):  # fmt: skip
        self.log = log
        self.records = records
        self.tokenizer = tokenizer
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.constraint = constraint
        self.mesh = mesh
        self.every = max(1, every)
        self.config = config
        self.is_lora = is_lora
        self.show = show
        self.score = score or viggo_scores  # (predictions, records) -> {"task_exact_match", ...}
        self.last_step = -1

    def evaluate(self, model) -> dict:
        from eval.generate import decode_records
        from eval.generation_model import GenerationModel
        from pipelines.levanter_compat import merge_lora, restack_layers

        start = time.perf_counter()
        model = restack_layers(model)
        generation = GenerationModel.from_trainer(merge_lora(model) if self.is_lora else model, self.mesh)
        c = self.config
        batch = max(generation.data_axis_size, c.batch_size - c.batch_size % generation.data_axis_size)
        predictions, _, _ = decode_records(
            generation, self.tokenizer, self.records, self.eos_ids, self.pad_id, self.constraint, batch, c.max_new_tokens, c.draft_tokens
        )
        return {**self.score(predictions, self.records), "task_rows": len(self.records), "task_eval_s": round(time.perf_counter() - start, 2)}

    def on_step(self, info, force: bool = False) -> None:
        import levanter.tracker

        if info.next_step == self.last_step or (info.next_step % self.every and not force):
            return
        self.last_step = info.next_step
        row = self.evaluate(info.eval_model)
        self.log.add({"step": info.step, **row}, force_flush=True)
        scores = {k.removeprefix("task_"): v for k, v in row.items() if k not in ("task_rows", "task_eval_s") and v is not None}
        levanter.tracker.log({f"eval/{k}": v for k, v in scores.items()}, step=info.step)
        if self.show:
            shown = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in list(scores.items())[:2])
            tqdm.write(f"after {info.next_step} steps: {shown} on {row['task_rows']} validation rows ({row['task_eval_s']:.0f} s)", file=sys.stderr)


def viggo_scores(predictions: list[str], records) -> dict:
    from eval.viggo_metrics import score_all

    _, metrics, _ = score_all(predictions, [r.output for r in records])
    return {"task_exact_match": metrics.exact_match, "task_overall": metrics.overall_accuracy, "task_valid_rate": metrics.valid_rate}


def json_scores(schema: dict):
    """The scorer of a JSON set: exact match, field F1, valid JSON rate and schema adherence."""

    def score(predictions: list[str], records) -> dict:
        from eval.json_metrics import score_json_all
        from parsetune.tasks.json_form import loads_strict

        _, metrics = score_json_all(predictions, [loads_strict(r.output) for r in records], schema)
        return {"task_exact_match": metrics.exact_match, "task_field_f1": metrics.field_f1, "task_valid_rate": metrics.valid_json_rate,
                "task_schema_rate": metrics.schema_adherence_rate}  # fmt: skip

    return score


def task_metrics_hook(config, log, tokenizer, vocab_size: int, mesh, show: bool) -> TaskMetrics | None:
    """The hook for ``config`` (a ``TrainConfig``), or ``None`` when it is off or does not apply
    (no validation split; neither a ViGGO prepared set nor a JSON one with a schema)."""
    from eval.constrained import build_constraint
    from eval.generate import special_ids
    from parsetune.hf_files import read_hf_config
    from parsetune.records import read_prepared
    from parsetune.tasks.json_form import schema_beside
    from parsetune.tasks.viggo_values import read_grounding
    from pipelines.config import LoraMethodConfig

    c = config.task_eval
    if c.examples <= 0 or not config.data.validation:
        return None
    grounding = read_grounding(config.data.validation)
    schema = schema_beside(config.data.validation) if grounding is None else None
    if grounding is None and schema is None:
        if show:
            tqdm.write("task metrics during training: skipped (neither a ViGGO set with learned value sets nor a JSON set with a schema)", file=sys.stderr)
        return None
    records = spread_subset(read_prepared(config.data.validation), c.examples)
    from eval.model_cache import local_model_dir

    model_dir = local_model_dir(config.model)
    eos_ids, pad_id = special_ids(model_dir, read_hf_config(model_dir), tokenizer)
    if grounding is not None:
        constraint, score = build_constraint("viggo", tokenizer, vocab_size, eos_ids, grounding=grounding), viggo_scores
    else:
        from parsetune.tasks.json_form import load_json_schema

        constraint = build_constraint("json-schema", tokenizer, vocab_size, eos_ids, schema_path=schema)
        score = json_scores(load_json_schema(schema))
    is_lora = isinstance(config.method, LoraMethodConfig)
    return TaskMetrics(log, records, tokenizer, eos_ids, pad_id, constraint, mesh, config.trainer.steps_per_eval, c, is_lora, show, score)

