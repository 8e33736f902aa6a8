"""The one parser for ViGGO meaning representations (MRs), shared by data prep and eval.

A ViGGO MR looks like ``inform(name[BioShock], release_year[2007], esrb[M (for Mature)])``:
a dialogue-act *function* followed by ``attribute[value]`` pairs in parentheses. Values may be
empty (``request_attribute(esrb[])``) and may contain spaces, commas, parentheses, slashes and
colons, but never square brackets.

``parse_mr`` never raises. It extracts as much as it can from malformed text (model output may be
truncated or chatty) and says, in ``valid``/``error``, whether the text was a well-formed MR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUNCTIONS: tuple[str, ...] = (
    "inform",
    "request",
    "give_opinion",
    "confirm",
    "verify_attribute",
    "suggest",
    "request_explanation",
    "recommend",
    "request_attribute",
)
"""The 9 ViGGO dialogue acts."""

ATTRIBUTES: tuple[str, ...] = (
    "name",
    "exp_release_date",
    "release_year",
    "developer",
    "esrb",
    "rating",
    "genres",
    "player_perspective",
    "has_multiplayer",
    "platforms",
    "available_on_steam",
    "has_linux_release",
    "has_mac_release",
    "specifier",
)
"""The 14 ViGGO attributes in the order they appear in every MR of the train and validation
splits (``exp_release_date`` and ``release_year`` never co-occur; the former is put first)."""

EMPTY = "empty"
"""Sentinel function: the text was blank (nothing produced)."""
OTHER = "other"
"""Sentinel function: no parseable function, or a function not in ``FUNCTIONS``."""

_WS_RE = re.compile(r"\s+")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Lenient extraction: every closed ``name[value]`` with no brackets inside the value.
_PAIR_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\[([^\[\]]*)\]")


@dataclass(frozen=True)
class MeaningRepresentation:
    """A parsed (or best-effort parsed) ViGGO MR.

    function: a member of ``FUNCTIONS`` (lowercased), or ``"empty"`` / ``"other"``.
    attributes: the ``(name, value)`` pairs in textual order; names lowercased, values stripped of
        surrounding whitespace but otherwise as written. Duplicates and unknown names are kept.
    valid: True only for a well-formed ``fn(attr[value], ...)`` with a known function, known and
        non-repeated attribute names, and nothing but whitespace around it.
    error: a short human-readable reason when ``valid`` is False, else None.
    """

    function: str
    attributes: tuple[tuple[str, str], ...]
    valid: bool
    error: str | None


def normalize(text: str) -> str:
    """Lowercase, strip, and collapse runs of whitespace to one space (the comparison key)."""
    return _WS_RE.sub(" ", text).strip().lower()


def collapse_ws(text: str) -> str:
    """Strip and collapse runs of whitespace to one space, keeping case (for exact match)."""
    return _WS_RE.sub(" ", text).strip()


def format_mr(function: str, attributes: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """Render ``function`` and ``(name, value)`` pairs in the canonical ViGGO text form."""
    body = ", ".join(f"{name}[{value}]" for name, value in attributes)
    return f"{function}({body})"


def _extract_pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((m.group(1).lower(), m.group(2).strip()) for m in _PAIR_RE.finditer(text))


def _syntax_error(body: str) -> str | None:
    """Check ``body`` (the text after the first '(') against ``pair (',' pair)* ')' ws*``.

    Returns the first problem found, or None when well-formed.
    """
    pos = 0
    n = len(body)

    def skip_ws(p: int) -> int:
        while p < n and body[p].isspace():
            p += 1
        return p

    pos = skip_ws(pos)
    if pos < n and body[pos] == ")":
        pos += 1
    else:
        while True:
            pos = skip_ws(pos)
            m = _NAME_RE.match(body, pos)
            if m is None:
                if pos >= n:
                    return "missing ')'"
                return f"expected an attribute name at {body[pos:pos + 12]!r}"
            name = m.group(0)
            pos = skip_ws(m.end())
            if pos >= n or body[pos] != "[":
                return f"missing '[' after attribute {name!r}"
            close = body.find("]", pos + 1)
            if close == -1:
                return f"unclosed '[' in attribute {name!r}"
            if "[" in body[pos + 1 : close]:
                return f"nested '[' in attribute {name!r}"
            pos = skip_ws(close + 1)
            if pos >= n:
                return "missing ')'"
            if body[pos] == ",":
                pos += 1
                continue
            if body[pos] == ")":
                pos += 1
                break
            return f"expected ',' or ')' after attribute {name!r}"
    rest = body[pos:].strip()
    if rest:
        return f"unexpected text after ')': {rest[:20]!r}"
    return None


def parse_mr(text: str) -> MeaningRepresentation:
    """Parse a ViGGO MR; never raises (non-str input counts as malformed text).

    Function name = the text before the first '(' (case-insensitive); attributes = every closed
    ``name[value]`` pair after it (or anywhere, when there is no '('). An unclosed trailing pair
    (truncated output) is dropped.
    """
    if not isinstance(text, str):
        return MeaningRepresentation(OTHER, (), False, f"not a string: {type(text).__name__}")
    if not text.strip():
        return MeaningRepresentation(EMPTY, (), False, "empty text")

    paren = text.find("(")
    if paren == -1:
        return MeaningRepresentation(OTHER, _extract_pairs(text), False, "missing '('")

    fn_raw = text[:paren].strip()
    fn = normalize(fn_raw)
    body = text[paren + 1 :]
    attributes = _extract_pairs(body)

    error: str | None = None
    if not fn_raw:
        error = "missing function name before '('"
    elif fn not in FUNCTIONS:
        error = f"unknown function {fn_raw[:40]!r}"
    if error is None:
        error = _syntax_error(body)
    if error is None:
        seen: set[str] = set()
        for name, _ in attributes:
            if name not in ATTRIBUTES:
                error = f"unknown attribute {name!r}"
                break
            if name in seen:
                error = f"duplicate attribute {name!r}"
                break
            seen.add(name)

    function = fn if fn in FUNCTIONS else OTHER
    return MeaningRepresentation(function, attributes, error is None, error)
