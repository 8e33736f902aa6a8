"""Reading source rows from CSV and JSONL files, with file:line in every error."""

from __future__ import annotations

import csv
import io

from parsetune import storage
from parsetune.errors import UserError
from parsetune.jsonl import read_jsonl_rows


def read_csv_rows(path: str, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """Return ``(line_number, row)`` for each CSV record; the header must name ``required``.

    The line number is the line the record starts on (header is line 1).
    """
    text = storage.read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: empty CSV file (expected a header with {', '.join(required)})") from None
    except csv.Error as err:
        raise UserError(f"{path}:1: malformed CSV header: {err}") from err
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(f"{path}:1: CSV header {header} lacks column(s) {missing}")
    rows = []
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise UserError(f"{path}:{start}: malformed CSV row: {err}") from err
        if fields and any(f.strip() for f in fields):
            if len(fields) != len(header):
                raise UserError(
                    f"{path}:{start}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}"
                )
            rows.append((start, dict(zip(header, fields))))
        start = reader.line_num + 1
    return rows


def read_rows(path: str, csv_required: tuple[str, ...]) -> tuple[str, list[tuple[int, dict]]]:
    """Read a ``.csv`` or ``.jsonl``/``.json`` file; returns ``(format, rows)``."""
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv", read_csv_rows(path, csv_required)
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", read_jsonl_rows(path)
    raise UserError(f"{path}: unknown file type; expected .csv or .jsonl")


def require_text(value: object, field: str, location: str) -> str:
    """A required non-empty string field."""
    if value is None:
        raise UserError(f"{location}: missing field '{field}'")
    if not isinstance(value, str):
        raise UserError(f"{location}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{location}: field '{field}' is empty")
    return value
