"""The one secret masker behind everything ``parsetune tpu`` prints.

A secret leaks in more shapes than its raw bytes: a job's log is relayed line by line, so a
multi-line secret (a PEM key, a service-account JSON) never appears whole on one line; a program
that logs a dict or a JSON document prints it escaped (``\\n``, ``\\"``, ``\\u00e9``); our own
progress lines escape control characters. :class:`Masker` therefore replaces, longest first and in
one pass (so a replacement never creates a new match):

- each secret value whole, and with CRLF line ends;
- its JSON-escaped forms (ASCII and not, and JSON inside JSON), its Python ``repr`` form, its
  ``unicode_escape`` form and the control-character escape of :func:`escape_controls`;
- for a multi-line secret, each of its lines (stripped, :data:`MIN_LINE_CHARS` or longer) in the
  same forms, so a line-by-line relay masks every line it sees.

Lines shorter than :data:`MIN_LINE_CHARS` (``{``, ``}``, a blank line) are left alone: they carry
next to nothing of the secret and masking them would blank innocent text everywhere. A whole value
is masked however short it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MASK = "****"
MIN_LINE_CHARS = 6


def escape_controls(text: str) -> str:
    """``text`` with every control character written as ``\\n``, ``\\x1b``, ... (other characters as they are)."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _json_inner(text: str, ensure_ascii: bool = True) -> str:
    return json.dumps(text, ensure_ascii=ensure_ascii)[1:-1]


def escaped_forms(value: str) -> set[str]:
    """``value`` and every escaped way a program is likely to print it."""
    forms = {
        value,
        value.replace("\r\n", "\n").replace("\n", "\r\n"),
        _json_inner(value),
        _json_inner(value, ensure_ascii=False),
        _json_inner(_json_inner(value)),  # a JSON string holding a JSON document holding the secret
        repr(value)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
        escape_controls(value),
    }
    return {form for form in forms if form}


def secret_lines(value: str) -> list[str]:
    """The lines of a multi-line ``value`` worth masking on their own (none for a one-line value)."""
    lines = value.splitlines()
    if len(lines) < 2:
        return []
    return [line.strip() for line in lines if len(line.strip()) >= MIN_LINE_CHARS]


class Masker:
    """Replaces every form of the given secret values (see the module docstring) by ``****``."""

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if not value:
                continue
            for part in (value, *secret_lines(value)):
                forms |= escaped_forms(part)
        ordered = sorted(forms, key=lambda f: (-len(f), f))  # longest first: no partial leak of a longer form
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text
