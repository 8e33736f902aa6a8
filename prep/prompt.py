"""Prompt rendering: an instruction, optional few-shot examples, then the query.

With the defaults a ViGGO prompt reads::

    Convert the sentence into a meaning representation of the form function(attribute[value], ...).

    Sentence: BioShock is a great first person shooter from 2007.
    Meaning representation:

and the model completes it with the MR. The query ends with a newline so the completion starts on a
clean token boundary.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from parsetune.errors import UserError
from prep.records import SourceExample

VIGGO_INSTRUCTION = (
    "Convert the sentence into a meaning representation of the form function(attribute[value], ...)."
)
VIGGO_QUERY = "Sentence: {text}\nMeaning representation:\n"
JSON_INSTRUCTION = "Extract the information in the text as a JSON object."
JSON_QUERY = "Text: {text}\nJSON:\n"


@dataclass(frozen=True)
class PromptTemplate:
    instruction: str
    query: str  # must contain "{text}"; the completion follows it directly

    def __post_init__(self) -> None:
        if "{text}" not in self.query:
            raise UserError(f"prompt query template must contain '{{text}}': {self.query!r}")
        try:
            self.query.format(text="")
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(
                f"prompt query template {self.query!r} has a placeholder other than {{text}} "
                f"(write literal braces as '{{{{' and '}}}}'): {err}"
            ) from err

    def render(self, text: str, shots: tuple[SourceExample, ...] = ()) -> str:
        parts = [self.instruction + "\n\n"] if self.instruction else []
        for shot in shots:
            parts.append(self.query.format(text=shot.text) + shot.target + "\n\n")
        parts.append(self.query.format(text=text))
        return "".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def pick_shots(pool: list[SourceExample], k: int, seed: int) -> tuple[SourceExample, ...]:
    """Choose ``k`` few-shot examples from ``pool`` deterministically (same seed, same shots)."""
    if k < 0:
        raise UserError(f"--few-shot must be >= 0, got {k}")
    if k > len(pool):
        raise UserError(f"--few-shot {k} asks for more examples than the train split has ({len(pool)})")
    return tuple(random.Random(seed).sample(pool, k))
