"""The canonical form of JSON targets and the JSON Schema helpers, shared by prep and eval.

Strict JSON only: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), although
Python's ``json`` module reads and writes them by default. ``loads_strict`` refuses them and
``canonical_json`` never writes them, so a prepared target or a prediction holding one is invalid.
``loads_strict`` also refuses an object with a duplicate key (Python keeps the last value, so
``{"a": "junk", "a": "right"}`` would score as ``{"a": "right"}``) and nesting deeper than
``MAX_DEPTH`` (Python's parser and every recursive walk after it would hit the recursion limit).

The canonical text of a value: sorted keys, compact separators, integral floats written as ints
(``1.0`` equals ``1``; ``true`` does not equal ``1``), non-ASCII kept as is.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from parsetune.errors import UserError
from parsetune.tasks.schema_refs import check_local_refs, offline_registry


MAX_DEPTH = 128  # nested arrays/objects; far beyond any extraction target, well within Python's recursion limit
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"duplicate key {duplicate!r} in an object")
    return result


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def loads_strict(text: str) -> Any:
    """``json.loads`` without the non-standard constants, duplicate keys or nesting deeper than
    ``MAX_DEPTH``; ``ValueError`` (or ``json.JSONDecodeError``) on anything else that is not JSON.
    Never ``RecursionError``."""
    if text.count("[") + text.count("{") > MAX_DEPTH and nesting_depth(text) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:  # not reached within MAX_DEPTH; kept so that no caller ever sees one
        raise ValueError("nested too deeply") from None


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
    schema itself is invalid (the caller turns that into a user error). Its references resolve
    offline (``schema_refs.offline_registry``): a remote ``$ref`` is never fetched."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=offline_registry())


def load_json_schema(path: str) -> dict[str, Any]:
    """Read a JSON Schema file (local or gs://); ``UserError`` if it is not valid JSON, not a schema,
    or has a ``$ref`` that does not resolve inside it (a remote one is refused, never fetched)."""
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
    check_local_refs(schema, path)  # before any work: a remote $ref would be fetched once per validated row
    return schema


def compact_json(value: Any) -> str:
    """Compact JSON keeping the order of object keys (``canonical_json`` sorts them): the spelling of
    targets whose schema fixes the property order, as a schema-constrained decoder writes them."""
    return json.dumps(_canon_value(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def schema_violation(value: Any, validator: Any) -> str | None:
    """Why ``value`` does not satisfy the schema of ``validator`` (``make_validator``), as
    ``"at genres/0: 'x' is not one of [...]"``; ``None`` when it does."""
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {where}: {error.message}"


SCHEMA_FILE = "schema.json"  # a prepared JSON set's schema, beside its manifest (manifest key "schema")


def prepared_schema_path(prep_dir: str) -> str | None:
    """The JSON Schema of the prepared set in ``prep_dir`` (named by its ``manifest.json``), or
    ``None`` when there is no manifest or it names no schema."""
    from parsetune import storage
    from parsetune.manifest import read_manifest

    manifest = read_manifest(prep_dir)
    name = manifest.get("schema") if manifest is not None else None
    return storage.join(prep_dir, name) if isinstance(name, str) and name else None


def schema_beside(data_path: str) -> str | None:
    """The JSON Schema named by the manifest beside the prepared split file ``data_path``, if any."""
    from parsetune.manifest import set_dir_of

    return prepared_schema_path(set_dir_of(data_path))
