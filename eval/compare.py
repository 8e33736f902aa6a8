"""``compare_runs``: several ``eval score`` output directories in, one markdown report out.

The table fits the runs' task (``metrics.json`` ``task``; all runs of one report share it). JSON
extraction: one column per run with n, valid JSON, schema adherence (— without a schema), field
precision / recall / F1 and exact match. ViGGO: the table of the Levanter ViGGO tutorial (one
column per run: n, function-name, attribute-set, attribute-value, overall, exact match, valid
rate), a link to each run's
``confusion_matrix.png`` (relative to the report), and each run's 3 largest off-diagonal
confusions (``reference → predicted: count``) from its ``confusion_matrix.csv``, and where each run
fails: a per-attribute table (precision, recall, value accuracy; ``metrics.json``) and the most
frequent kinds of miss with two examples each (``errors.json``, ``eval.error_kinds``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import unicodedata
from dataclasses import dataclass
from typing import Any

from parsetune import storage
from parsetune.errors import UserError

JSON_ROWS: tuple[tuple[str, str], ...] = (
    ("n", "n"),
    ("valid JSON", "valid_json_rate"),
    ("schema-valid", "schema_adherence_rate"),
    ("field precision", "field_precision"),
    ("field recall", "field_recall"),
    ("field F1", "field_f1"),
    ("exact match", "exact_match"),
)
TITLES = {"viggo": "ViGGO evaluation comparison", "json": "JSON extraction evaluation comparison"}

ROWS: tuple[tuple[str, str], ...] = (
    ("n", "n"),
    ("function name", "function_name_accuracy"),
    ("attribute set", "attribute_set_accuracy"),
    ("attribute value", "attribute_value_accuracy"),
    ("overall", "overall_accuracy"),
    ("exact match", "exact_match"),
    ("valid rate", "valid_rate"),
)


@dataclass(frozen=True)
class RunSummary:
    task: str  # viggo | json
    name: str
    directory: str
    metrics: dict[str, Any]
    top_confusions: tuple[tuple[str, str, int], ...]  # (reference, predicted, count), largest first
    has_png: bool
    errors: dict[str, Any] | None = None  # errors.json of the score directory (eval.error_kinds), if any


def top_confusions(csv_text: str, where: str, k: int = 3) -> tuple[tuple[str, str, int], ...]:
    """The ``k`` largest off-diagonal cells (ties broken by reference then predicted name)."""
    rows = list(csv.reader(io.StringIO(csv_text)))
    if not rows or len(rows[0]) < 2:
        raise UserError(f"{where}: empty or malformed confusion matrix CSV")
    columns = rows[0][1:]
    cells: list[tuple[str, str, int]] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(columns) + 1:
            raise UserError(f"{where}:{line_no}: expected {len(columns) + 1} fields, got {len(row)}")
        for predicted, value in zip(columns, row[1:]):
            try:
                count = int(value)
            except ValueError:
                raise UserError(f"{where}:{line_no}: count {value!r} is not an integer") from None
            if predicted != row[0] and count > 0:
                cells.append((row[0], predicted, count))
    cells.sort(key=lambda c: (-c[2], c[0], c[1]))
    return tuple(cells[:k])


def read_run(directory: str, name: str) -> RunSummary:
    metrics_path = storage.join(directory, "metrics.json")
    try:
        metrics = json.loads(storage.read_text(metrics_path))
    except ValueError as err:
        raise UserError(f"{metrics_path}: not valid JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{metrics_path}: expected a JSON object")
    task = metrics.get("task", "viggo")  # score directories from before the task was recorded are ViGGO's
    if task not in TITLES:
        raise UserError(f"{metrics_path}: unknown task {task!r}; expected one of {', '.join(TITLES)}")
    missing = [key for _, key in (ROWS if task == "viggo" else JSON_ROWS) if key not in metrics]
    if missing:
        raise UserError(f"{metrics_path}: missing {', '.join(missing)} (is this an `eval score` directory?)")
    csv_path = storage.join(directory, "confusion_matrix.csv")
    confusions = top_confusions(storage.read_text(csv_path), csv_path) if storage.exists(csv_path) else ()
    has_png = storage.exists(storage.join(directory, "confusion_matrix.png"))
    errors_path = storage.join(directory, "errors.json")
    errors = None
    if storage.exists(errors_path):
        try:
            errors = json.loads(storage.read_text(errors_path))
        except ValueError as err:
            raise UserError(f"{errors_path}: not valid JSON ({err})") from None
    return RunSummary(task, name, directory, metrics, confusions, has_png, errors)


def _md(text: str) -> str:
    """Text safe inside inline code on one line."""
    return text.replace("`", "'").replace("\n", " ⏎ ")


def _table_text(text: str) -> str:
    """Text safe in a markdown table cell: ``|`` escaped (it would end the cell), line breaks shown."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ⏎ ")


def check_names(names: list[str]) -> None:
    """Run names head columns, headings and list items of the report: a control character (a newline
    or tab) would break them, so it is refused; ``|`` is escaped where it matters (``_table_text``)."""
    for number, name in enumerate(names, start=1):
        bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            raise UserError(f"run name {number} ({name!r}) holds the control character {bad!r}; give --names on one line")


def attribute_table(per_attribute: dict[str, Any]) -> list[str]:
    """Markdown rows: each attribute's references, predictions, precision, recall, value accuracy."""
    lines = [
        "| attribute | in references | predicted | precision | recall | value accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, stats in per_attribute.items():
        predicted = stats.get("predicted")
        precision = stats.get("precision")
        lines.append(
            f"| {_table_text(name)} | {stats['n']} | {'—' if predicted is None else predicted} | "
            f"{'—' if precision is None else f'{precision:.3f}'} | {stats['presence_rate']:.3f} | {stats['value_accuracy']:.3f} |"
        )
    return lines


def field_table(per_field: dict[str, Any]) -> list[str]:
    """Markdown rows: each JSON field's references, predictions, right values, precision, recall."""
    lines = ["| field | in references | predicted | right value | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
    for name, stats in per_field.items():
        lines.append(
            f"| {_table_text(_md(name))} | {stats['n']} | {stats['predicted']} | {stats['correct']} | {_cell(stats.get('precision'))} | {_cell(stats.get('recall'))} |"
        )
    return lines


def error_lines(errors: dict[str, Any]) -> list[str]:
    """The most frequent kinds of miss, two examples each."""
    lines = [f"{errors.get('misses', '?')} predictions are not exact matches. Most frequent kinds of miss (an example may have several):", ""]
    for number, kind in enumerate(errors.get("kinds", []), start=1):
        lines.append(f"{number}. **{kind['kind']}**: {kind['count']} examples")
        for example in kind.get("examples", []):
            sentence = example["input"].strip().splitlines()
            lines.append(f"   - `{_md(example['id'])}`: {_md(example['detail'])}")
            if sentence:
                lines.append(f"     - input: {_md(sentence[-2] if len(sentence) > 1 else sentence[0])}")
            lines.append(f"     - reference: `{_md(example['reference'])}`")
            lines.append(f"     - prediction: `{_md(example['prediction'])}`")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _link(target_dir: str, out_path: str) -> str:
    png = storage.join(target_dir, "confusion_matrix.png")
    if storage.is_gcs(png) and storage.is_gcs(out_path):
        (png_bucket, png_key), (out_bucket, out_key) = storage.split_gcs(png), storage.split_gcs(out_path)
        if png_bucket != out_bucket:
            return png
        import posixpath

        return posixpath.relpath(png_key, posixpath.dirname(out_key) or ".")  # works after copying the run dir down
    if storage.is_gcs(png) or storage.is_gcs(out_path):
        return png
    return os.path.relpath(os.path.abspath(png), os.path.dirname(os.path.abspath(out_path))).replace(os.sep, "/")


JSON_NOTE = (
    "valid JSON: predictions that parse as strict JSON; schema-valid: ... that also satisfy the JSON Schema (— when "
    "scored without one); field precision / recall / F1: micro-averaged over flattened (key path, value) pairs; "
    "exact match: the same JSON value as the reference (key order and whitespace aside). See eval/json_metrics.py."
)


def render_report(runs: list[RunSummary], out_path: str) -> str:
    """The markdown text of the comparison report written to ``out_path``."""
    task = runs[0].task
    lines = [f"# {TITLES[task]}", ""]
    lines.append("| metric | " + " | ".join(_table_text(r.name) for r in runs) + " |")
    lines.append("|---|" + "---:|" * len(runs))
    for label, key in ROWS if task == "viggo" else JSON_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(r.metrics[key]) for r in runs) + " |")
    lines += ["", "Runs:", ""]
    for r in runs:
        lines.append(f"- **{r.name}**: `{r.directory}`")
    if task == "json":
        lines += ["", JSON_NOTE, ""]
        for r in runs:
            if r.metrics.get("per_field"):
                lines += [f"## Per field: {r.name}", "", "Top-level keys (precision: predicted keys with the reference's value; recall: reference keys predicted with their value):", ""]
                lines += field_table(r.metrics["per_field"]) + [""]
        return "\n".join(lines)
    lines += ["", "## Confusion matrices", ""]
    for r in runs:
        lines.append(f"### {r.name}")
        lines.append("")
        if r.has_png:
            lines.append(f"![{r.name} confusion matrix]({_link(r.directory, out_path)})")
            lines.append("")
        if r.top_confusions:
            lines.append("Largest confusions:")
            lines.append("")
            lines += [f"- {ref} → {pred}: {count}" for ref, pred, count in r.top_confusions]
        else:
            lines.append("No off-diagonal confusions.")
        lines.append("")
    for r in runs:
        per_attribute = r.metrics.get("per_attribute")
        if not per_attribute and not r.errors:
            continue
        lines += [f"## Where {r.name} fails", ""]
        if per_attribute:
            lines += ["Per attribute (precision: predicted attributes the reference has; recall: reference attributes predicted; value accuracy: reference attributes predicted with the right value):", ""]
            lines += attribute_table(per_attribute)
            lines.append("")
        if r.errors:
            lines += error_lines(r.errors)
            lines.append("")
    return "\n".join(lines)


def compare_runs(directories: list[str], out_path: str, names: list[str] | None = None) -> str:
    """Read every run, then write the report atomically; returns its text."""
    if not directories:
        raise UserError("give at least one score directory")
    if names is None:
        names = [os.path.basename(d.rstrip("/")) or d for d in directories]
    if len(names) != len(directories):
        raise UserError(f"--names has {len(names)} names for {len(directories)} directories")
    check_names(names)
    from eval.score import SCORE_FILES
    from parsetune.output_guard import refuse_inputs_as_output

    refuse_inputs_as_output(out_path, [storage.join(d, f) for d in directories for f in SCORE_FILES])  # never over a score it reads
    runs = [read_run(d, n) for d, n in zip(directories, names)]
    tasks = sorted({r.task for r in runs})
    if len(tasks) > 1:
        raise UserError(f"cannot compare runs of different tasks ({', '.join(tasks)}) in one table: " + ", ".join(f"{r.directory} is {r.task}" for r in runs))
    text = render_report(runs, out_path)
    storage.write_text_atomic(out_path, text)
    return text
