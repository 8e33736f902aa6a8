"""ViGGO scores: per-example, aggregate, per-function, per-attribute, and the confusion matrix.

Definitions (DESIGN.md §2, "ViGGO metric definitions"). Function names, attribute names and
attribute values are compared case-insensitively after collapsing whitespace (``normalize``).

- function match: pred function == ref function (``empty``/``other`` never match a real function).
- attribute-set match: set(pred attribute names) == set(ref attribute names).
- attribute-value fraction: (ref attributes whose pred value equals the ref value) / (number of
  ref attributes); 1.0 when the reference has no attributes. If the prediction repeats an
  attribute, its first occurrence counts.
- overall: mean of the three above.
- exact match: pred == ref after stripping and collapsing whitespace, case-sensitive.
- valid: the prediction is a well-formed MR (``MeaningRepresentation.valid``).

Aggregates are means over examples; with no examples every rate is 0.0 and ``n`` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parsetune.tasks.viggo_mr import (
    ATTRIBUTES,
    EMPTY,
    FUNCTIONS,
    OTHER,
    MeaningRepresentation,
    collapse_ws,
    normalize,
    parse_mr,
)

CONFUSION_COLUMNS: tuple[str, ...] = FUNCTIONS + (EMPTY, OTHER)
"""Confusion-matrix columns: the 9 functions, then ``empty`` and ``other``."""


@dataclass(frozen=True)
class ExampleScore:
    """Scores of one prediction against its reference.

    ref_function / pred_function: parsed function names (pred may be ``empty``/``other``).
    function_match, attribute_set_match, exact_match, valid: the per-example indicators.
    attribute_value_fraction: fraction of ref attributes reproduced with the right value.
    overall: mean of function_match, attribute_set_match and attribute_value_fraction.
    ref_attributes: for each ref attribute, ``(name, present in pred, pred value matches)``.
    pred_error: the parser's reason when the prediction is not valid, else None.
    """

    ref_function: str
    pred_function: str
    function_match: bool
    attribute_set_match: bool
    attribute_value_fraction: float
    overall: float
    exact_match: bool
    valid: bool
    ref_attributes: tuple[tuple[str, bool, bool], ...]
    pred_error: str | None
    pred_attributes: tuple[str, ...] = ()  # normalized names of the predicted attributes


@dataclass(frozen=True)
class Accuracies:
    """Mean scores over a group of ``n`` examples (all rates in [0, 1])."""

    n: int
    function_name_accuracy: float
    attribute_set_accuracy: float
    attribute_value_accuracy: float
    overall_accuracy: float
    exact_match: float
    valid_rate: float


@dataclass(frozen=True)
class AttributeStats:
    """For one attribute: over the ``n`` references that contain it, how often the prediction
    had it at all (``presence_rate``, i.e. recall) and with the right value (``value_accuracy``);
    ``predicted``: predictions that contain it, ``precision``: the share of those whose reference
    has it too (1.0 when never predicted)."""

    n: int
    presence_rate: float
    value_accuracy: float
    predicted: int = 0
    precision: float = 1.0

    @property
    def recall(self) -> float:
        return self.presence_rate


@dataclass(frozen=True)
class ViggoMetrics:
    """Aggregate ViGGO scores.

    The first seven fields are the overall means (``Accuracies`` fields); ``per_function`` maps
    each reference function that occurs to its ``Accuracies``; ``per_attribute`` maps each
    reference attribute that occurs to its ``AttributeStats``. Both are in canonical order.
    """

    n: int
    function_name_accuracy: float
    attribute_set_accuracy: float
    attribute_value_accuracy: float
    overall_accuracy: float
    exact_match: float
    valid_rate: float
    per_function: dict[str, Accuracies]
    per_attribute: dict[str, AttributeStats]


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts: ``counts[i][j]`` = examples whose reference function is ``rows[i]`` and whose
    predicted function is ``columns[j]``. References whose function is not one of the 9 are not
    counted."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]


def value_map(mr: MeaningRepresentation) -> dict[str, str]:
    """Attribute name -> normalized value, first occurrence wins."""
    out: dict[str, str] = {}
    for name, value in mr.attributes:
        out.setdefault(normalize(name), normalize(value))
    return out


def score_example(prediction: str, reference: str) -> ExampleScore:
    """Score one prediction string against one reference MR string. Never raises."""
    pred = parse_mr(prediction)
    ref = parse_mr(reference)
    pred_values = value_map(pred)
    ref_values = value_map(ref)

    function_match = pred.function == ref.function and ref.function not in (EMPTY, OTHER)
    set_match = set(pred_values) == set(ref_values)
    hits = tuple(
        (name, name in pred_values, pred_values.get(name) == value) for name, value in ref_values.items()
    )
    value_fraction = sum(hit for _, _, hit in hits) / len(hits) if hits else 1.0
    overall = (float(function_match) + float(set_match) + value_fraction) / 3.0
    exact = isinstance(prediction, str) and collapse_ws(prediction) == collapse_ws(reference)
    return ExampleScore(
        ref_function=ref.function,
        pred_function=pred.function,
        function_match=function_match,
        attribute_set_match=set_match,
        attribute_value_fraction=value_fraction,
        overall=overall,
        exact_match=exact,
        valid=pred.valid,
        ref_attributes=hits,
        pred_error=pred.error,
        pred_attributes=tuple(pred_values),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def accuracies(scores: Sequence[ExampleScore]) -> Accuracies:
    """Mean scores over ``scores`` (0.0 rates when empty)."""
    fn = _mean([float(s.function_match) for s in scores])
    aset = _mean([float(s.attribute_set_match) for s in scores])
    aval = _mean([s.attribute_value_fraction for s in scores])
    return Accuracies(
        n=len(scores),
        function_name_accuracy=fn,
        attribute_set_accuracy=aset,
        attribute_value_accuracy=aval,
        overall_accuracy=(fn + aset + aval) / 3.0,
        exact_match=_mean([float(s.exact_match) for s in scores]),
        valid_rate=_mean([float(s.valid) for s in scores]),
    )


def _ordered(keys: set[str], canonical: Sequence[str]) -> list[str]:
    known = [k for k in canonical if k in keys]
    return known + sorted(keys - set(canonical))


def aggregate(scores: Sequence[ExampleScore]) -> ViggoMetrics:
    """Aggregate per-example scores into ``ViggoMetrics`` with per-function/attribute breakdowns."""
    total = accuracies(scores)

    by_fn: dict[str, list[ExampleScore]] = {}
    for s in scores:
        by_fn.setdefault(s.ref_function, []).append(s)
    per_function = {f: accuracies(by_fn[f]) for f in _ordered(set(by_fn), FUNCTIONS)}

    by_attr: dict[str, list[tuple[bool, bool]]] = {}
    predicted: dict[str, list[bool]] = {}  # per predicted attribute: does the reference have it?
    for s in scores:
        for name, present, hit in s.ref_attributes:
            by_attr.setdefault(name, []).append((hit, present))
        ref_names = {name for name, _, _ in s.ref_attributes}
        for name in s.pred_attributes:
            predicted.setdefault(name, []).append(name in ref_names)
    per_attribute: dict[str, AttributeStats] = {}
    for name in _ordered(set(by_attr) | set(predicted), ATTRIBUTES):
        rows = by_attr.get(name, [])
        guesses = predicted.get(name, [])
        per_attribute[name] = AttributeStats(
            n=len(rows),
            presence_rate=_mean([float(p) for _, p in rows]),
            value_accuracy=_mean([float(h) for h, _ in rows]),
            predicted=len(guesses),
            precision=_mean([float(g) for g in guesses]) if guesses else 1.0,
        )

    return ViggoMetrics(
        n=total.n,
        function_name_accuracy=total.function_name_accuracy,
        attribute_set_accuracy=total.attribute_set_accuracy,
        attribute_value_accuracy=total.attribute_value_accuracy,
        overall_accuracy=total.overall_accuracy,
        exact_match=total.exact_match,
        valid_rate=total.valid_rate,
        per_function=per_function,
        per_attribute=per_attribute,
    )


def confusion_matrix(scores: Sequence[ExampleScore]) -> ConfusionMatrix:
    """Reference function (rows, the 9 functions) x predicted function (9 + empty + other)."""
    counts = [[0] * len(CONFUSION_COLUMNS) for _ in FUNCTIONS]
    for s in scores:
        if s.ref_function in FUNCTIONS:
            counts[FUNCTIONS.index(s.ref_function)][CONFUSION_COLUMNS.index(s.pred_function)] += 1
    return ConfusionMatrix(FUNCTIONS, CONFUSION_COLUMNS, tuple(tuple(r) for r in counts))


def score_all(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[ExampleScore], ViggoMetrics, ConfusionMatrix]:
    """Score aligned lists of predictions and references (same length, else ValueError)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scores = [score_example(p, r) for p, r in zip(predictions, references)]
    return scores, aggregate(scores), confusion_matrix(scores)
