"""Prepared JSONL -> token sequences with a completion-only loss mask, packed to a fixed length.

Levanter's loss at position ``i`` scores the prediction of token ``i + 1`` (``loss_mask[i]``
weights it). For one example ``prompt + completion + EOS`` starting at offset ``s`` with prompt
length ``P`` and completion length ``C`` (EOS included), the trained positions are
``s + P - 1 .. s + P + C - 2``: the last prompt token predicts the first completion token, and the
token before EOS predicts EOS. The EOS position itself is never trained (it would learn to
predict the next packed example's first token), and neither is any prompt token's successor
inside the prompt or any padding. Each packed example gets its own segment id so attention never
crosses examples.

This replaces Levanter's ``supervised`` format, whose mask is off by one in the pinned version
(the first completion token is never trained, EOS learns to predict the next BOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class TokenizedExample:
    id: str
    prompt: tuple[int, ...]
    completion: tuple[int, ...]  # ends with EOS

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.completion)


@dataclass(frozen=True)
class PackedSequences:
    """``N`` sequences of length ``L``: tokens, loss mask, segment ids (-1 on padding)."""

    tokens_NxL: np.ndarray  # int32
    loss_mask_NxL: np.ndarray  # int32, 1 where the next token is a completion token or EOS
    segment_ids_NxL: np.ndarray  # int32
    real_tokens_N: np.ndarray  # int64, non-pad tokens per sequence
    num_examples: int

    def __len__(self) -> int:
        return int(self.tokens_NxL.shape[0])


@dataclass(frozen=True)
class LengthReport:
    total: int
    dropped: int
    longest: int
    max_seq_len: int

    def message(self, path: str) -> str:
        return (
            f"{path}: dropped {self.dropped} of {self.total} examples longer than max_seq_len={self.max_seq_len} "
            f"tokens (longest {self.longest}); raise data.max_seq_len to keep them"
        )


def read_prepared(path: str) -> list[dict]:
    """Rows of a prepared JSONL file (``id``, ``input``, ``output``) through the one reader of
    prepared records (``parsetune.records``), so training accepts exactly what eval accepts."""
    from parsetune.records import read_prepared as read_records

    return [{"id": r.id, "input": r.input, "output": r.output} for r in read_records(path)]


def tokenize_rows(rows: list[dict], tokenizer, eos_id: int) -> list[TokenizedExample]:
    """Prompt with the tokenizer's special tokens (BOS), completion without, then EOS."""
    prompts = tokenizer([r["input"] for r in rows], add_special_tokens=True)["input_ids"]
    completions = tokenizer([r["output"] for r in rows], add_special_tokens=False)["input_ids"]
    return [
        TokenizedExample(id=r["id"], prompt=tuple(p), completion=tuple(c) + (eos_id,))
        for r, p, c in zip(rows, prompts, completions)
    ]


def drop_too_long(examples: list[TokenizedExample], max_seq_len: int) -> tuple[list[TokenizedExample], LengthReport]:
    kept = [e for e in examples if e.length <= max_seq_len]
    longest = max((e.length for e in examples), default=0)
    return kept, LengthReport(total=len(examples), dropped=len(examples) - len(kept), longest=longest, max_seq_len=max_seq_len)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, longest examples first, each into the first bin it fits in."""
    bins: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        slot = next((b for b, room in enumerate(free) if room >= size), None)
        if slot is None:
            bins.append([])
            free.append(capacity)
            slot = len(bins) - 1
        bins[slot].append(index)
        free[slot] -= size
    return bins


def pack(examples: list[TokenizedExample], max_seq_len: int, pad_id: int, packing: bool = True) -> PackedSequences:
    """Pack examples into sequences of ``max_seq_len`` tokens (first-fit decreasing, so few pad
    tokens are left); one example per sequence when ``packing`` is False. Sequence order is not
    meaningful: training visits sequences in a fresh random order every epoch."""
    if any(e.length > max_seq_len for e in examples):
        raise ValueError("drop_too_long first")
    if packing:
        bins = [[examples[i] for i in members] for members in first_fit_decreasing([e.length for e in examples], max_seq_len)]
    else:
        bins = [[e] for e in examples]
    n = len(bins)
    tokens = np.full((n, max_seq_len), pad_id, dtype=np.int32)
    loss_mask = np.zeros((n, max_seq_len), dtype=np.int32)
    segments = np.full((n, max_seq_len), -1, dtype=np.int32)
    real = np.zeros((n,), dtype=np.int64)
    for row, members in enumerate(bins):
        offset = 0
        for segment, example in enumerate(members):
            p, c = len(example.prompt), len(example.completion)
            tokens[row, offset : offset + p + c] = example.prompt + example.completion
            loss_mask[row, offset + p - 1 : offset + p + c - 1] = 1
            segments[row, offset : offset + p + c] = segment
            offset += p + c
        real[row] = offset
    return PackedSequences(tokens, loss_mask, segments, real, num_examples=len(examples))


def shuffled(examples: list[TokenizedExample], seed: int) -> list[TokenizedExample]:
    order = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in order]


def epoch_order(num_sequences: int, num_steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Which packed sequence feeds each slot of each step: a fresh permutation every epoch."""
    needed = num_steps * batch_size
    epochs = -(-needed // num_sequences)
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(num_sequences) for _ in range(epochs)])[:needed]

