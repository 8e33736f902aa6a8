"""Task knowledge shared by prep and eval: the task names, the ViGGO MR grammar and parser
(``viggo_mr``), the canonical JSON form and JSON Schema helpers (``json_form``).

Two kinds of names: an *output task* says what a model writes and how it is scored (``viggo``: a
meaning representation; ``json``: a JSON object); a *prep task* says where the data comes from and
how it is made. ``viggo-json`` is the ViGGO corpus with each MR turned into a JSON object (prep's
``prep/viggo_json.py``): its outputs are scored as ``json``.

This package sits on the ground floor: it imports nothing from ``prep``, ``eval``, ``pipelines``
or ``infra`` (tests/test_import_directions.py holds that).
"""

from __future__ import annotations

from parsetune.errors import UserError

TASKS: tuple[str, ...] = ("viggo", "json")
PREP_TASKS: dict[str, str] = {"viggo": "viggo", "json": "json", "viggo-json": "json"}  # prep task -> output task


def check_task(name: str) -> str:
    """``name`` if it is a known output task, else a one-line ``UserError``."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return name


def check_prep_task(name: str) -> str:
    """``name`` if it is a known prep task, else a one-line ``UserError``."""
    if name not in PREP_TASKS:
        raise UserError(f"unknown task {name!r}; expected one of {', '.join(PREP_TASKS)}")
    return name


def output_task(prep_task: str) -> str:
    """What a prep task's model writes and how it is scored: ``viggo`` or ``json``."""
    return PREP_TASKS[check_prep_task(prep_task)]
