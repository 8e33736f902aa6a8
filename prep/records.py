"""Source examples as prep reads them, before rendering into prepared records
(``parsetune.records.PreparedRecord``, the contract shared with training and eval)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceExample:
    """One example read from a source file, with where it came from (for error messages)."""

    id: str
    text: str  # the natural-language side (ViGGO utterance, free text to extract from)
    target: str  # the structured side, exactly as it must be produced
    location: str  # "file:line" or "dataset[split]:row" of the example
