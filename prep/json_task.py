"""Text-to-JSON extraction sources: free text in, one JSON object out.

A source row has a text field and a target field holding a JSON object (or a string that holds
one). The target is validated (parses, is an object, optionally matches a JSON Schema) and
serialised canonically (``parsetune.tasks.json_form.canonical_json``: sorted keys, compact), so the
model learns one spelling of each answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from parsetune.tasks.json_form import canonical_json, load_json_schema, loads_strict, make_validator, schema_violation
from parsetune.errors import UserError
from prep.readers import read_rows, require_text
from prep.records import SourceExample


@dataclass(frozen=True)
class JsonFields:
    text: str = "text"
    target: str = "json"
    id: str = "id"  # optional in the source; "<split>-<row index>" when absent


def load_schema(path: str | None) -> dict | None:
    return None if path is None else load_json_schema(path)


def parse_target(raw: object, field: str, location: str) -> object:
    if raw is None:
        raise UserError(f"{location}: missing field '{field}'")
    if isinstance(raw, str):
        if not raw.strip():
            raise UserError(f"{location}: field '{field}' is empty")
        try:
            raw = loads_strict(raw)
        except json.JSONDecodeError as err:
            raise UserError(f"{location}: field '{field}' is not valid JSON: {err.msg} (column {err.colno})") from err
        except ValueError as err:  # NaN / Infinity
            raise UserError(f"{location}: field '{field}' is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise UserError(f"{location}: field '{field}' must hold a JSON object, got {type(raw).__name__}")
    return raw


def check_against_schema(value: object, validator, location: str, schema_path: str | None) -> None:
    if validator is None:
        return
    problem = schema_violation(value, validator)
    if problem is not None:
        raise UserError(f"{location}: target does not match the schema {schema_path} {problem}")


def load_json_split(split: str, path: str, fields: JsonFields, schema: dict | None, schema_path: str | None = None) -> list[SourceExample]:
    fmt, rows = read_rows(path, (fields.text, fields.target))
    validator = make_validator(schema) if schema is not None else None
    examples = []
    seen: dict[str, str] = {}
    for index, (line, row) in enumerate(rows):
        location = f"{path}:{line}"
        text = require_text(row.get(fields.text), fields.text, location)
        target = parse_target(row.get(fields.target), fields.target, location)
        check_against_schema(target, validator, location, schema_path)
        raw_id = row.get(fields.id)
        example_id = str(raw_id) if raw_id not in (None, "") else f"{split}-{index}"
        if example_id in seen:
            raise UserError(f"{location}: duplicate id {example_id!r} (first seen at {seen[example_id]})")
        seen[example_id] = location
        examples.append(SourceExample(id=example_id, text=text, target=canonical_json(target), location=location))
    if not examples:
        raise UserError(f"{path}: split '{split}' has no examples")
    return examples
