"""Training loss: next-token cross-entropy evaluated only where the loss mask is on.

Levanter's ``compute_next_token_loss`` projects every position onto the vocabulary (576 × 49152 for
SmolLM2) and masks the result afterwards. With completion-only training most positions are prompt
or padding, so most of that projection (and its softmax, forward and backward) is thrown away.

Here each row's loss positions are gathered first (a fixed number per row, ``positions_per_row``,
so shapes stay static under ``jit``), then projected. The value is the same masked mean as
Levanter's; ``positions_per_row`` must be at least the largest number of loss positions in any row
(``rows_need``), which ``train`` computes from the packed data it feeds.
"""

from __future__ import annotations

import functools

import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np


def rows_need(loss_mask_NxL: np.ndarray) -> int:
    """Positions per row that cover every row's loss positions (the last position never counts),
    rounded up to a multiple of 8."""
    most = int(loss_mask_NxL[:, :-1].sum(axis=1).max(initial=0))
    return max(8, -(-most // 8) * 8)


def loss_at_masked_positions(model, example, *, positions_per_row: int, key=None, reduction=hax.mean, reduction_axis=None):
    """Mean next-token cross-entropy over the positions where ``example.loss_mask`` is 1.

    Other reductions (per-token losses for eval) go to Levanter's full computation."""
    if reduction is not hax.mean or reduction_axis is not None:
        from levanter.models.lm_model import compute_next_token_loss

        return compute_next_token_loss(model, example, key=key, reduction=reduction, reduction_axis=reduction_axis)

    Pos, Embed, Vocab = model.Pos, model.Embed, model.Vocab
    activations = model.activations(example.tokens, example.attn_mask, key=key)
    if isinstance(activations, tuple):
        raise NotImplementedError("models with auxiliary losses use Levanter's compute_next_token_loss")
    Pos = activations.resolve_axis(Pos.name)
    batch_axes = tuple(ax for ax in activations.axes if ax.name not in (Pos.name, Embed.name))
    Chosen = hax.Axis("loss_position", positions_per_row)

    not_last = jnp.arange(Pos.size) < Pos.size - 1
    mask = example.loss_mask.rearrange(batch_axes + (Pos,)).array.astype(jnp.float32) * not_last
    # ids past the vocabulary (prompt tuning's virtual tokens) are never loss targets, but a gather
    # of an out-of-range id gives NaN, and NaN * 0 is NaN: keep every target inside the vocabulary
    targets = jnp.minimum(jnp.roll(example.tokens.rearrange(batch_axes + (Pos,)).array, -1, axis=-1), Vocab.size - 1)
    # stable sort on "not a loss position": each row's loss positions first, in order
    order = jnp.argsort(mask == 0, axis=-1, stable=True)[..., :positions_per_row]
    take = functools.partial(jnp.take_along_axis, axis=-1)

    chosen_act = jnp.take_along_axis(activations.rearrange(batch_axes + (Pos, Embed)).array, order[..., None], axis=-2)
    chosen = hax.named(chosen_act, batch_axes + (Chosen, Embed))
    logits = hax.dot(chosen, model.get_lm_head(), axis=Embed).rearrange(batch_axes + (Chosen, Vocab)).array
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, take(targets, order)[..., None], axis=-1)[..., 0]
    weight = take(mask, order)
    return hax.named(jnp.sum((log_z - target_logit) * weight) / jnp.maximum(jnp.sum(weight), 1.0), ())


def training_loss(positions_per_row: int):
    return functools.partial(loss_at_masked_positions, positions_per_row=positions_per_row)
