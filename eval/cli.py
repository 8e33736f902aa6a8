"""``parsetune eval ...``: argparse wiring for the eval package (thin; logic lives in eval/*.py).

The top-level CLI calls ``register(subparsers)`` and then ``args.func(args)``, turning
``UserError`` into a one-line message. Subcommands: ``generate``, ``score``, ``compare``.
"""

from __future__ import annotations

import argparse
import sys

from parsetune.errors import UserError
from parsetune.tasks import TASKS

_SCORE_DESCRIPTION = """\
Score a predictions file and write metrics.

PREDICTIONS.jsonl has one JSON object per line: {"id", "input", "reference", "prediction"}.
Writes into DIR (created if needed; every file replaced atomically):
  metrics.json          n and aggregate scores (viggo: function_name_accuracy,
                        attribute_set_accuracy, attribute_value_accuracy, overall_accuracy,
                        exact_match, valid_rate, per_function, per_attribute;
                        json: valid_json_rate, schema_adherence_rate, field_precision,
                        field_recall, field_f1, exact_match, per_field)
  per_example.jsonl     the scores of every prediction
  confusion_matrix.csv  (viggo) reference x predicted function counts
  confusion_matrix.png  (viggo) the same as a heat map
Bad input (malformed line, missing field, duplicate id, empty file) is reported as
file:line and nothing is written.
"""

_SCORE_EPILOG = """\
examples:
  parsetune eval score runs/smollm2/predictions.jsonl --out runs/smollm2/scores
  parsetune eval score preds.jsonl --out scores --task json --schema schema.json
"""


_GENERATE_DESCRIPTION = """\
Generate predictions with greedy decoding from an HF checkpoint (local or gs://), on the same
Levanter model classes the trainer uses, with a KV cache. Families: llama (incl. Llama-3
rope_scaling), mistral, qwen2. The model is sharded over all visible devices (on a TPU pod, all
hosts: run the same command on every host; process 0 writes the predictions): --model-axis-size N
devices shard heads, KV heads and the MLP, the rest shard the batch. Compiled programs are kept in
~/.cache/parsetune/xla (PARSETUNE_COMPILATION_CACHE=DIR or off), so a second run skips compilation.

SPLIT.jsonl is prepared data ({"id", "input", "output"} per line, e.g. from `parsetune prep`).
Writes PREDICTIONS.jsonl ({"id", "input", "reference", "prediction"} per line, input order),
atomically: on any error nothing is written. Prompts are sorted by length into batches; each row
stops at EOS or after --max-new-tokens tokens.

--constrain viggo              only well-formed ViGGO MRs (9 functions, 14 attributes in canonical
                               order), then EOS. With the manifest.json that `parsetune prep` writes
                               beside SPLIT.jsonl, values are grounded in what training showed:
                               closed attributes (rating, esrb, yes/no flags, genres, ...) take only
                               values seen in training, and attributes that training copies from the
                               sentence (name, developer, specifier, ...) take only spans of the
                               row's own sentence (--no-grounding: those stay free text).
--constrain json-schema [FILE] only compact JSON matching the JSON Schema in FILE (without FILE: the
                               schema.json that `parsetune prep json --schema` / `prep viggo-json`
                               wrote beside SPLIT.jsonl)
"""

_GENERATE_EPILOG = """\
examples:
  parsetune eval generate --model models/smollm2-135m-instruct --data data/viggo/validation.jsonl \\
      --out runs/base/predictions.jsonl --limit 32
  parsetune eval generate --model runs/full/hf --data data/viggo/validation.jsonl \\
      --out runs/full/predictions.jsonl --constrain viggo --batch-size 16
"""

_COMPARE_DESCRIPTION = """\
Compare several `eval score` directories of one task in one markdown report: a table with one
column per run. ViGGO: n, function name, attribute set, attribute value, overall, exact match,
valid rate, links to each confusion_matrix.png (relative to the report), each run's 3 largest
confusions and where it fails. JSON: n, valid JSON, schema-valid, field precision / recall / F1,
exact match, and a per-field table.
"""

_COMPARE_EPILOG = """\
examples:
  parsetune eval compare runs/base/scores runs/full/scores runs/lora/scores \\
      --names prompted,full,lora --out runs/report.md
"""


def _schema_beside(data_path: str) -> str:
    """The JSON Schema that `parsetune prep` wrote beside a prepared split (its manifest names it)."""
    from parsetune.tasks.json_form import schema_beside

    schema = schema_beside(data_path)
    if schema is None:
        raise UserError(f"--constrain json-schema without FILE: {data_path} has no schema.json from `parsetune prep` beside it; give FILE")
    return schema


def _run_generate_pod(args: argparse.Namespace, hosts: int) -> int:
    import sys

    from parsetune.local_pod import PodStopped, pod_failure, run_local_pod

    argv = ["eval", "generate", "--model", args.model, "--data", args.data, "--out", args.out]
    for flag in ("batch_size", "max_new_tokens", "limit", "dtype", "model_axis_size", "draft_tokens"):
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.constrain:
        argv += ["--constrain", *args.constrain]
    if not args.grounding:
        argv.append("--no-grounding")
    print(f"[parsetune eval generate] starting a simulated pod of {hosts} processes on 127.0.0.1", file=sys.stderr, flush=True)
    try:
        failure = pod_failure(run_local_pod([sys.executable, "-m", "parsetune", *argv], hosts))
    except PodStopped as stopped:
        print(f"parsetune eval generate: {stopped}", file=sys.stderr)
        return stopped.exit_status
    if failure:
        raise UserError(failure)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    if args.hosts is not None:
        if args.hosts < 1:
            raise UserError(f"--hosts {args.hosts}: expected a number of processes >= 1")
        return _run_generate_pod(args, args.hosts)
    from parsetune.distributed import fail_fast, join_pod

    join_pod()  # a multi-host slice (or the simulated pod): before anything touches JAX
    with fail_fast("eval generate"):
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from eval.generate import generate_predictions

    constrain, schema = None, None
    if args.constrain:
        constrain, *rest = args.constrain
        if constrain == "json-schema" and len(rest) == 1:
            schema = rest[0]
        elif constrain == "json-schema" and not rest:
            schema = _schema_beside(args.data)
        elif constrain == "json-schema":
            raise UserError("usage: --constrain json-schema [FILE]")
        elif constrain != "viggo":
            raise UserError(f"unknown --constrain {constrain!r}; expected viggo or json-schema FILE")
        elif rest:
            raise UserError("--constrain viggo takes no FILE")
    stats = generate_predictions(
        args.model,
        args.data,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        constrain=constrain,
        schema_path=schema,
        dtype=args.dtype,
        model_axis_size=args.model_axis_size,
        draft_tokens=args.draft_tokens,
        ground_values=args.grounding,
    )
    import jax

    if jax.process_index() != 0:
        return 0
    print(
        f"generated {stats.n} predictions -> {args.out} in {stats.seconds:.1f} s "
        f"({stats.examples_per_second:.2f} examples/s; {stats.n - stats.stopped_at_eos} hit --max-new-tokens)\n"
        f"constraint: {stats.constraint}"
    )
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from eval.compare import compare_runs

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    compare_runs(args.dirs, args.out, names)
    print(f"compared {len(args.dirs)} runs -> {args.out}")
    return 0


def _run_score(args: argparse.Namespace) -> int:
    from eval.score import score_predictions

    metrics = score_predictions(args.predictions, args.out, task=args.task, schema_path=args.schema)
    keys = [k for k, v in metrics.items() if isinstance(v, float)]
    print(f"scored {metrics['n']} predictions -> {args.out}")
    for key in keys:
        print(f"  {key:<26} {metrics[key]:.4f}")
    return 0


DEFAULT_DRAFT_TOKENS = 0  # eval.generate.DEFAULT_DRAFT_TOKENS (not imported: --help stays fast)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command (with its ``score`` subcommand) to ``subparsers``."""
    eval_parser = subparsers.add_parser(
        "eval",
        help="generate predictions, score them, compare runs",
        description="Evaluate fine-tuned models: generate predictions, score them against references, "
        "compare runs.",
    )
    eval_sub = eval_parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    gen = eval_sub.add_parser(
        "generate",
        help="greedy (optionally grammar-constrained) predictions from an HF checkpoint",
        description=_GENERATE_DESCRIPTION,
        epilog=_GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--model", required=True, metavar="DIR", help="HF checkpoint directory, local or gs:// (config.json, *.safetensors, tokenizer), or a PEFT prompt-tuning adapter (RUN_DIR/adapter of a prompt-tuning run: its base model with the soft prompt)")
    gen.add_argument("--data", required=True, metavar="SPLIT.jsonl", help="prepared data (local or gs://)")
    gen.add_argument("--out", required=True, metavar="PREDICTIONS.jsonl", help="predictions file to write (local or gs://)")
    gen.add_argument("--batch-size", type=int, default=8, metavar="N", help="rows decoded together [8]")
    gen.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="generation limit per row [128]")
    gen.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows")
    gen.add_argument(
        "--constrain", nargs="+", metavar=("KIND", "FILE"), default=None,
        help="grammar constraint: 'viggo' or 'json-schema [FILE]' (no FILE: the prepared set's schema.json)",
    )  # fmt: skip
    gen.add_argument(
        "--no-grounding", dest="grounding", action="store_false",
        help="--constrain viggo: let copied attributes take any text instead of spans of the row's sentence",
    )
    gen.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
        help="weights and compute: auto = bfloat16 on TPU, float32 elsewhere (XLA:CPU bf16 is slow) [auto]",
    )
    gen.add_argument(
        "--model-axis-size", type=int, default=1, metavar="N",
        help="devices per model shard (must divide heads, KV heads, MLP width and the device count) [1]",
    )  # fmt: skip
    gen.add_argument(
        "--draft-tokens", type=int, default=DEFAULT_DRAFT_TOKENS, metavar="K",
        help="prompt lookup: check up to K tokens copied from the row's own prompt/output in each decode step "
        f"(same outputs, fewer steps; pays only where a decode step is memory-bound, e.g. TPU; 0 = one token per step) [{DEFAULT_DRAFT_TOKENS}]",
    )
    gen.add_argument(
        "--hosts", type=int, default=None, metavar="N",
        help="simulate an N-host pod on this machine (N processes on 127.0.0.1, one mesh over all their devices)",
    )  # fmt: skip
    gen.set_defaults(func=_run_generate)
    score = eval_sub.add_parser(
        "score",
        help="score a predictions JSONL file and write metrics, per-example scores and a confusion matrix",
        description=_SCORE_DESCRIPTION,
        epilog=_SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("predictions", metavar="PREDICTIONS.jsonl", help="predictions file (local path)")
    score.add_argument("--out", required=True, metavar="DIR", help="output directory for the metrics files")
    score.add_argument(
        "--task",
        choices=TASKS,
        default="viggo",
        help="viggo: meaning-representation scores (default); json: JSON-extraction scores",
    )
    score.add_argument(
        "--schema", metavar="FILE", default=None, help="JSON Schema file for schema adherence (--task json only)"
    )
    score.set_defaults(func=_run_score)
    compare = eval_sub.add_parser(
        "compare",
        help="one markdown report comparing several score directories",
        description=_COMPARE_DESCRIPTION,
        epilog=_COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("dirs", nargs="+", metavar="DIR", help="`eval score` output directories")
    compare.add_argument("--out", required=True, metavar="REPORT.md", help="markdown report to write")
    compare.add_argument("--names", default=None, metavar="A,B,...", help="column names (default: directory names)")
    compare.set_defaults(func=_run_compare)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m eval.cli eval score ...``) mirroring the top-level CLI."""
    parser = argparse.ArgumentParser(prog="parsetune")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
