"""Reading JSONL files (local or gs://): one JSON object per line, ``file:line`` in every error.

Strict JSON: ``NaN``/``Infinity`` are refused (see ``parsetune.tasks.json_form``).
"""

from __future__ import annotations

import json

from parsetune import storage
from parsetune.errors import UserError
from parsetune.tasks.json_form import loads_strict


def read_jsonl_rows(path: str) -> list[tuple[int, dict]]:
    """Return ``(line_number, object)`` for each non-blank line; each line must be a JSON object."""
    rows = []
    # split on "\n" only: str.splitlines() would also break lines at U+2028/U+0085, which JSON
    # written with ensure_ascii=False may hold inside strings
    for number, line in enumerate(storage.read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = loads_strict(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: malformed JSON: {err.msg} (column {err.colno})") from err
        except ValueError as err:
            raise UserError(f"{path}:{number}: malformed JSON: {err}") from err
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    return rows
