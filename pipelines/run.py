"""``parsetune run``: prep -> base model -> train -> export -> generate -> score -> report, from the
same YAML as ``parsetune train`` (its ``prep:`` and ``eval:`` sections), into one run directory:

  RUN_DIR/prep/                 prepared splits + manifest.json
  RUN_DIR/config.yaml, checkpoints/, metrics.jsonl, hf/, adapter/   (the training contract; prompt tuning: adapter/ only)
  RUN_DIR/eval/<split>/         predictions.jsonl, metrics.json, per_example.jsonl, confusion_matrix.{csv,png}
  RUN_DIR/report.md

Every step checks whether its output is already complete and skips it, so rerunning the command
after an interruption picks up where it stopped (training itself resumes from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from parsetune import storage
from parsetune.errors import UserError
from pipelines.config import TrainConfig


def step(number: int, total: int, title: str) -> float:
    print(f"\n== [{number}/{total}] {title}", file=sys.stderr, flush=True)
    return time.monotonic()


def done(started: float, what: str) -> None:
    print(f"   {what} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)


def prep_data(config: TrainConfig, prep_dir: str) -> None:
    """The same prep as ``parsetune prep`` (``prep.prepare.prepare``), from the config's ``prep:``."""
    from prep.prepare import PrepRequest, prepare
    from prep.writer import MANIFEST_NAME

    if storage.exists(storage.join(prep_dir, MANIFEST_NAME)):
        print(f"   {prep_dir} is already prepared; skipping", file=sys.stderr)
        return
    p = config.prep
    request = PrepRequest(
        task=p.task, out=prep_dir, train=p.train, validation=p.validation, test=p.test, hf=p.hf, schema=p.schema,
        text_field=p.text_field, target_field=p.target_field, id_field=p.id_field,
        instruction=p.instruction, query_template=p.query_template, few_shot=p.few_shot, seed=p.seed,
        tokenizer=config.model if os.path.isdir(config.model) else None,
    )
    for s in prepare(request):
        tokens = f", tokens max {s.tokens['max_total']} p99 {s.tokens['p99_total']}" if s.tokens else ""
        print(f"   {s.split}: {s.rows} rows{tokens}", file=sys.stderr)


def base_model_action(model: str, base_model: str | None) -> str:
    """What step 1 does for ``model``: ``ready`` (an HF checkpoint is there, on gs://, or a hub id with
    nothing to fetch) or ``fetch`` (``prep.base_model`` is fetched into ``model``).

    A missing local path is fetched whenever ``prep.base_model`` is set, even if it looks like a hub
    id (``models/smollm2-135m-instruct`` is both)."""
    from parsetune.hf_files import is_hub_id

    if storage.is_gcs(model) or storage.exists(storage.join(model, "config.json")):
        return "ready"
    if base_model:
        return "fetch"
    if is_hub_id(model):
        return "ready"
    raise UserError(f"{model}: no HF checkpoint there and prep.base_model is not set")


def ensure_base_model(config: TrainConfig) -> None:
    if base_model_action(config.model, config.prep.base_model) == "ready":
        print(f"   {config.model} is ready; skipping", file=sys.stderr)
        return
    from prep.base_model import prepare_base_model

    prepare_base_model(config.prep.base_model, config.model, log=lambda m: print(f"   {m}", file=sys.stderr))


def evaluate_split(config: TrainConfig, model_dir: str, split: str, data_path: str, out_dir: str, plan) -> dict:
    from eval.generate import generate_predictions
    from eval.score import score_predictions

    predictions = storage.join(out_dir, "predictions.jsonl")
    metrics_path = storage.join(out_dir, "metrics.json")
    if storage.exists(metrics_path):
        import json

        print(f"   {out_dir} is already scored; skipping", file=sys.stderr)
        return json.loads(storage.read_text(metrics_path))
    e = config.eval
    if not storage.exists(predictions):
        stats = generate_predictions(
            model_dir, data_path, predictions, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens,
            limit=e.limit, constrain=plan.constrain, schema_path=plan.schema, dtype=e.dtype, model_axis_size=e.model_axis_size,
            draft_tokens=e.draft_tokens, ground_values=e.grounding,
        )
        print(f"   {split}: {stats}", file=sys.stderr)
    return score_predictions(predictions, out_dir, task=plan.task, schema_path=plan.schema)


def trained_model_dir(config: TrainConfig) -> str:
    """What the eval step decodes with: RUN_DIR/hf (the merged checkpoint), or RUN_DIR/adapter for
    prompt tuning (its PEFT adapter names the base model)."""
    from pipelines.config import PromptTuningConfig

    return storage.join(config.run_dir, "adapter" if isinstance(config.method, PromptTuningConfig) else "hf")


def prep_dir_of(run_dir: str) -> str:
    return storage.join(run_dir, "prep")


def prepared_splits(run_dir: str) -> tuple[str, str]:
    """Where ``parsetune run`` prepares the train and validation splits (the CPU configs' data paths)."""
    return storage.join(prep_dir_of(run_dir), "train.jsonl"), storage.join(prep_dir_of(run_dir), "validation.jsonl")


def run(config: TrainConfig) -> str:
    """Run every step into ``config.run_dir``, holding its lock; returns the path of report.md."""
    from parsetune.run_lock import run_dir_lock
    from pipelines.eval_plan import plan_eval
    from pipelines.wandb_check import check_wandb_login

    from pipelines.config_checks import check_run_dir

    check_run_dir(config.run_dir)  # before step 1 writes anything
    check_wandb_login(config)
    plan = plan_eval(config)  # task, constraint and schema fit together: before any heavy work
    with run_dir_lock(config.run_dir, "run"):
        return _run_steps(config, plan)


def _run_steps(config: TrainConfig, plan) -> str:
    from eval.compare import compare_runs
    from pipelines.eval_plan import check_targets
    from pipelines.train import train

    run_dir = config.run_dir
    prep_dir = prep_dir_of(run_dir)
    train_path, validation_path = prepared_splits(run_dir)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, train=train_path, validation=validation_path))
    total = 5
    t = step(1, total, f"base model -> {config.model}")
    ensure_base_model(config)
    from parsetune.model_families import check_generates

    check_generates(config.model)  # before any training: the run must be able to evaluate what it trains
    done(t, "base model ready")
    t = step(2, total, f"prepare {config.prep.task} data -> {prep_dir}")
    prep_data(config, prep_dir)
    if plan.task == "json":
        plan = dataclasses.replace(plan, schema=plan.schema_after_prep(prep_dir), from_prep=False)
        if plan.schema is not None:
            check_targets(plan.schema, [storage.join(prep_dir, f"{s}.jsonl") for s in ("train", *config.eval.splits)
                                        if storage.exists(storage.join(prep_dir, f"{s}.jsonl"))])
            print(f"   every target satisfies {plan.schema}", file=sys.stderr)
        # the run dir's config.yaml names the schema the run decodes with (parsetune serve reads it)
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, schema=plan.schema, constrain=plan.constrain))
    done(t, "data ready")
    hf_dir = trained_model_dir(config)
    t = step(3, total, f"train ({type(config.method).__name__}) -> {run_dir}")
    from pipelines.export import is_exported

    if is_exported(hf_dir):
        print(f"   {hf_dir} is already exported; skipping training", file=sys.stderr)
    else:
        train(dataclasses.replace(config, export=True))
    done(t, "trained and exported")
    score_dirs = []
    for number, split in enumerate(config.eval.splits):
        t = step(4, total, f"generate + score on {split}")
        data_path = storage.join(prep_dir, f"{split}.jsonl")
        if not storage.exists(data_path):
            raise UserError(f"{data_path}: split {split!r} was not prepared")
        out_dir = storage.join(run_dir, "eval", split)
        metrics = evaluate_split(config, hf_dir, split, data_path, out_dir, plan)
        score_dirs.append(out_dir)
        keys = ("overall_accuracy", "exact_match", "valid_rate") if plan.task == "viggo" else ("field_f1", "exact_match", "valid_json_rate", "schema_adherence_rate")
        summary = ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics.get(k) is not None)
        done(t, f"{split}: {summary}")
    t = step(5, total, "report")
    report = storage.join(run_dir, "report.md")
    names = [f"{os.path.basename(run_dir.rstrip('/'))} ({s})" for s in config.eval.splits]
    compare_runs(score_dirs, report, names=names)
    done(t, f"wrote {report}")
    return report
