"""Grammar-constrained decoding with llguidance: ViGGO MRs or a JSON Schema, via numpy bit masks.

``viggo_lark()`` is a Lark grammar accepting exactly the well-formed ViGGO MRs: one of the 9
functions, then any subset of the 14 attributes in the canonical order of ``parsetune.tasks.viggo_mr``
(``, `` between them), with the closed value sets seen in the ViGGO data (ratings, ESRB ratings,
yes/no flags, comma-separated genres, platforms and perspectives) and bracket-free free text for
names, developers, specifiers, dates and years. Every value may be empty (``esrb[]``). After the
closing ``)`` only EOS is allowed.

``GrammarConstraint`` implements ``eval.decoding.TokenConstraint``: one ``LLMatcher`` per batch row.
Near the token budget (the last ``finish_window`` tokens) it steers each row towards closing: when
the grammar allows a token made only of closing characters (``])`` for ViGGO, ``"]}`` for JSON) or
EOS, only those are allowed, so a long free-text value does not leave the MR unfinished at
``max_new_tokens``. Otherwise the plain grammar mask applies (e.g. to finish a closed value).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from parsetune.tasks.viggo_mr import ATTRIBUTES, FUNCTIONS
from parsetune import storage
from parsetune.errors import UserError

CONSTRAINTS: tuple[str, ...] = ("viggo", "json-schema")

# Closed value sets: every value of the bundled ViGGO train split (validation is a subset).
CLOSED_VALUES: dict[str, tuple[str, ...]] = {
    "esrb": ("E (for Everyone)", "E 10+ (for Everyone 10 and Older)", "T (for Teen)", "M (for Mature)"),
    "rating": ("excellent", "good", "average", "poor"),
    "has_multiplayer": ("yes", "no"),
    "available_on_steam": ("yes", "no"),
    "has_linux_release": ("yes", "no"),
    "has_mac_release": ("yes", "no"),
}
LIST_VALUES: dict[str, tuple[str, ...]] = {
    "genres": (
        "action", "action-adventure", "adventure", "arcade", "driving/racing", "fighting",
        "hack-and-slash", "indie", "MMORPG", "music", "pinball", "platformer", "point-and-click",
        "puzzle", "real-time strategy", "role-playing", "shooter", "simulation", "sport", "strategy",
        "tactical", "text adventure", "trivia/board game", "turn-based strategy", "vehicular combat",
    ),  # fmt: skip
    "platforms": ("PlayStation", "Xbox", "PC", "Nintendo", "Nintendo Switch"),
    "player_perspective": ("first person", "third person", "side view", "bird view"),
}
FREE_TEXT = r"/[^\[\]\n]{1,80}/"
YEAR = r"/[0-9]{4}/"


def _alternatives(values: Sequence[str]) -> str:
    # longest first, so that e.g. "Nintendo Switch" is not read as "Nintendo" + garbage
    return " | ".join(json.dumps(v) for v in sorted(values, key=len, reverse=True))


def viggo_lark() -> str:
    """The Lark grammar (llguidance dialect) of well-formed ViGGO meaning representations."""
    lines = [
        "start: fn \"(\" attrs? \")\"",
        "fn: " + _alternatives(FUNCTIONS),
        "attrs: " + " | ".join(f"x{i}" for i in range(len(ATTRIBUTES))),
    ]
    for i, name in enumerate(ATTRIBUTES):
        later = " | ".join(f"x{j}" for j in range(i + 1, len(ATTRIBUTES)))
        tail = f" (\", \" ({later}))?" if later else ""
        lines.append(f"x{i}: \"{name}[\" v{i}? \"]\"{tail}")
        if name in CLOSED_VALUES:
            lines.append(f"v{i}: " + _alternatives(CLOSED_VALUES[name]))
        elif name in LIST_VALUES:
            lines.append(f"v{i}: item{i} (\", \" item{i})*")
            lines.append(f"item{i}: " + _alternatives(LIST_VALUES[name]))
        elif name == "release_year":
            lines.append(f"v{i}: {YEAR}")
        else:
            lines.append(f"v{i}: {FREE_TEXT}")
    return "\n".join(lines) + "\n"


def json_schema_grammar(schema_path: str) -> str:
    """An llguidance grammar for compact JSON (no free whitespace) matching the schema file."""
    import llguidance

    text = storage.read_text(schema_path)
    try:
        schema: Any = json.loads(text)
    except ValueError as err:
        raise UserError(f"{schema_path}: not valid JSON ({err})") from None
    if not isinstance(schema, dict):
        raise UserError(f"{schema_path}: a JSON Schema must be an object")
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


def _set_bit(mask_W: np.ndarray, token: int) -> None:
    mask_W[token // 32] |= np.uint32(1 << (token % 32)).view(np.int32)


def _closing_mask(lltok, vocab_size: int, closing: bytes, eos_ids: Sequence[int]) -> np.ndarray:
    """Bit mask of EOS and of the tokens whose bytes are all in ``closing``."""
    mask_W = np.zeros((vocab_size + 31) // 32, np.int32)
    for token in eos_ids:
        _set_bit(mask_W, token)
    if closing:
        allowed = set(closing)
        for token in range(min(vocab_size, lltok.vocab_size)):
            data = lltok.decode_bytes([token])
            if data and not lltok.is_special_token(token) and set(data) <= allowed:
                _set_bit(mask_W, token)
    return mask_W


def ll_tokenizer(hf_tokenizer, vocab_size: int, eos_ids: Sequence[int]):
    """An ``LLTokenizer`` for a fast HF tokenizer.

    llguidance only recognises byte-level BPE by a plain ``ByteLevel`` decoder; tokenizers converted
    from GGUF (our SmolLM2) have ``Sequence[ByteFallback, Fuse, Replace, ByteLevel]`` instead, and
    llguidance then reads ``Ġcombat`` as the UTF-8 of ``Ġ`` rather than a space, so the masks are
    wrong. Such a decoder is replaced by its ``ByteLevel`` part (decoding is unchanged for byte-level
    vocabularies, which have no ``<0x..>`` byte-fallback pieces).
    """
    import copy

    import llguidance

    backend = copy.copy(hf_tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    spec = json.loads(backend.to_str())
    decoder = spec.get("decoder") or {}
    if decoder.get("type") == "Sequence":
        byte_level = [d for d in decoder.get("decoders", []) if d.get("type") == "ByteLevel"]
        if byte_level:
            spec["decoder"] = byte_level[0]
    return llguidance.LLTokenizer(json.dumps(spec), n_vocab=vocab_size, eos_token=list(eos_ids))


class GrammarConstraint:
    """One llguidance matcher per batch row; masks follow the llguidance bit layout."""

    def __init__(
        self,
        hf_tokenizer,
        grammar: str,
        vocab_size: int,
        eos_ids: Sequence[int],
        closing_chars: str = "",
        finish_window: int = 16,
    ) -> None:
        import llguidance

        self._llg = llguidance
        self.tokenizer = ll_tokenizer(hf_tokenizer, vocab_size, eos_ids)
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise UserError(f"invalid constraint grammar: {error.splitlines()[0]}")
        self.grammar = grammar
        self.eos_ids = list(eos_ids)
        self.matchers: list[Any] = []
        self.finish_window = finish_window
        self.closing_mask_W = _closing_mask(self.tokenizer, vocab_size, closing_chars.encode(), self.eos_ids)

    def start(self, rows: int) -> None:
        while len(self.matchers) < rows:
            self.matchers.append(self._llg.LLMatcher(self.tokenizer, self.grammar, log_level=0))
        for matcher in self.matchers[:rows]:
            matcher.reset()

    def fill_masks(self, row: int, drafts: Sequence[int], masks_TxW: np.ndarray, remaining: int) -> int:
        """``masks_TxW[0]``: the row's next token; ``masks_TxW[i]``: the token after draft tokens
        1..i, for as many drafts as the grammar accepts (that count is returned). The matcher is left
        where it was (drafts are consumed, then rolled back)."""
        matcher = self.matchers[row]
        if matcher.is_error():  # cannot happen when every consumed token was allowed; end the row
            masks_TxW[0] = 0
            for eos in self.eos_ids:
                _set_bit(masks_TxW[0], eos)
            return 0
        allowed = min(matcher.validate_tokens(list(drafts)), masks_TxW.shape[0] - 1) if drafts else 0
        for i in range(allowed + 1):
            if i:
                matcher.consume_token(drafts[i - 1])
            self._fill_one(matcher, masks_TxW, i, remaining - i)
        if allowed:
            matcher.rollback(allowed)
        return allowed

    def _fill_one(self, matcher, masks_TxW: np.ndarray, index: int, remaining: int) -> None:
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(matcher, masks_TxW, index)
        if remaining <= self.finish_window:
            closing_W = masks_TxW[index] & self.closing_mask_W
            if closing_W.any():
                masks_TxW[index] = closing_W

    def consume(self, row: int, token: int) -> None:
        self.matchers[row].consume_token(token)


def build_constraint(
    kind: str | None, hf_tokenizer, vocab_size: int, eos_ids: Sequence[int], schema_path: str | None = None
) -> GrammarConstraint | None:
    """``None`` for no constraint, else a ``GrammarConstraint`` for ``viggo`` or ``json-schema``."""
    if kind is None:
        return None
    if kind == "viggo":
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_lark(viggo_lark())
        closing = "])"
    elif kind == "json-schema":
        if schema_path is None:
            raise UserError("--constrain json-schema needs a schema FILE")
        grammar = json_schema_grammar(schema_path)
        closing = '"]}'
    else:
        raise UserError(f"unknown constraint {kind!r}; expected one of {', '.join(CONSTRAINTS)}")
    return GrammarConstraint(hf_tokenizer, grammar, vocab_size, eos_ids, closing_chars=closing)
