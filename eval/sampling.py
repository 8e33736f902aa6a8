"""Temperature / top-p sampling for the decoder: per-row settings, the pick made on the device.

``Sampling`` holds one temperature, one top-p and one seed per batch row (temperature 0 = greedy, so
greedy and sampled requests share a batch); ``sample_pick`` is the jitted choice among the tokens a
packed bit mask allows (llguidance layout, 32 tokens per int32): scale the allowed logits by
1/temperature, keep the smallest set of most likely tokens whose probability reaches top-p (nucleus),
and draw one with a per-row key the host derives from the row's seed and the step (the same seed
gives the same text, whatever else shares the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    temperature_B: np.ndarray  # float32 [batch]; 0 = greedy for that row
    top_p_B: np.ndarray  # float32 [batch], in (0, 1]
    seeds_B: np.ndarray  # int64 [batch]: each row's own seed (the same seed, the same draws)

    @classmethod
    def of(cls, temperatures, top_ps, seeds) -> "Sampling":
        t = np.asarray(temperatures, np.float32)
        p = np.asarray(top_ps, np.float32)
        s = np.asarray(seeds, np.int64)
        if not (t.shape == p.shape == s.shape) or t.ndim != 1:
            raise ValueError("one temperature, one top_p and one seed per row")
        if (t < 0).any() or (p <= 0).any() or (p > 1).any():
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        return cls(t, p, s)

    @property
    def greedy(self) -> bool:
        return bool((self.temperature_B == 0).all())

    def step_seeds(self, step: int) -> np.ndarray:
        """One int32 seed per row for decode step ``step`` (prefill is step 0)."""
        return np.array(
            [np.random.default_rng([int(seed) & 0xFFFFFFFF, step]).integers(0, 2**31 - 1) for seed in self.seeds_B], np.int32
        )


def sample_pick(logits, bitmask, temperature, top_p, seed):
    """Per row: greedy where its temperature is 0, else a top-p draw at its temperature, among the
    tokens the packed ``bitmask`` allows. ``logits`` ``[batch, (position,) vocab]``; the others
    ``[batch]`` NamedArrays; returns the picks ``[batch, (position)]``."""
    import haliax as hax
    import jax
    import jax.numpy as jnp

    vocab = jnp.arange(logits.resolve_axis("vocab").size)
    axes = tuple(a for a in bitmask.axes if a.name != "mask_word")
    words = bitmask.rearrange((*axes, "mask_word")).array
    allowed = ((words[..., vocab // 32] >> (vocab % 32)) & 1) == 1
    scores = jnp.where(allowed, logits.rearrange((*axes, "vocab")).array.astype(jnp.float32), -jnp.inf)
    extra = (None,) * (scores.ndim - 1)  # [batch] -> [batch, 1 (, 1)]
    t = temperature.array[(slice(None), *extra)]
    scaled = scores / jnp.maximum(t, 1e-6)
    ranked = jnp.sort(scaled, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ranked, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    kept = before < top_p.array[(slice(None), *extra)]
    threshold = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)
    nucleus = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    keys = jax.vmap(jax.random.PRNGKey)(seed.array.astype(jnp.uint32))
    drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row, axis=-1))(keys, nucleus)
    greedy = jnp.argmax(scores, axis=-1)
    picks = jnp.where(t[..., 0] > 0, drawn, greedy).astype(jnp.int32)
    return hax.named(picks, axes)
