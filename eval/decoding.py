"""Batched greedy decoding with a KV cache: one compiled prefill, then one compiled step per token.

``GreedyDecoder.generate(prompts)`` takes a batch of token-id lists, left-pads them into a prompt
length bucketed to a multiple of ``bucket`` (few recompiles), and decodes greedily until every row
has produced an EOS id or ``max_new_tokens`` tokens. The model is a ``GenerationModel`` (the
trainer's Levanter model on a device mesh, ``eval.generation_model``). The cache has a fixed number
of slots chosen by the caller (the longest bucketed prompt of the whole job + ``max_new_tokens``),
so the decode step compiles once per batch size.

An optional ``TokenConstraint`` (see ``eval.constrained``) restricts each row's next token: it
fills a packed bit mask (llguidance layout, 32 tokens per int32) before every pick and is told the
token picked after it. Unconstrained decoding uses an all-ones mask, so both share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from eval.generation_model import GenerationModel


class TokenConstraint(Protocol):
    """Per-row token masks for one batch (implemented by ``eval.constrained.GrammarConstraint``)."""

    def start(self, rows: int) -> None: ...

    def fill_masks(self, bitmask_BxW: np.ndarray, active: Sequence[bool], remaining: int) -> None: ...

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


class GreedyDecoder:
    def __init__(
        self,
        model: GenerationModel,
        eos_ids: Sequence[int],
        pad_id: int,
        max_new_tokens: int,
        slots: int,
        bucket: int = 16,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self.model = model
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.pad_id, self.max_new_tokens, self.slots, self.bucket = pad_id, max_new_tokens, slots, bucket

    def generate(self, prompts: Sequence[Sequence[int]], constraint: TokenConstraint | None = None) -> list[Generation]:
        """Greedy continuations of ``prompts`` (one batch; every prompt non-empty)."""
        b = len(prompts)
        t = bucket_length(max(len(p) for p in prompts), self.bucket)
        if t + self.max_new_tokens > self.slots:
            raise ValueError(f"prompt of {t} tokens + {self.max_new_tokens} new exceeds the {self.slots} cache slots")
        tokens_BxT = np.full((b, t), self.pad_id, np.int32)
        pad_B = np.zeros(b, np.int32)
        for row, ids in enumerate(prompts):
            tokens_BxT[row, t - len(ids) :] = ids
            pad_B[row] = t - len(ids)
        bitmask_BxW = np.full((b, mask_width(self.model.vocab_size)), -1, np.int32)
        full_mask = bitmask_BxW.copy()
        out: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        at_eos = [False] * b
        fallback = min(self.eos_ids) if self.eos_ids else self.pad_id
        if constraint is not None:
            constraint.start(b)
        next_B, cache = None, self.model.init_cache(b, self.slots)
        for i in range(self.max_new_tokens):
            if constraint is not None:
                bitmask_BxW.fill(-1)
                constraint.fill_masks(bitmask_BxW, [not d for d in done], self.max_new_tokens - i)
                mask = bitmask_BxW
            else:
                mask = full_mask
            if next_B is None:
                picked, cache = self.model.prefill(tokens_BxT, pad_B, cache, mask)
            else:
                picked, cache = self.model.step(next_B, pad_B, t + i - 1, cache, mask)
            next_B = self.model.fetch(picked).astype(np.int32)
            for row in range(b):
                if done[row]:
                    next_B[row] = fallback
                    continue
                token = int(next_B[row])
                if token in self.eos_ids:
                    done[row] = at_eos[row] = True
                    continue
                out[row].append(token)
                if constraint is not None:
                    constraint.consume(row, token)
            if all(done):
                break
        return [Generation(tokens, eos) for tokens, eos in zip(out, at_eos)]
