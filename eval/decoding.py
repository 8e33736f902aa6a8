"""Batched decoding with a KV cache: one compiled prefill, then compiled decode steps.

``BatchDecoder.generate(prompts)`` takes a batch of token-id lists, left-pads them into a prompt
length bucketed to a multiple of ``bucket`` (few recompiles), and decodes greedily until every row
has produced an EOS id or ``max_new_tokens`` tokens (or its own, lower ``limits``, or its
``should_stop`` says so: a stop string, a client gone). With a ``Sampling`` (``eval.sampling``)
rows draw their tokens at their own temperature / top-p instead (temperature 0 stays greedy). The model is a ``GenerationModel`` (the
trainer's Levanter model on a device mesh, ``eval.generation_model``). The cache has a fixed number
of slots chosen by the caller (the longest bucketed prompt of the whole job + ``max_new_tokens`` +
``draft_tokens``), so each decode step shape compiles once per batch size.

**Prompt lookup** (``draft_tokens`` = K > 0): a decode step is memory-bound (every weight is read
for 8 tokens), so it costs little more to check K extra tokens in the same pass. Before each step,
each row proposes up to K draft tokens: what followed the most recent earlier occurrence of its last
3 (else 2, else 1) tokens in its own prompt + output (with K tokens after it, if one has) (outputs copy names and phrases from the
input). The step feeds ``[last token, d1 .. dK]``; the greedy pick after each fed token is what
plain greedy decoding would produce there, so the row keeps the drafts up to the first one that
differs from its pick, plus that pick: 1 to K + 1 tokens per step, the same tokens as one at a time
(up to float rounding: the same math in a different batch shape). Rows advance by different amounts
and write their own cache slots. K = 0 is plain one-token greedy decoding.

An optional ``TokenConstraint`` (see ``eval.constrained``) restricts each row's tokens: it fills a
packed bit mask (llguidance layout, 32 tokens per int32) for the next token and for the position
after each draft token it allows, and is told the tokens kept. Unconstrained decoding uses all-ones
masks, so both share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from eval.generation_model import GenerationModel
from eval.sampling import Sampling
from parsetune.signals import raise_if_stopping


class TokenConstraint(Protocol):
    """Per-row token masks for one batch (implemented by ``eval.constrained.GrammarConstraint``)."""

    def start(self, rows: int) -> None: ...

    def fill_masks(self, row: int, drafts: Sequence[int], masks_TxW: np.ndarray, remaining: int) -> int:
        """Masks for the row's next token (``masks_TxW[0]``) and after each of the first n drafts
        (``masks_TxW[1..n]``), where n is how many of ``drafts`` the constraint allows; returns n.
        ``remaining``: how many tokens the row may still produce."""
        ...

    def consume(self, row: int, token: int) -> None: ...


@dataclass(frozen=True)
class Generation:
    """Generated ids of one row (EOS excluded) and whether it ended with EOS (else the length limit)."""

    tokens: list[int]
    stopped_at_eos: bool


def bucket_length(n: int, bucket: int) -> int:
    return max(bucket, -(-n // bucket) * bucket)


def mask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def lookup_draft(history: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to ``k`` tokens that followed an earlier occurrence of the last ``n`` tokens of ``history``
    (n = max_ngram down to 1): the most recent occurrence with ``k`` tokens after it, else the one
    with the most (a repeat right before the end has few); empty when nothing matches."""
    if k <= 0:
        return []
    size = len(history)
    for n in range(min(max_ngram, size - 1), 0, -1):
        tail = list(history[size - n :])
        best: list[int] = []
        for begin in range(size - n - 1, -1, -1):
            if list(history[begin : begin + n]) == tail:
                follow = list(history[begin + n : begin + n + k])
                if len(follow) > len(best):
                    best = follow
                if len(best) == k:
                    break
        if best:
            return best
    return []


@dataclass
class DecodeStats:
    """Counters over every ``generate`` call: decode steps, and per active row and step the tokens
    it gained (EOS included) and its drafts proposed and kept."""

    steps: int = 0
    row_steps: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def tokens_per_step(self) -> float:
        """Tokens a row gains per decode step: 1 without drafts, up to 1 + draft_tokens."""
        return self.tokens / self.row_steps if self.row_steps else 1.0


class BatchDecoder:
    def __init__(
        self,
        model: GenerationModel,
        eos_ids: Sequence[int],
        pad_id: int,
        max_new_tokens: int,
        slots: int,
        bucket: int = 16,
        draft_tokens: int = 0,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if draft_tokens < 0:
            raise ValueError("draft_tokens must be >= 0")
        self.model = model
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.pad_id, self.max_new_tokens, self.slots, self.bucket = pad_id, max_new_tokens, slots, bucket
        self.draft_tokens = draft_tokens
        self.stats = DecodeStats()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        constraint: TokenConstraint | None = None,
        sampling: Sampling | None = None,
        limits: Sequence[int] | None = None,
        should_stop: Callable[[int, list[int]], bool] | None = None,
    ) -> list[Generation]:
        """Continuations of ``prompts`` (one batch; every prompt non-empty): greedy, or drawn per
        ``sampling``. ``limits``: each row's own token budget (at most ``max_new_tokens``);
        ``should_stop(row, tokens so far)``, asked after each kept token, ends a row early."""
        b, k = len(prompts), self.draft_tokens
        if sampling is not None and k:
            raise ValueError("prompt-lookup drafts check greedy picks: sampling needs draft_tokens 0")
        limit = [self.max_new_tokens] * b if limits is None else [min(int(n), self.max_new_tokens) for n in limits]
        if len(limit) != b or min(limit) < 1:
            raise ValueError("one limit >= 1 per row")
        t = bucket_length(max(len(p) for p in prompts), self.bucket)
        if t + self.max_new_tokens + k > self.slots:
            raise ValueError(f"prompt of {t} tokens + {self.max_new_tokens} new + {k} draft exceeds the {self.slots} cache slots")
        tokens_BxT = np.full((b, t), self.pad_id, np.int32)
        pad_B = np.zeros(b, np.int32)
        for row, ids in enumerate(prompts):
            tokens_BxT[row, t - len(ids) :] = ids
            pad_B[row] = t - len(ids)
        width = mask_width(self.model.vocab_size)
        history = [[int(i) for i in p] for p in prompts]
        out: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        at_eos = [False] * b
        if constraint is not None:
            constraint.start(b)
        cache = self.model.init_cache(b, self.slots)

        def keep(row: int, tokens: Sequence[int]) -> None:
            """Append a row's new tokens up to EOS or the length limit."""
            for token in tokens:
                if token in self.eos_ids:
                    done[row] = at_eos[row] = True
                    return
                out[row].append(token)
                history[row].append(token)
                if constraint is not None:
                    constraint.consume(row, token)
                if len(out[row]) >= limit[row] or (should_stop is not None and should_stop(row, out[row])):
                    done[row] = True
                    return

        masks_BxTxW = np.full((b, 1, width), -1, np.int32)
        if constraint is not None:
            for row in range(b):
                constraint.fill_masks(row, [], masks_BxTxW[row], limit[row])
        picked, cache = self.model.prefill(tokens_BxT, pad_B, cache, masks_BxTxW[:, 0], sampling)
        first = self.model.fetch(picked)
        for row in range(b):
            keep(row, [int(first[row])])
        start_B = np.full(b, t, np.int32)  # next cache slot of each row: its last kept token goes there
        step = 0
        while not all(done):
            raise_if_stopping()  # a pod host told to stop (SIGTERM) does not finish the batch first
            step += 1
            drafts = [[] if done[r] else self._draft(history[r], limit[r] - len(out[r]) - 1) for r in range(b)]
            width_t = k + 1 if any(drafts) else 1
            masks_BxTxW = np.full((b, width_t, width), -1, np.int32)
            if constraint is not None:
                for row in range(b):
                    if not done[row]:
                        allowed = constraint.fill_masks(row, drafts[row], masks_BxTxW[row], limit[row] - len(out[row]))
                        drafts[row] = drafts[row][:allowed]
            fed_BxT = np.full((b, width_t), self.pad_id, np.int32)
            for row in range(b):
                fed_BxT[row, 0] = history[row][-1]
                fed_BxT[row, 1 : 1 + len(drafts[row])] = drafts[row]
            picked, cache = self.model.step(fed_BxT, pad_B, start_B, cache, masks_BxTxW, sampling, step)
            picks_BxT = self.model.fetch(picked)
            self.stats.steps += 1
            for row in range(b):
                if done[row]:
                    continue
                draft, picks = drafts[row], [int(p) for p in picks_BxT[row]]
                n = 0
                while n < len(draft) and draft[n] == picks[n]:
                    n += 1
                before = len(out[row])
                keep(row, draft[:n] + [picks[n]])
                start_B[row] += n + 1
                self.stats.row_steps += 1
                self.stats.tokens += len(out[row]) - before + at_eos[row]
                self.stats.drafted += len(draft)
                self.stats.accepted += n
        return [Generation(tokens, eos) for tokens, eos in zip(out, at_eos)]

    def _draft(self, history: Sequence[int], budget: int) -> list[int]:
        draft = lookup_draft(history, min(self.draft_tokens, budget))
        for i, token in enumerate(draft):
            if token in self.eos_ids:
                return draft[:i]
        return draft
