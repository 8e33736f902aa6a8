"""Scores for JSON-extraction tasks (free text in, a JSON object out). Never raise on predictions.

Definitions:

- valid JSON: the prediction, stripped of surrounding whitespace, parses as strict JSON
  (``parsetune.tasks.json_form.loads_strict``: ``NaN``/``Infinity`` are not JSON).
- schema adherence (only when a JSON Schema is given): the prediction is valid JSON *and*
  validates against the schema. The rate is over all examples, so invalid JSON counts as a miss.
- exact match: the prediction is valid JSON and ``canonical(pred) == canonical(ref)``, where
  ``canonical`` is ``parsetune.tasks.json_form.canonical_json`` (sorted keys, no insignificant
  whitespace, integral floats as ints: ``1.0`` equals ``1``; ``true`` does not equal ``1``).
- fields: a JSON value is flattened into a set of ``(path, leaf)`` pairs. Paths start empty;
  an object key ``k`` appends ``.k`` when ``k`` matches ``[A-Za-z_][A-Za-z0-9_]*`` and
  ``["k"]`` (JSON-escaped) otherwise; an array index ``i`` appends ``[i]``; a leading ``.`` is
  dropped. So ``{"a": {"b": 1}, "items": [{"name": "x"}]}`` gives ``a.b -> 1`` and
  ``items[0].name -> "x"``. Leaves are scalars (string, number, bool, null) and *empty*
  objects/arrays (so ``{"a": []}`` has the field ``a -> []``); a scalar document is the single
  field ``"" -> value``. Leaves are compared by their canonical JSON text.
- field precision/recall/F1 are micro-averaged over the whole set: TP = pairs present in both
  pred and ref, summed over examples; precision = TP / predicted pairs, recall = TP / reference
  pairs, F1 = their harmonic mean. Invalid JSON contributes no predicted pairs. A zero
  denominator gives 1.0 when the other side is also empty (nothing to find, nothing claimed)
  and 0.0 otherwise; F1 is 0.0 when precision + recall is 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from parsetune.tasks.json_form import canonical_json, loads_strict, make_validator

_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MISSING = object()


@dataclass(frozen=True)
class JsonExampleScore:
    """Scores of one prediction: validity, schema adherence (None without a schema), exact
    match, and the field counts (true positives, predicted pairs, reference pairs)."""

    valid_json: bool
    schema_valid: bool | None
    exact_match: bool
    true_positives: int
    n_pred_fields: int
    n_ref_fields: int
    error: str | None


@dataclass(frozen=True)
class JsonMetrics:
    """Aggregate JSON scores over ``n`` examples; ``schema_adherence_rate`` is None when no
    schema was given. Field precision/recall/F1 are micro-averaged (see module docstring)."""

    n: int
    valid_json_rate: float
    schema_adherence_rate: float | None
    field_precision: float
    field_recall: float
    field_f1: float
    exact_match: float


def _key_segment(key: str) -> str:
    return f".{key}" if _SIMPLE_KEY.match(key) else f"[{json.dumps(key, ensure_ascii=False)}]"


def flatten(value: Any) -> dict[str, str]:
    """Flatten a parsed JSON value into ``{path: canonical leaf text}`` (module docstring)."""
    out: dict[str, str] = {}

    def walk(v: Any, path: str) -> None:
        if isinstance(v, dict) and v:
            for k, child in v.items():
                walk(child, path + _key_segment(str(k)))
        elif isinstance(v, (list, tuple)) and v:
            for i, child in enumerate(v):
                walk(child, f"{path}[{i}]")
        else:
            out[path[1:] if path.startswith(".") else path] = canonical_json(v)

    walk(value, "")
    return out


def parse_json(text: Any) -> tuple[Any, str | None]:
    """Parse prediction text; returns ``(value, None)`` or ``(_MISSING, reason)``. Never raises."""
    if not isinstance(text, str):
        return _MISSING, f"not a string: {type(text).__name__}"
    try:
        return loads_strict(text.strip()), None
    except (ValueError, RecursionError) as exc:
        return _MISSING, f"invalid JSON: {str(exc)[:80]}"


def score_json_example(prediction: Any, reference: Any, validator: Any | None = None) -> JsonExampleScore:
    """Score one prediction string against an already-parsed reference JSON value.

    ``validator`` is a ``jsonschema`` validator instance (e.g. from ``make_validator``) or None.
    """
    ref_fields = flatten(reference)
    pred, error = parse_json(prediction)
    if pred is _MISSING:
        return JsonExampleScore(False, False if validator is not None else None, False, 0, 0, len(ref_fields), error)
    schema_valid: bool | None = None
    if validator is not None:
        try:
            schema_valid = bool(validator.is_valid(pred))
        except Exception:  # a pathological instance must not crash scoring
            schema_valid = False
    try:
        pred_fields = flatten(pred)
        exact = canonical_json(pred) == canonical_json(reference)
    except (ValueError, RecursionError) as exc:
        return JsonExampleScore(True, schema_valid, False, 0, 0, len(ref_fields), f"unscorable JSON: {exc}"[:100])
    tp = sum(1 for path, leaf in pred_fields.items() if ref_fields.get(path) == leaf)
    return JsonExampleScore(True, schema_valid, exact, tp, len(pred_fields), len(ref_fields), None)


def _ratio(num: int, den: int, other_side: int) -> float:
    if den:
        return num / den
    return 1.0 if other_side == 0 else 0.0


def aggregate_json(scores: Sequence[JsonExampleScore], with_schema: bool) -> JsonMetrics:
    """Aggregate per-example scores (rates are 0.0 when there are no examples)."""
    n = len(scores)

    def rate(flags: Sequence[bool]) -> float:
        return sum(flags) / n if n else 0.0

    tp = sum(s.true_positives for s in scores)
    n_pred = sum(s.n_pred_fields for s in scores)
    n_ref = sum(s.n_ref_fields for s in scores)
    precision = _ratio(tp, n_pred, n_ref)
    recall = _ratio(tp, n_ref, n_pred)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return JsonMetrics(
        n=n,
        valid_json_rate=rate([s.valid_json for s in scores]),
        schema_adherence_rate=rate([bool(s.schema_valid) for s in scores]) if with_schema else None,
        field_precision=precision,
        field_recall=recall,
        field_f1=f1,
        exact_match=rate([s.exact_match for s in scores]),
    )


def score_json_all(
    predictions: Sequence[Any], references: Sequence[Any], schema: dict[str, Any] | None = None
) -> tuple[list[JsonExampleScore], JsonMetrics]:
    """Score aligned predictions (strings) and parsed references; ValueError on length mismatch."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    validator = make_validator(schema) if schema is not None else None
    scores = [score_json_example(p, r, validator) for p, r in zip(predictions, references)]
    return scores, aggregate_json(scores, with_schema=schema is not None)


def per_field(predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per top-level key of the (object) references, in first-seen order: ``n`` references with the
    key, ``predicted`` (valid object predictions with it), ``correct`` (both, same canonical value),
    ``precision`` = correct / predicted (None when never predicted) and ``recall`` = correct / n.
    Keys only predictions have come last, with n 0. Never raises on predictions."""
    counts: dict[str, list[int]] = {}
    for reference in references:  # the references' keys first, in first-seen order
        for key in reference if isinstance(reference, dict) else {}:
            counts.setdefault(str(key), [0, 0, 0])[0] += 1
    for prediction, reference in zip(predictions, references):
        ref = reference if isinstance(reference, dict) else {}
        pred, _ = parse_json(prediction)
        pred = pred if isinstance(pred, dict) else {}
        for key, value in pred.items():
            row = counts.setdefault(str(key), [0, 0, 0])
            row[1] += 1
            try:
                row[2] += key in ref and canonical_json(value) == canonical_json(ref[key])
            except (ValueError, RecursionError):
                pass
    return {
        key: {"n": n, "predicted": p, "correct": c, "precision": c / p if p else None, "recall": c / n if n else None}
        for key, (n, p, c) in counts.items()
    }
