"""The trainer's own Levanter model, run with a fixed-size KV cache: one prefill, then one token a step.

Generation evaluates the model the trainer trained, not a second copy of its math: the model is the
Levanter ``LmHeadModel`` loaded from the HF checkpoint, and every step runs its own ``activations``
code (embeddings, each decoder layer's norms, MLP and residuals, the final norm), then the logits as
``LmHeadModel.__call__`` defines them (activations · ``get_lm_head()``), for the last position only.

The one thing added is the cache. The transformer's ``layers`` (a haliax ``Stacked``) is swapped for
``CachedLayers``, whose ``fold`` scans the same stacked layers with each layer's ``Attention`` wrapped
in ``CachedAttention``. The wrapper projects Q/K/V and applies RoPE (incl. Llama-3 ``rope_scaling``) and
QK norm with the layer's own ``_compute_qkv``, writes K/V into the cache, attends over the cache with
Levanter's ``dot_product_attention`` (the layer config's scaling and soft cap), and applies the layer's
``o_proj``. The updated cache leaves the wrapped layer through a list (``box``) that lives inside one
scan body, so no tracer escapes its trace.

Batches are *left*-padded: slot ``j`` of row ``b`` holds a real token iff ``j >= pad[b]``, and its
position is ``j - pad[b]`` (as HF derives it from the attention mask). The cache has ``S`` slots;
prefill fills ``[0, T)`` of every row; a decode call writes each row at its own ``start[b]`` (rows
advance by different amounts when draft tokens are verified, see ``eval.decoding``), so shapes stay
static. A query sees the real slots up to its own (a pad query sees only itself: no empty softmax);
slots beyond a row's own are never visible, so stale entries of rejected drafts do no harm before
they are overwritten.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
from haliax import NamedArray

# axis names: Levanter's ("position", "key_position", "kv_head", "head_size", "embed") plus ours
BATCH, POS, KEY_POS, LAYER = "batch", "position", "key_position", "layer"
# physical layouts XLA's dots read without a transposed copy (measured on XLA:CPU: 127 -> ms/step)
KEY_AXES = (LAYER, BATCH, "kv_head", KEY_POS, "head_size")
VALUE_AXES = (LAYER, BATCH, "kv_head", "head_size", KEY_POS)


class KvCache(eqx.Module):
    """Keys ``[layer, batch, kv_head, key_position (slots), head_size]`` and values
    ``[layer, batch, kv_head, head_size, key_position]`` of every layer."""

    keys: NamedArray
    values: NamedArray

    @staticmethod
    def zeros(model, batch: int, slots: int, dtype) -> "KvCache":
        attn = model.transformer.layers.stacked.self_attn.config
        sizes = {
            LAYER: model.transformer.layers.Block.size,
            BATCH: batch,
            KEY_POS: slots,
            "kv_head": attn.KVHeads.size,
            "head_size": attn.HeadSize.size,
        }
        return KvCache(
            hax.zeros(tuple(hax.Axis(a, sizes[a]) for a in KEY_AXES), dtype=dtype),
            hax.zeros(tuple(hax.Axis(a, sizes[a]) for a in VALUE_AXES), dtype=dtype),
        )


def decode_layout(model):
    """Every ``Linear`` weight stored ``[stack..., In..., Out...]``: the same named weights (the math
    is by axis name), in the physical order XLA:CPU multiplies without copying them every step."""
    import haliax.nn as hnn

    def relayout(module):
        if not isinstance(module, hnn.Linear):
            return module
        names = lambda axes: [a.name for a in (axes if isinstance(axes, tuple) else (axes,))]  # noqa: E731
        ins, outs = names(module.In), names(module.Out)
        stack = [a.name for a in module.weight.axes if a.name not in ins + outs]
        return eqx.tree_at(lambda m: m.weight, module, module.weight.rearrange(tuple(stack + ins + outs)))

    return jax.tree_util.tree_map(relayout, model, is_leaf=lambda n: isinstance(n, hnn.Linear))


class CachedAttention(eqx.Module):
    """A layer's ``Attention`` reading and writing the cache of layer ``index``."""

    inner: Any  # levanter.layers.attention.Attention
    keys: jax.Array  # KEY_AXES
    values: jax.Array  # VALUE_AXES
    index: jax.Array
    start: jax.Array  # [batch]: each row's first slot of this call
    visible: NamedArray  # [batch, position, key_position] bool
    box: list = eqx.field(static=True)

    def __call__(self, x: NamedArray, mask=None, *, key=None, pos_ids: NamedArray | None = None) -> NamedArray:
        from levanter.layers.attention import AttentionBackend, dot_product_attention

        config = self.inner.config
        q, k, v = self.inner._compute_qkv(x, key=None, pos_ids=pos_ids)
        new_k = k.rearrange((BATCH, "kv_head", POS, "head_size")).array.astype(self.keys.dtype)
        new_v = v.rearrange((BATCH, "kv_head", "head_size", POS)).array.astype(self.values.dtype)
        keys, values = self.keys, self.values
        for row in range(new_k.shape[0]):  # row b writes its own slots; one in-place update per row
            at = self.start[row]           # (a scatter with per-row indices copied the cache: 5x slower)
            keys = jax.lax.dynamic_update_slice(keys, new_k[row][None, None], (self.index, row, 0, at, 0))
            values = jax.lax.dynamic_update_slice(values, new_v[row][None, None], (self.index, row, 0, 0, at))
        self.box.append((keys, values))
        sizes = {BATCH: x.resolve_axis(BATCH), KEY_POS: self.visible.resolve_axis(KEY_POS)}
        sizes.update({"kv_head": config.KVHeads, "head_size": config.HeadSize})
        k_all = hax.named(jax.lax.dynamic_index_in_dim(keys, self.index, 0, keepdims=False), tuple(sizes[a] for a in KEY_AXES[1:]))
        v_all = hax.named(jax.lax.dynamic_index_in_dim(values, self.index, 0, keepdims=False), tuple(sizes[a] for a in VALUE_AXES[1:]))
        out = dot_product_attention(
            POS,
            KEY_POS,
            "head_size",
            q.rearrange((..., "kv_head", "q_heads_per_group", POS, "head_size")),
            k_all.astype(q.dtype),
            v_all.astype(q.dtype),
            self.visible,
            attention_dtype=jnp.float32 if config.upcast_attn else x.dtype,
            attn_backend=AttentionBackend.VANILLA,  # one query token over a short cache: plain XLA
            scaling_factor=config.scaling_factor,
            logits_soft_cap=config.logits_soft_cap,
            inference=True,
        )
        out = out.flatten_axes(("kv_head", "q_heads_per_group"), "heads").astype(x.dtype)
        return self.inner.o_proj(out, key=None)


class CachedLayers(eqx.Module):
    """Stands in for the transformer's ``Stacked`` layers: the same layers, scanned with a cache."""

    layers: Any  # haliax Stacked of the model's decoder layers
    cache: KvCache
    start: jax.Array
    visible: NamedArray
    out: list = eqx.field(static=True)  # receives the updated KvCache

    def fold(self, x: NamedArray, *args, mask=None, key=None, pos_ids=None, **kwargs) -> NamedArray:
        def body(carry, layer):
            x, keys, values, index = carry
            box: list = []
            attn = CachedAttention(layer.self_attn, keys, values, index, self.start, self.visible, box)
            x = eqx.tree_at(lambda l: l.self_attn, layer, attn)(x, None, key=None, pos_ids=pos_ids)
            keys, values = box[0]
            return (x, keys, values, index + 1), None

        init = (x, self.cache.keys.array, self.cache.values.array, jnp.int32(0))
        (x, keys, values, _), _ = hax.scan(body, self.layers.Block)(init, self.layers.stacked)
        self.out.append(KvCache(hax.named(keys, self.cache.keys.axes), hax.named(values, self.cache.values.axes)))
        return x


def forward_cached(
    model, tokens: NamedArray, pad: NamedArray, start: NamedArray, cache: KvCache, last_only: bool = True
) -> tuple[NamedArray, KvCache]:
    """Run ``tokens`` ``[batch, position]``, row ``b`` at cache slots ``[start[b], start[b] + T)``;
    return the logits of the last position ``[batch, vocab]`` (or of every position
    ``[batch, position, vocab]``) and the updated cache."""
    Batch, Pos = tokens.resolve_axis(BATCH), tokens.resolve_axis(POS)
    KeyPos = cache.keys.resolve_axis(KEY_POS)
    pad_B, start_B = pad.array, start.array
    slot_BxT = start_B[:, None] + jnp.arange(Pos.size)[None, :]
    pos_ids = hax.named(jnp.maximum(slot_BxT - pad_B[:, None], 0), (Batch, Pos))
    key_S = jnp.arange(KeyPos.size)[None, None, :]
    query_BxTx1 = slot_BxT[:, :, None]
    real = (key_S >= pad_B[:, None, None]) & (key_S <= query_BxTx1)
    visible = hax.named(real | (key_S == query_BxTx1), (Batch, Pos, KeyPos))
    out: list = []
    cached = eqx.tree_at(
        lambda m: m.transformer.layers, model, CachedLayers(model.transformer.layers, cache, start_B, visible, out)
    )
    x = cached.activations(tokens, None, key=None, pos_ids=pos_ids)
    if last_only:
        x = x[POS, -1]
    logits = hax.dot(x, model.get_lm_head(), axis=model.Embed)
    return logits.astype(jnp.float32), out[0]
