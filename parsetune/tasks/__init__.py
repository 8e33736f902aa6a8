"""Task knowledge shared by prep and eval: the task names, the ViGGO MR grammar and parser
(``viggo_mr``), the canonical JSON form and JSON Schema helpers (``json_form``).

This package sits on the ground floor: it imports nothing from ``prep``, ``eval``, ``pipelines``
or ``infra`` (tests/test_import_directions.py holds that).
"""

from __future__ import annotations

from parsetune.errors import UserError

TASKS: tuple[str, ...] = ("viggo", "json")


def check_task(name: str) -> str:
    """``name`` if it is a known task, else a one-line ``UserError``."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return name
