"""``parsetune eval ...``: argparse wiring for the eval package (thin; logic lives in eval/*.py).

The top-level CLI calls ``register(subparsers)`` and then ``args.func(args)``, turning
``UserError`` into a one-line message. Subcommands: ``score`` (``generate`` and ``compare`` are
planned and will be added here as siblings).
"""

from __future__ import annotations

import argparse
import sys

from parsetune.errors import UserError

_SCORE_DESCRIPTION = """\
Score a predictions file and write metrics.

PREDICTIONS.jsonl has one JSON object per line: {"id", "input", "reference", "prediction"}.
Writes into DIR (created if needed; every file replaced atomically):
  metrics.json          n and aggregate scores (viggo: function_name_accuracy,
                        attribute_set_accuracy, attribute_value_accuracy, overall_accuracy,
                        exact_match, valid_rate, per_function, per_attribute;
                        json: valid_json_rate, schema_adherence_rate, field_precision,
                        field_recall, field_f1, exact_match)
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


def _run_score(args: argparse.Namespace) -> int:
    from eval.score import score_predictions

    metrics = score_predictions(args.predictions, args.out, task=args.task, schema_path=args.schema)
    keys = [k for k, v in metrics.items() if isinstance(v, float)]
    print(f"scored {metrics['n']} predictions -> {args.out}")
    for key in keys:
        print(f"  {key:<26} {metrics[key]:.4f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command (with its ``score`` subcommand) to ``subparsers``."""
    eval_parser = subparsers.add_parser(
        "eval",
        help="score predictions (generate/compare planned)",
        description="Evaluate fine-tuned models: score predictions against references.",
    )
    eval_sub = eval_parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
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
        choices=("viggo", "json"),
        default="viggo",
        help="viggo: meaning-representation scores (default); json: JSON-extraction scores",
    )
    score.add_argument(
        "--schema", metavar="FILE", default=None, help="JSON Schema file for schema adherence (--task json only)"
    )
    score.set_defaults(func=_run_score)


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
