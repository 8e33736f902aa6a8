"""``score_predictions``: predictions JSONL in, metrics files out (DESIGN.md §2, "Scores").

Input: one JSON object per line with ``id`` (string or integer), ``reference``, ``prediction``
(string) and usually ``input``; blank lines are ignored. Everything is read and validated before
anything is written, so bad input (reported as ``UserError`` naming ``file:line``) leaves the
output directory untouched. Outputs (each written atomically):

- ``metrics.json``: ``task``, ``source``, ``n`` and the aggregate scores (ViGGO: the seven
  ``ViggoMetrics`` rates plus ``per_function`` and ``per_attribute``; JSON: the ``JsonMetrics``
  fields plus ``valid_rate`` = ``valid_json_rate`` and ``per_field``, each top-level key's counts,
  precision and recall, ``eval.json_metrics.per_field``).
- ``per_example.jsonl``: one line per prediction, in input order, with its scores.
- ViGGO only: ``confusion_matrix.csv`` (counts) and ``confusion_matrix.png``; ``errors.json``: the
  number of misses (not exact matches) and their most frequent kinds with two examples each
  (``eval.error_kinds``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from parsetune import storage
from parsetune.tasks import check_task
from parsetune.tasks.json_form import load_json_schema, loads_strict
from parsetune.errors import UserError
from parsetune.jsonl import read_jsonl_rows


SCORE_FILES = ("metrics.json", "per_example.jsonl", "errors.json", "confusion_matrix.csv", "confusion_matrix.png")  # what DIR gets
ERROR_KINDS_KEPT = 8  # errors.json: the most frequent kinds of miss, with two examples each


@dataclass(frozen=True)
class PredictionRecord:
    """One validated line of a predictions file; ``line`` is 1-based."""

    id: str
    input: str | None
    reference: Any
    prediction: str
    line: int


def _check_reference(path: str, line: int, reference: Any, task: str) -> Any:
    """Return the reference in scoring form (ViGGO: MR text; JSON: parsed value) or raise."""
    where = f"{path}:{line}"
    if task == "viggo":
        from parsetune.tasks.viggo_mr import parse_mr

        if not isinstance(reference, str):
            raise UserError(f"{where}: 'reference' must be a string for task viggo")
        mr = parse_mr(reference)
        if not mr.valid:
            raise UserError(f"{where}: reference is not a valid ViGGO meaning representation ({mr.error})")
        return reference
    if isinstance(reference, str):
        try:
            return loads_strict(reference)
        except ValueError as exc:
            raise UserError(f"{where}: reference is not valid JSON ({exc})") from None
    return reference


def read_predictions(path: str, task: str = "viggo") -> list[PredictionRecord]:
    """Read and validate a predictions JSONL file; ``UserError`` naming ``file:line`` on any
    malformed line, missing or mistyped field, invalid reference, duplicate id, or no rows."""
    records: list[PredictionRecord] = []
    first_line: dict[str, int] = {}
    for line_no, row in read_jsonl_rows(path):
        where = f"{path}:{line_no}"
        for key in ("id", "reference", "prediction"):
            if key not in row:
                raise UserError(f"{where}: missing {key!r}")
        rid = row["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise UserError(f"{where}: 'id' must be a string or integer")
        if not isinstance(row["prediction"], str):
            raise UserError(f"{where}: 'prediction' must be a string")
        raw_input = row.get("input")
        if raw_input is not None and not isinstance(raw_input, str):
            raise UserError(f"{where}: 'input' must be a string")
        rid = str(rid)
        if rid in first_line:
            raise UserError(f"{where}: duplicate id {rid!r} (first on line {first_line[rid]})")
        first_line[rid] = line_no
        reference = _check_reference(path, line_no, row["reference"], task)
        records.append(PredictionRecord(rid, raw_input, reference, row["prediction"], line_no))
    if not records:
        raise UserError(f"{path}: empty file, no predictions")
    return records


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    # backslashreplace: a lone surrogate decoded from a JSON escape is written back as that escape
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8", "backslashreplace")


def _json(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _viggo_outputs(records: list[PredictionRecord], path: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    from eval.confusion_report import confusion_csv, confusion_png
    from eval.error_kinds import top_error_kinds
    from eval.viggo_metrics import score_all

    scores, metrics, cm = score_all([r.prediction for r in records], [r.reference for r in records])
    summary: dict[str, Any] = {"task": "viggo", "source": path, **dataclasses.asdict(metrics)}
    per_example = [
        {
            "id": r.id,
            "reference": r.reference,
            "prediction": r.prediction,
            "ref_function": s.ref_function,
            "pred_function": s.pred_function,
            "function_match": s.function_match,
            "attribute_set_match": s.attribute_set_match,
            "attribute_value_accuracy": s.attribute_value_fraction,
            "overall": s.overall,
            "exact_match": s.exact_match,
            "valid": s.valid,
            "error": s.pred_error,
        }
        for r, s in zip(records, scores)
    ]
    kinds = top_error_kinds(((r.id, r.input or "", r.reference, r.prediction) for r in records), k=ERROR_KINDS_KEPT)
    files = {
        "metrics.json": _json(summary),
        "per_example.jsonl": _jsonl(per_example),
        "errors.json": _json({"misses": sum(not s.exact_match for s in scores), "kinds": [k.to_json() for k in kinds]}),
        "confusion_matrix.csv": confusion_csv(cm).encode("utf-8"),
        "confusion_matrix.png": confusion_png(cm),
    }
    return summary, files


def _json_outputs(
    records: list[PredictionRecord], path: str, schema: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    from eval.json_metrics import per_field, score_json_all

    predictions, references = [r.prediction for r in records], [r.reference for r in records]
    scores, metrics = score_json_all(predictions, references, schema)
    summary: dict[str, Any] = {"task": "json", "source": path, **dataclasses.asdict(metrics)}
    summary["valid_rate"] = metrics.valid_json_rate
    summary["per_field"] = per_field(predictions, references)
    per_example = [{"id": r.id, "prediction": r.prediction, **dataclasses.asdict(s)} for r, s in zip(records, scores)]
    return summary, {"metrics.json": _json(summary), "per_example.jsonl": _jsonl(per_example)}


def score_predictions(path: str, out_dir: str, task: str = "viggo", schema_path: str | None = None) -> dict:
    """Score a predictions JSONL file and write the metrics files into ``out_dir``.

    Returns the dict written to ``metrics.json``. Raises ``UserError`` (before writing anything)
    for an unknown task, a schema with task viggo, a bad schema, or bad predictions input.
    """
    check_task(task)
    if schema_path is not None and task != "json":
        raise UserError("--schema only applies to --task json")
    storage.check_output_dir(out_dir)
    from parsetune.output_guard import refuse_inputs_as_output

    for name in SCORE_FILES:  # never write over the predictions or the schema being read
        refuse_inputs_as_output(storage.join(out_dir, name), [path, schema_path])
    schema = load_json_schema(schema_path) if schema_path is not None else None
    records = read_predictions(path, task)
    if task == "viggo":
        summary, files = _viggo_outputs(records, path)
    else:
        summary, files = _json_outputs(records, path, schema)
    from parsetune.write_group import AllOrNothingWriter

    with AllOrNothingWriter() as writer:  # a failure puts back the previous scores, if any
        for name, data in files.items():
            writer.write_bytes(storage.join(out_dir, name), data)
    return summary
