"""Packed sequences as a Levanter ``AsyncDataset`` of ``LmExample`` (what the Trainer's loader reads)."""

from __future__ import annotations

from collections.abc import Sequence

import haliax as hax
import jax.numpy as jnp
import numpy as np
from levanter.data.dataset import AsyncDataset
from levanter.models.lm_model import LmExample

from pipelines.data import PackedSequences


def lm_example(packed: PackedSequences, row: int, Pos: hax.Axis) -> LmExample:
    """One packed row: causal attention restricted to each example (segment ids), our loss mask."""
    tokens = hax.named(jnp.asarray(packed.tokens_NxL[row]), Pos)
    loss_mask = hax.named(jnp.asarray(packed.loss_mask_NxL[row]), Pos)
    segments = hax.named(jnp.asarray(packed.segment_ids_NxL[row]), Pos)
    return LmExample.causal(tokens, loss_mask=loss_mask, segment_ids=segments)


class PackedLmDataset(AsyncDataset[LmExample]):
    """Slot ``i`` of the training stream is packed sequence ``order[i]`` (see ``data.epoch_order``).

    Deterministic by construction, so resuming at step ``k`` replays exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, packed: PackedSequences, order: np.ndarray, Pos: hax.Axis):
        super().__init__()
        self.packed = packed
        self.order = order
        self.Pos = Pos

    async def async_len(self) -> int:
        return len(self.order)

    async def final_length_is_known(self) -> bool:
        return True

    def is_finite(self) -> bool:
        return True

    async def current_len(self) -> int:
        return len(self.order)

    async def get_batch(self, indices: Sequence[int]) -> Sequence[LmExample]:
        return [lm_example(self.packed, int(self.order[i]), self.Pos) for i in indices]
