"""What went wrong in the ViGGO predictions that are not exact matches, grouped into kinds.

Every miss gets one or more kinds (an example can have a wrong value *and* a missing attribute):

- ``invalid MR``: the prediction does not parse as a well-formed MR;
- ``wrong function``: another dialogue act;
- ``missing <attribute>`` / ``extra <attribute>``: the attribute is in only one of the two;
- ``wrong value of <attribute>``: both have it, the values differ (case-insensitively);
- ``same content, other text``: none of the above, yet not an exact match (case, spacing, order).

``top_error_kinds`` counts the examples of each kind and keeps the ``k`` largest, each with its
first ``examples`` examples (sentence, reference, prediction and what differs), for the report.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from eval.viggo_metrics import value_map
from parsetune.tasks.viggo_mr import collapse_ws, normalize, parse_mr


@dataclass(frozen=True)
class ErrorExample:
    id: str
    input: str
    reference: str
    prediction: str
    detail: str  # what differs, for this kind


@dataclass(frozen=True)
class ErrorKind:
    kind: str
    count: int  # examples with this kind of error
    examples: tuple[ErrorExample, ...]

    def to_json(self) -> dict:
        return {"kind": self.kind, "count": self.count, "examples": [vars(e) for e in self.examples]}


def _as_written(mr) -> dict[str, str]:
    """normalized name -> the value as written (first occurrence, as ``value_map`` counts it)."""
    return {normalize(name): value for name, value in reversed(mr.attributes)}


def classify(prediction: str, reference: str) -> list[tuple[str, str]]:
    """``(kind, detail)`` for every way ``prediction`` differs from ``reference``; empty when exact."""
    if collapse_ws(prediction) == collapse_ws(reference):
        return []
    pred, ref = parse_mr(prediction), parse_mr(reference)
    kinds: list[tuple[str, str]] = []
    if not pred.valid:
        kinds.append(("invalid MR", pred.error or "not well-formed"))
    if pred.function != ref.function:
        kinds.append(("wrong function", f"{ref.function} → {pred.function}"))
    pred_values, ref_values = value_map(pred), value_map(ref)  # compared as the metrics compare them
    pred_written, ref_written = _as_written(pred), _as_written(ref)
    for name, value in ref_values.items():
        if name not in pred_values:
            kinds.append((f"missing {name}", f"{name}[{ref_written[name]}] left out"))
        elif pred_values[name] != value:
            kinds.append((f"wrong value of {name}", f"{name}[{pred_written[name]}] instead of [{ref_written[name]}]"))
    for name in (n for n in pred_values if n not in ref_values):
        kinds.append((f"extra {name}", f"{name}[{pred_written[name]}] added"))
    return kinds or [("same content, other text", "differs only in case, spacing or order")]


def top_error_kinds(rows: Iterable[tuple[str, str, str, str]], k: int = 5, examples: int = 2) -> list[ErrorKind]:
    """The ``k`` most frequent kinds over ``(id, input, reference, prediction)`` rows, largest first
    (ties by name), each with its first ``examples`` examples in input order."""
    counts: dict[str, int] = defaultdict(int)
    kept: dict[str, list[ErrorExample]] = defaultdict(list)
    for rid, text, reference, prediction in rows:
        seen: set[str] = set()
        for kind, detail in classify(prediction, reference):
            if kind in seen:
                continue
            seen.add(kind)
            counts[kind] += 1
            if len(kept[kind]) < examples:
                kept[kind].append(ErrorExample(rid, text, reference, prediction, detail))
    ranked = sorted(counts, key=lambda kind: (-counts[kind], kind))[:k]
    return [ErrorKind(kind, counts[kind], tuple(kept[kind])) for kind in ranked]
