"""Which values each ViGGO attribute may take, learned from the training split.

ViGGO attributes come in kinds that a parser can exploit:

- **copy**: the value is written in the sentence (``name``, ``developer``, ``specifier``, ...);
  almost every training value is a *span* of its sentence: a run of consecutive units (``\\w+``
  words and single punctuation marks) with the text between them as written. ``max_units`` is the
  longest training value in units.
- **closed**: one of a few values (``rating``, ``esrb``, the yes/no flags): every value seen in
  training.
- **list**: comma-separated items from a closed set (``genres``, ``platforms``, ...). When no
  training list repeats an item and every pair of items that occur together always comes in the
  same order, the list is **ordered**: ``values`` holds the items in an order consistent with every
  training list, and a list may only name items in that order, each at most once.
- **free**: anything else (no brackets); also every attribute the training split never shows.

``learn_value_sets`` decides the kind of each attribute from the data alone (thresholds below), so
nothing about ViGGO's vocabulary lives in code. Prep writes the result into the prepared data's
``manifest.json`` (key ``viggo_values``); the constrained decoder reads it back
(``eval.constrained.viggo_lark``) to let each copied attribute take only a span of *that* example's
sentence, and each closed attribute only a value seen in training.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from parsetune.tasks.viggo_mr import ATTRIBUTES, parse_mr

KINDS = ("copy", "closed", "list", "free")
COPY_MIN_RATE = 0.95  # share of an attribute's training values that are spans of their sentence
CLOSED_MAX_DISTINCT_RATE = 0.2  # distinct values (or list items) per occurrence, at most
LIST_SEPARATOR = ", "
MANIFEST_KEY = "viggo_values"

_UNIT_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class AttributeValues:
    kind: str  # one of KINDS
    values: tuple[str, ...] = ()  # closed: the values; list: the items
    max_units: int = 0  # copy: the longest value, in units
    copy_rate: float = 0.0  # share of training values that were spans of their sentence (measured)
    seen: int = 0  # training occurrences with a non-empty value
    ordered: bool = False  # list: items only in the order of ``values``, none repeated

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "seen": self.seen, "copy_rate": self.copy_rate}
        if self.kind == "copy":
            data["max_units"] = self.max_units
        if self.kind in ("closed", "list"):
            data["values"] = list(self.values)
        if self.kind == "list":
            data["ordered"] = self.ordered
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AttributeValues":
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown attribute kind {kind!r}; expected one of {', '.join(KINDS)}")
        return cls(
            kind=kind,
            values=tuple(str(v) for v in data.get("values", ())),
            max_units=int(data.get("max_units", 0)),
            copy_rate=float(data.get("copy_rate", 0.0)),
            seen=int(data.get("seen", 0)),
            ordered=bool(data.get("ordered", False)),
        )


@dataclass(frozen=True)
class ValueSets:
    """The kind (and values) of every ViGGO attribute; attributes not listed are free text."""

    attributes: dict[str, AttributeValues] = field(default_factory=dict)

    def of(self, attribute: str) -> AttributeValues:
        return self.attributes.get(attribute, AttributeValues("free"))

    def copied(self) -> tuple[str, ...]:
        return tuple(a for a, v in self.attributes.items() if v.kind == "copy")

    def without_grounding(self) -> "ValueSets":
        """The same sets with every copied attribute made free text (for measuring grounding)."""
        return ValueSets({a: v for a, v in self.attributes.items() if v.kind != "copy"})

    def to_json(self) -> dict[str, Any]:
        return {name: self.attributes[name].to_json() for name in ATTRIBUTES if name in self.attributes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ValueSets":
        unknown = sorted(set(data) - set(ATTRIBUTES))
        if unknown:
            raise ValueError(f"unknown ViGGO attribute(s) {', '.join(unknown)}")
        return cls({name: AttributeValues.from_json(spec) for name, spec in data.items()})


def units(text: str) -> list[re.Match[str]]:
    return list(_UNIT_RE.finditer(text))


def unit_count(text: str) -> int:
    return len(_UNIT_RE.findall(text))


def sentence_spans(sentence: str, max_units: int) -> list[str]:
    """Every span of at most ``max_units`` consecutive units of ``sentence``, as written (text between
    units kept), without brackets or line breaks, deduplicated in first-seen order."""
    found = units(sentence)
    spans: dict[str, None] = {}
    for i, first in enumerate(found):
        for last in found[i : i + max_units]:
            span = sentence[first.start() : last.end()]
            if "[" in span or "]" in span or "\n" in span:
                break
            spans.setdefault(span, None)
    return list(spans)


def is_span(value: str, sentence: str) -> bool:
    return value in sentence_spans(sentence, unit_count(value)) if value else False


def learn_value_sets(examples: Iterable[tuple[str, str]]) -> ValueSets:
    """Decide every attribute's kind from ``(sentence, meaning representation)`` training pairs."""
    occurrences: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for sentence, mr_text in examples:
        for name, value in parse_mr(mr_text).attributes:
            if name in ATTRIBUTES and value.strip():
                occurrences[name].append((sentence, value))
    learned: dict[str, AttributeValues] = {}
    for name in ATTRIBUTES:
        pairs = occurrences.get(name)
        if not pairs:
            continue
        seen = len(pairs)
        spans = [value for sentence, value in pairs if is_span(value, sentence)]
        copy_rate = round(len(spans) / seen, 4)
        if copy_rate >= COPY_MIN_RATE:
            learned[name] = AttributeValues("copy", max_units=max(unit_count(v) for v in spans), copy_rate=copy_rate, seen=seen)
            continue
        values = Counter(value for _, value in pairs)
        items = Counter(item for value in values.elements() for item in value.split(LIST_SEPARATOR))
        if len(items) < len(values) and len(items) <= CLOSED_MAX_DISTINCT_RATE * seen:
            order = item_order([value.split(LIST_SEPARATOR) for _, value in pairs])
            listed = order if order is not None else tuple(sorted(items))
            learned[name] = AttributeValues("list", listed, copy_rate=copy_rate, seen=seen, ordered=order is not None)
        elif len(values) <= CLOSED_MAX_DISTINCT_RATE * seen:
            learned[name] = AttributeValues("closed", tuple(sorted(values)), copy_rate=copy_rate, seen=seen)
        else:
            learned[name] = AttributeValues("free", copy_rate=copy_rate, seen=seen)
    return ValueSets(learned)


def item_order(lists: list[list[str]]) -> tuple[str, ...] | None:
    """One order of all items consistent with every list (each item at most once per list, and two
    items always in the same order when they meet); ``None`` when the lists admit none. Items never
    seen together keep the order of their first appearance."""
    first_seen: dict[str, int] = {}
    after: dict[str, set[str]] = defaultdict(set)
    for items in lists:
        if len(set(items)) < len(items):
            return None
        for i, item in enumerate(items):
            first_seen.setdefault(item, len(first_seen))
            after[item].update(items[i + 1 :])
    if any(a in after[b] for a in first_seen for b in after[a]):
        return None
    order: list[str] = []
    waiting = {item: sum(item in after[other] for other in first_seen) for item in first_seen}
    while waiting:
        ready = [item for item, count in waiting.items() if count == 0]
        if not ready:  # a longer cycle
            return None
        item = min(ready, key=first_seen.__getitem__)
        order.append(item)
        del waiting[item]
        for later in after[item]:
            if later in waiting:
                waiting[later] -= 1
    return tuple(order)


def sentence_of(prompt: str, query_template: str) -> str:
    """The example's own text inside a rendered prompt: what ``{text}`` became in the last
    occurrence of the query template (few-shot prompts hold earlier examples); the whole prompt when
    the template is not found."""
    prefix, _, suffix = query_template.partition("{text}")
    begin = prompt.rfind(prefix) if prefix else 0
    if begin < 0:
        return prompt
    begin += len(prefix)
    end = prompt.find(suffix, begin) if suffix else len(prompt)
    return prompt[begin:end] if end >= begin else prompt[begin:]


@dataclass(frozen=True)
class Grounding:
    """What a prepared ViGGO set's manifest says about values: the learned sets and the prompt's
    query template (to find each example's sentence in its prompt)."""

    values: ValueSets
    query_template: str

    def sentence(self, prompt: str) -> str:
        return sentence_of(prompt, self.query_template)


def read_grounding(data_path: str) -> Grounding | None:
    """The grounding of the prepared split file ``data_path`` (from ``manifest.json`` beside it);
    ``None`` when there is no manifest or it has no learned value sets (e.g. prepared before they
    were added, or not a ViGGO set)."""
    from parsetune.errors import UserError
    from parsetune.manifest import manifest_beside

    manifest, manifest_path = manifest_beside(data_path)
    if manifest is None or MANIFEST_KEY not in manifest:
        return None
    try:
        values = ValueSets.from_json(manifest[MANIFEST_KEY])
        query = manifest["prompt"]["query"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{manifest_path}: bad {MANIFEST_KEY!r} section ({err})") from None
    return Grounding(values, str(query))
