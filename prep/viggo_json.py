"""ViGGO as JSON: each meaning representation becomes a JSON object, with a JSON Schema learned from
the training split.

``inform(name[BioShock], release_year[2007], genres[shooter], has_mac_release[yes])`` becomes
``{"intent":"inform","name":"BioShock","release_year":2007,"genres":["shooter"],"has_mac_release":true}``:
``intent`` is the MR's function, then the attributes in ViGGO's canonical order
(``parsetune.tasks.viggo_mr.ATTRIBUTES``). How each attribute's value is written is decided from the
training split alone (``learn_types``), never from a list in code:

- **array**: the attribute is a list in training (``parsetune.tasks.viggo_values``: comma-separated
  items from a closed set; genres, platforms, player_perspective) -> an array of its items, at most
  as many as the longest training list (``maxItems``; llguidance cannot enforce ``uniqueItems``,
  and a short fine-tune otherwise repeats an item until the token budget ends);
- **boolean**: every training value is ``yes`` or ``no`` -> ``true`` / ``false``;
- **integer**: every training value is an integer (release_year) -> a number;
- **string** otherwise, with an ``enum`` of the training values when the attribute is *closed*
  (few distinct values: rating, esrb).

An empty value (``request_attribute(esrb[])``: the attribute asked about) becomes ``null``; the
schema allows ``null`` only for attributes that training shows empty.

The schema (``derive_schema``): an object with ``intent`` (required; an enum of the training
functions) and one property per training attribute in canonical order, ``additionalProperties:
false``. Targets are written compact in that order (``compact_json``), which is also the order a
schema-constrained decoder writes properties in. A value of a held-out split that the training
split's types cannot express (``release_year[unknown]``, a ``maybe`` flag) is a one-line error
naming file and line; a value the schema does not allow (an unseen genre) is caught by the check of
every target against the schema (``prep.prepare``).

The rows are ViGGO's (Juraska et al., 2019), CC BY-SA 4.0: the manifest carries the attribution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from parsetune.errors import UserError
from parsetune.tasks.json_form import compact_json
from parsetune.tasks.viggo_mr import ATTRIBUTES, FUNCTIONS, parse_mr
from parsetune.tasks.viggo_values import LIST_SEPARATOR, learn_value_sets
from prep.records import SourceExample

INTENT = "intent"
BOOLEAN_VALUES = {"yes": True, "no": False}
LICENSE = "ViGGO (Juraska et al., 2019), CC BY-SA 4.0; attribution and source: prep/data/viggo/README.md"
_INTEGER_RE = re.compile(r"-?[0-9]+\Z")


@dataclass(frozen=True)
class AttributeType:
    """How one attribute is written in JSON: ``string`` | ``integer`` | ``boolean`` | ``array``;
    ``values``: the closed set (string enum or array items), empty for free strings; ``nullable``:
    training shows it with an empty value."""

    type: str
    values: tuple[str, ...] = ()
    nullable: bool = False
    max_items: int = 0  # array: the longest training list

    def schema(self) -> dict[str, Any]:
        if self.type == "array":
            items: dict[str, Any] = {"enum": list(self.values)} if self.values else {"type": "string"}
            spec: dict[str, Any] = {"type": "array", "items": items, "minItems": 1, "maxItems": self.max_items}
        elif self.type == "string" and self.values:
            spec = {"enum": list(self.values)}
        else:
            spec = {"type": self.type}
        if not self.nullable:
            return spec
        if "enum" in spec:
            return {"enum": [*spec["enum"], None]}
        return {**spec, "type": [spec["type"], "null"]}


@dataclass(frozen=True)
class ViggoJsonTypes:
    """The intents and the JSON type of every attribute, learned from the training split."""

    intents: tuple[str, ...]
    attributes: dict[str, AttributeType]  # canonical order

    def schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {INTENT: {"enum": list(self.intents)}}
        properties.update({name: t.schema() for name, t in self.attributes.items()})
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "ViGGO meaning representation as JSON",
            "description": "Derived from the training split by `parsetune prep viggo-json` (prep/viggo_json.py).",
            "type": "object",
            "properties": properties,
            "required": [INTENT],
            "additionalProperties": False,
        }


def learn_types(train: Iterable[tuple[str, str]]) -> ViggoJsonTypes:
    """The JSON types from ``(sentence, MR)`` training pairs (module docstring)."""
    pairs = list(train)
    kinds = learn_value_sets(pairs)
    intents: set[str] = set()
    values: dict[str, list[str]] = {}
    empty: set[str] = set()
    for _, mr_text in pairs:
        mr = parse_mr(mr_text)
        intents.add(mr.function)
        for name, value in mr.attributes:
            values.setdefault(name, [])
            if value.strip():
                values[name].append(value)
            else:
                empty.add(name)
    attributes = {}
    for name in ATTRIBUTES:
        if name not in values:
            continue
        seen, learned = values[name], kinds.of(name)
        if learned.kind == "list":
            kind = AttributeType("array", learned.values, max_items=max(len(v.split(LIST_SEPARATOR)) for v in seen))
        elif seen and all(v in BOOLEAN_VALUES for v in seen):
            kind = AttributeType("boolean")
        elif seen and all(_INTEGER_RE.match(v) for v in seen):
            kind = AttributeType("integer")
        elif learned.kind == "closed":
            kind = AttributeType("string", learned.values)
        else:
            kind = AttributeType("string")
        attributes[name] = AttributeType(kind.type, kind.values, nullable=name in empty, max_items=kind.max_items)
    return ViggoJsonTypes(tuple(f for f in FUNCTIONS if f in intents), attributes)


def _value(name: str, value: str, kind: AttributeType | None, location: str) -> Any:
    if not value.strip():
        return None
    if kind is None or kind.type == "string":
        return value
    if kind.type == "array":
        return value.split(LIST_SEPARATOR)
    if kind.type == "boolean":
        if value not in BOOLEAN_VALUES:
            raise UserError(f"{location}: {name}[{value}] is not yes or no, as every training value of {name} is")
        return BOOLEAN_VALUES[value]
    if not _INTEGER_RE.match(value):
        raise UserError(f"{location}: {name}[{value}] is not an integer, as every training value of {name} is")
    return int(value)


def mr_to_json(mr_text: str, types: ViggoJsonTypes, location: str = "mr") -> dict[str, Any]:
    """The JSON object of one ViGGO MR: ``intent``, then the attributes in canonical order."""
    mr = parse_mr(mr_text)
    if not mr.valid:
        raise UserError(f"{location}: meaning representation does not parse ({mr.error}): {mr_text!r}")
    given = dict(mr.attributes)
    obj: dict[str, Any] = {INTENT: mr.function}
    for name in ATTRIBUTES:
        if name in given:
            obj[name] = _value(name, given[name], types.attributes.get(name), location)
    return obj


def to_json_examples(examples: list[SourceExample], types: ViggoJsonTypes) -> list[SourceExample]:
    """The same examples with each MR target replaced by its compact JSON object."""
    return [
        SourceExample(id=e.id, text=e.text, target=compact_json(mr_to_json(e.target, types, e.location)), location=e.location)
        for e in examples
    ]
