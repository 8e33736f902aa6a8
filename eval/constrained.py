"""Grammar-constrained decoding with llguidance: ViGGO MRs or a JSON Schema, via numpy bit masks.

``viggo_lark(values, sentence)`` is a Lark grammar accepting exactly the well-formed ViGGO MRs: one
of the 9 functions, then any subset of the 14 attributes in the canonical order of
``parsetune.tasks.viggo_mr`` (``, `` between them). What each value may be comes from the value sets
learned from the training split (``parsetune.tasks.viggo_values``, stored in the prepared data's
manifest): closed attributes take a value seen in training, list attributes comma-separated known
items (in training's order, none repeated, when training lists are ordered), and -- *grounding* -- attributes that training copies from the sentence take only a span of
this row's sentence (so a name cannot be misspelt or invented). Without learned sets every value is
bracket-free free text. Every value may be empty (``esrb[]``). After the closing ``)`` only EOS is
allowed.

``GrammarConstraint`` implements ``eval.decoding.TokenConstraint``: one ``LLMatcher`` per batch row,
each with its own grammar when the constraint grounds values (``for_prompts`` before a batch).
Near the token budget (the last ``finish_window`` tokens) it steers each row towards closing: when
the grammar allows a token made only of closing characters (``])`` for ViGGO, ``"]}`` for JSON) or
EOS, only those are allowed (first those beginning with the first closing character, which ends a
value: inside free text ``)`` is still text; for JSON then ``,``, which ends a number before a
required member), so a long free-text value does not leave the MR unfinished at
``max_new_tokens``. Otherwise the plain grammar mask applies (e.g. to finish a closed value).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

from parsetune.tasks.viggo_mr import ATTRIBUTES, FUNCTIONS
from parsetune.tasks.viggo_values import Grounding, ValueSets, sentence_spans
from parsetune.tasks.schema_refs import check_local_refs
from parsetune import storage
from parsetune.errors import UserError

CONSTRAINTS: tuple[str, ...] = ("viggo", "json-schema")

FREE_TEXT = r"/[^\[\]\n]{1,80}/"


def _alternatives(values: Sequence[str]) -> str:
    # longest first, so that e.g. "Nintendo Switch" is not read as "Nintendo" + garbage
    return " | ".join(json.dumps(v, ensure_ascii=False) for v in sorted(values, key=len, reverse=True))


def _ordered_list_rules(rule: str, items: Sequence[str]) -> list[str]:
    """``rule``: one or more of ``items``, comma-separated, in the given order, none repeated."""
    lines = [f"{rule}: " + " | ".join(f"{rule}_{k}" for k in range(len(items)))]
    for k, item in enumerate(items):
        rest = " | ".join(f"{rule}_{j}" for j in range(k + 1, len(items)))
        tail = f" (\", \" ({rest}))?" if rest else ""
        lines.append(f"{rule}_{k}: {json.dumps(item, ensure_ascii=False)}{tail}")
    return lines


def viggo_lark(values: ValueSets | None = None, sentence: str | None = None) -> str:
    """The Lark grammar (llguidance dialect) of well-formed ViGGO meaning representations.

    ``values`` (learned from the training split, ``parsetune.tasks.viggo_values``) restricts closed
    attributes to the values seen in training and list attributes to comma-separated known items;
    with ``sentence`` too, each copied attribute may only be a span of that sentence (grounding).
    Without ``values`` every attribute is free text (structure only).
    """
    values = values or ValueSets()
    lines = [
        "start: fn \"(\" attrs? \")\"",
        "fn: " + _alternatives(FUNCTIONS),
        "attrs: " + " | ".join(f"x{i}" for i in range(len(ATTRIBUTES))),
    ]
    span_rules: dict[int, str] = {}
    for i, name in enumerate(ATTRIBUTES):
        later = " | ".join(f"x{j}" for j in range(i + 1, len(ATTRIBUTES)))
        tail = f" (\", \" ({later}))?" if later else ""
        spec = values.of(name)
        value_rules: list[str] = []
        if spec.kind == "closed" and spec.values:
            value_rules.append(f"v{i}: " + _alternatives(spec.values))
        elif spec.kind == "list" and spec.values and spec.ordered:
            value_rules += _ordered_list_rules(f"v{i}", spec.values)
        elif spec.kind == "list" and spec.values:
            value_rules.append(f"v{i}: item{i} (\", \" item{i})*")
            value_rules.append(f"item{i}: " + _alternatives(spec.values))
        elif spec.kind == "copy" and sentence is not None and spec.max_units > 0:
            spans = sentence_spans(sentence, spec.max_units)
            if spans:
                span_rules.setdefault(spec.max_units, _alternatives(spans))
                value_rules.append(f"v{i}: span{spec.max_units}")
            # else nothing to copy from: the value can only be empty
        else:
            value_rules.append(f"v{i}: {FREE_TEXT}")
        value = f" v{i}?" if value_rules else ""
        lines.append(f"x{i}: \"{name}[\"{value} \"]\"{tail}")
        lines += value_rules
    lines += [f"span{n}: {alternatives}" for n, alternatives in span_rules.items()]
    return "\n".join(lines) + "\n"


def json_schema_grammar(schema_path: str) -> str:
    """An llguidance grammar for compact JSON (no free whitespace) matching the schema file."""
    import llguidance

    from parsetune.tasks.json_form import loads_strict

    text = storage.read_text(schema_path)
    try:
        schema: Any = loads_strict(text)
    except ValueError as err:
        raise UserError(f"{schema_path}: not valid JSON ({err})") from None
    return schema_grammar(schema, schema_path)


def schema_grammar(schema: Any, where: str = "schema") -> str:
    """An llguidance grammar for compact JSON matching ``schema`` (a JSON Schema as a dict); a
    ``UserError`` naming ``where`` when it is not a valid schema or llguidance cannot compile it."""
    import jsonschema
    import llguidance

    if not isinstance(schema, dict):
        raise UserError(f"{where}: a JSON Schema must be an object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise UserError(f"{where}: not a valid JSON Schema ({err.message})") from None
    check_local_refs(schema, where)  # llguidance fetches nothing either; say so in one line
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except (ValueError, RuntimeError, TypeError) as err:
        raise UserError(f"{where}: unsupported JSON Schema ({str(err).splitlines()[0]})") from None
    return grammar


JSON_CLOSING, JSON_SEPARATOR = '"]}', ","  # what ends JSON values, and what leads to the next member
JSON_OBJECT_SCHEMA: dict = {"type": "object"}  # any JSON object (OpenAI's response_format json_object)


def _set_bit(mask_W: np.ndarray, token: int) -> None:
    mask_W[token // 32] |= np.uint32(1 << (token % 32)).view(np.int32)


def _closing_masks(lltok, vocab_size: int, closing: bytes, eos_ids: Sequence[int], separator: bytes = b"") -> list[np.ndarray]:
    """Bit masks, in order of preference: the tokens made only of ``closing`` bytes that begin with
    its first (``]`` closes a ViGGO value, where ``)`` would still be free text), then EOS and every
    token made only of ``closing`` bytes, then (with a ``separator``) also the tokens made of closing
    and separator bytes (JSON's ``,``: the way out of a number when a required member is still to come)."""
    width = (vocab_size + 31) // 32
    first_W, any_W, separated_W = np.zeros(width, np.int32), np.zeros(width, np.int32), np.zeros(width, np.int32)
    for token in eos_ids:
        _set_bit(any_W, token)
    if closing:
        allowed, with_separator = set(closing), set(closing) | set(separator)
        for token in range(min(vocab_size, lltok.vocab_size)):
            data = lltok.decode_bytes([token])
            if not data or lltok.is_special_token(token):
                continue
            if set(data) <= allowed:
                _set_bit(any_W, token)
                if data[0] == closing[0]:
                    _set_bit(first_W, token)
            if separator and set(data) <= with_separator:
                _set_bit(separated_W, token)
    return [first_W, any_W] + ([any_W | separated_W] if separator else [])


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
        separator: str = "",
        row_grammar: Callable[[str], str] | None = None,
        description: str = "",
        ll_tok=None,
    ) -> None:
        import llguidance

        self._llg = llguidance
        self.tokenizer = ll_tok if ll_tok is not None else ll_tokenizer(hf_tokenizer, vocab_size, eos_ids)
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise UserError(f"invalid constraint grammar: {error.splitlines()[0]}")
        self.grammar = grammar
        self.eos_ids = list(eos_ids)
        self.matchers: list[Any] = []
        self.row_grammar = row_grammar  # prompt -> that row's grammar (grounding); None: one grammar for all
        self._row_grammars: list[str] | None = None
        self.description = description  # what restricts the output, in one line (logs, reports)
        self.finish_window = finish_window
        key = (id(self.tokenizer), vocab_size, closing_chars, separator, tuple(self.eos_ids))
        if key not in _CLOSING_MASKS:  # a scan of the whole vocabulary: once per tokenizer
            masks = _closing_masks(self.tokenizer, vocab_size, closing_chars.encode(), self.eos_ids, separator.encode())
            _CLOSING_MASKS[key] = (self.tokenizer, masks)
        self.closing_masks_W = _CLOSING_MASKS[key][1]

    def for_prompts(self, prompts: Sequence[str]) -> None:
        """Use each prompt's own grammar (``row_grammar``) for the rows of the next batch, in order;
        a no-op for a constraint without per-row grammars."""
        if self.row_grammar is not None:
            self._row_grammars = [self.row_grammar(p) for p in prompts]

    def start(self, rows: int) -> None:
        if self._row_grammars is not None:
            grammars, self._row_grammars = self._row_grammars, None
            if len(grammars) != rows:
                raise ValueError(f"{len(grammars)} row grammars for a batch of {rows}")
            self.matchers = [self._llg.LLMatcher(self.tokenizer, g, log_level=0) for g in grammars]
            return
        if self.row_grammar is not None:
            self.matchers = []  # rows of an earlier batch had their own grammars
        while len(self.matchers) < rows:
            self.matchers.append(self._llg.LLMatcher(self.tokenizer, self.grammar, log_level=0))
        for matcher in self.matchers[:rows]:
            matcher.reset()

    def new_matcher(self, prompt: str | None = None):
        """A fresh matcher for one row: the prompt's own grammar when the constraint has per-row
        grammars (and a prompt is given), else the constraint's grammar."""
        grammar = self.row_grammar(prompt) if self.row_grammar is not None and prompt is not None else self.grammar
        return self._llg.LLMatcher(self.tokenizer, grammar, log_level=0)

    def fill_masks(self, row: int, drafts: Sequence[int], masks_TxW: np.ndarray, remaining: int) -> int:
        """``masks_TxW[0]``: the row's next token; ``masks_TxW[i]``: the token after draft tokens
        1..i, for as many drafts as the grammar accepts (that count is returned). The matcher is left
        where it was (drafts are consumed, then rolled back)."""
        return self.fill_matcher(self.matchers[row], drafts, masks_TxW, remaining)

    def fill_matcher(self, matcher, drafts: Sequence[int], masks_TxW: np.ndarray, remaining: int) -> int:
        """``fill_masks`` for a given matcher (one of this constraint's grammars)."""
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
            for preferred_W in self.closing_masks_W:
                closing_W = masks_TxW[index] & preferred_W
                if closing_W.any():
                    masks_TxW[index] = closing_W
                    break

    def consume(self, row: int, token: int) -> None:
        self.matchers[row].consume_token(token)


_CLOSING_MASKS: dict = {}  # (tokenizer id, vocab, closing chars, eos) -> (tokenizer kept alive, masks)


class RowConstraints:
    """A batch whose rows each have their own constraint (or none): a ``TokenConstraint`` over
    ``(GrammarConstraint or None, prompt)`` pairs, one per row, e.g. the requests a server batches
    together. A row without a constraint keeps the all-allowed mask."""

    def __init__(self, rows: Sequence[tuple[GrammarConstraint | None, str]]) -> None:
        self.rows = list(rows)
        self.matchers: list[Any] = []

    def start(self, rows: int) -> None:
        if rows != len(self.rows):
            raise ValueError(f"{len(self.rows)} row constraints for a batch of {rows}")
        self.matchers = [c.new_matcher(prompt) if c is not None else None for c, prompt in self.rows]

    def fill_masks(self, row: int, drafts: Sequence[int], masks_TxW: np.ndarray, remaining: int) -> int:
        constraint = self.rows[row][0]
        if constraint is None:
            return min(len(drafts), masks_TxW.shape[0] - 1)
        return constraint.fill_matcher(self.matchers[row], drafts, masks_TxW, remaining)

    def consume(self, row: int, token: int) -> None:
        if self.matchers[row] is not None:
            self.matchers[row].consume_token(token)


def build_constraint(
    kind: str | None,
    hf_tokenizer,
    vocab_size: int,
    eos_ids: Sequence[int],
    schema_path: str | None = None,
    grounding: Grounding | None = None,
    ground_values: bool = True,
    ll_tok=None,
) -> GrammarConstraint | None:
    """``None`` for no constraint, else a ``GrammarConstraint`` for ``viggo`` or ``json-schema``.

    ``viggo`` with ``grounding`` (the learned value sets of the prepared data, ``read_grounding``):
    closed and list attributes take training values only, and with ``ground_values`` each row's
    copied attributes take only spans of its own sentence (the constraint's ``for_prompts``).
    Without ``grounding``: structure only, every value free text.
    """
    if kind is None:
        return None
    import llguidance

    row_grammar: Callable[[str], str] | None = None
    if kind == "viggo":
        values = grounding.values if grounding else None
        grammar = llguidance.LLMatcher.grammar_from_lark(viggo_lark(values))
        closing, separator = "])", ""
        if grounding is not None and ground_values and grounding.values.copied():
            learned = grounding

            def grounded_grammar(prompt: str) -> str:
                return llguidance.LLMatcher.grammar_from_lark(viggo_lark(learned.values, learned.sentence(prompt)))

            row_grammar = grounded_grammar
        description = _describe_viggo(values, grounded=row_grammar is not None)
    elif kind == "json-schema":
        if schema_path is None:
            raise UserError("--constrain json-schema needs a schema FILE")
        grammar = json_schema_grammar(schema_path)
        closing, separator = JSON_CLOSING, JSON_SEPARATOR
        description = f"json-schema ({schema_path})"
    else:
        raise UserError(f"unknown constraint {kind!r}; expected one of {', '.join(CONSTRAINTS)}")
    return GrammarConstraint(
        hf_tokenizer, grammar, vocab_size, eos_ids, closing_chars=closing, row_grammar=row_grammar, description=description,
        ll_tok=ll_tok, separator=separator,
    )  # fmt: skip


def _describe_viggo(values: ValueSets | None, grounded: bool) -> str:
    if values is None:
        return "viggo (structure only: no learned value sets beside the data)"
    of_kind = lambda kind: [a for a, v in values.attributes.items() if v.kind == kind]  # noqa: E731
    copied = f"spans of the sentence for {', '.join(of_kind('copy'))}" if grounded else "copied values free"
    return f"viggo ({copied}; training values for {len(of_kind('closed')) + len(of_kind('list'))} closed/list attributes)"
