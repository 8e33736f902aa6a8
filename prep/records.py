"""The prepared-data contract: one JSONL object per example with ``id``, ``input``, ``output``.

``input`` is the full prompt given to the model; ``output`` is the exact target completion
(no EOS text). See README "Prepared data".
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceExample:
    """One example read from a source file, with where it came from (for error messages)."""

    id: str
    text: str  # the natural-language side (ViGGO utterance, free text to extract from)
    target: str  # the structured side, exactly as it must be produced
    location: str  # "file:line" or "dataset[split]:row" of the example


@dataclass(frozen=True)
class PreparedRecord:
    id: str
    input: str
    output: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "input": self.input, "output": self.output}, ensure_ascii=False)


def records_to_jsonl(records: list[PreparedRecord]) -> bytes:
    return "".join(r.to_json() + "\n" for r in records).encode("utf-8")
