"""The canonical form of JSON targets and the JSON Schema helpers, shared by prep and eval.

Strict JSON only: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), although
Python's ``json`` module reads and writes them by default. ``loads_strict`` refuses them and
``canonical_json`` never writes them, so a prepared target or a prediction holding one is invalid.

The canonical text of a value: sorted keys, compact separators, integral floats written as ints
(``1.0`` equals ``1``; ``true`` does not equal ``1``), non-ASCII kept as is.
"""

from __future__ import annotations

import json
from typing import Any

from parsetune.errors import UserError


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str) -> Any:
    """``json.loads`` without the non-standard constants; ``ValueError`` (or ``json.JSONDecodeError``)
    on anything that is not JSON."""
    return json.loads(text, parse_constant=_refuse_constant)


def _canon_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _canon_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon_value(v) for v in value]
    return str(value)


def canonical_json(value: Any) -> str:
    """Canonical text of a parsed JSON value; ``ValueError`` for NaN or an infinity."""
    return json.dumps(_canon_value(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def make_validator(schema: dict[str, Any]) -> Any:
    """Build a ``jsonschema`` validator for ``schema``; raises ``jsonschema.SchemaError`` if the
    schema itself is invalid (the caller turns that into a user error)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def load_json_schema(path: str) -> dict[str, Any]:
    """Read a JSON Schema file (local or gs://); ``UserError`` if it is not valid JSON or not a schema."""
    from parsetune import storage

    try:
        schema = loads_strict(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: malformed JSON schema ({exc.msg})") from None
    except ValueError as exc:
        raise UserError(f"{path}: malformed JSON schema ({exc})") from None
    if not isinstance(schema, dict):
        raise UserError(f"{path}:1: a JSON Schema must be a JSON object")
    try:
        make_validator(schema)
    except Exception as exc:  # jsonschema.SchemaError and friends
        message = getattr(exc, "message", str(exc))
        raise UserError(f"{path}: invalid JSON Schema ({message})") from None
    return schema
