"""A small pure-JAX Llama forward pass with a fixed-size KV cache, read from an HF checkpoint.

Only the math of ``transformers``' ``LlamaForCausalLM`` that generation needs: RMSNorm, RoPE
(default rotation, ``rope_theta`` from ``config.json``), grouped-query attention, SiLU MLP, tied or
untied ``lm_head``. Weights are read from the checkpoint's safetensors files and kept in float32.
Layers are stacked and run with ``lax.scan`` so compile time does not grow with depth.

Batches are *left*-padded: slot ``j`` of row ``b`` holds a real token iff ``j >= pad_B[b]``, and the
RoPE position of slot ``j`` is ``j - pad_B[b]`` (as HF computes it from the attention mask). The
cache has a fixed number of slots ``S``; prefill fills slots ``[0, T)``, decode step ``i`` writes
slot ``T + i``, the same slot for every row, so shapes stay static.

Array names carry their shapes: B batch, T tokens, S cache slots, L layers, D hidden, H query
heads, K KV heads, E head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from parsetune.errors import UserError

Params = dict[str, Any]
Cache = tuple[jax.Array, jax.Array]  # keys, values: [L, B, S, K, E] each


@dataclass(frozen=True)
class LlamaShape:
    """The parts of an HF Llama ``config.json`` the forward pass needs (hashable: a jit static)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> "LlamaShape":
        if config.get("model_type") not in ("llama", None):
            raise UserError(f"unsupported model_type {config.get('model_type')!r}; only llama checkpoints are supported")
        if config.get("rope_scaling"):
            raise UserError(f"unsupported rope_scaling {config['rope_scaling']!r}; only the default RoPE is supported")
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


def read_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: model directory not found")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no config.json (expected an HF checkpoint directory)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def _read_tensors(model_dir: str) -> dict[str, np.ndarray]:
    from safetensors.flax import load_file  # handles bfloat16, which numpy cannot

    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors weights found")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        for name, value in load_file(path).items():
            tensors[name] = np.asarray(value.astype(jnp.float32))
    return tensors


def load_llama(model_dir: str) -> tuple[LlamaShape, Params]:
    """Read ``config.json`` and the safetensors weights of an HF Llama checkpoint."""
    shape = LlamaShape.from_hf_config(read_config(model_dir))
    t = _read_tensors(model_dir)

    def layer_stack(suffix: str, transpose: bool) -> jax.Array:
        try:
            ws = [t[f"model.layers.{i}.{suffix}"] for i in range(shape.num_layers)]
        except KeyError as err:
            raise UserError(f"{model_dir}: weight {err.args[0]} missing from the checkpoint") from None
        return jnp.asarray(np.stack([w.T if transpose else w for w in ws]))

    embed_VxD = jnp.asarray(t["model.embed_tokens.weight"])
    if shape.tie_word_embeddings or "lm_head.weight" not in t:
        head_DxV = embed_VxD.T
    else:
        head_DxV = jnp.asarray(t["lm_head.weight"].T)
    params: Params = {
        "embed_VxD": embed_VxD,
        "head_DxV": head_DxV,
        "final_norm_D": jnp.asarray(t["model.norm.weight"]),
        "layers": {
            "attn_norm_LxD": layer_stack("input_layernorm.weight", False),
            "q_LxDxHE": layer_stack("self_attn.q_proj.weight", True),
            "k_LxDxKE": layer_stack("self_attn.k_proj.weight", True),
            "v_LxDxKE": layer_stack("self_attn.v_proj.weight", True),
            "o_LxHExD": layer_stack("self_attn.o_proj.weight", True),
            "mlp_norm_LxD": layer_stack("post_attention_layernorm.weight", False),
            "gate_LxDxF": layer_stack("mlp.gate_proj.weight", True),
            "up_LxDxF": layer_stack("mlp.up_proj.weight", True),
            "down_LxFxD": layer_stack("mlp.down_proj.weight", True),
        },
    }
    return shape, params


def init_cache(shape: LlamaShape, batch: int, slots: int) -> Cache:
    dims = (shape.num_layers, batch, slots, shape.num_kv_heads, shape.head_dim)
    return jnp.zeros(dims, jnp.float32), jnp.zeros(dims, jnp.float32)


def _rms_norm(x_BxTxD: jax.Array, w_D: jax.Array, eps: float) -> jax.Array:
    var = jnp.mean(jnp.square(x_BxTxD), axis=-1, keepdims=True)
    return w_D * (x_BxTxD * jax.lax.rsqrt(var + eps))


def _rope(x_BxTxNxE: jax.Array, pos_BxT: jax.Array, theta: float) -> jax.Array:
    e = x_BxTxNxE.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
    angles_BxTxE2 = pos_BxT[..., None].astype(jnp.float32) * inv_freq
    angles_BxTxE = jnp.concatenate([angles_BxTxE2, angles_BxTxE2], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BxTxE), jnp.sin(angles_BxTxE)
    x1, x2 = x_BxTxNxE[..., : e // 2], x_BxTxNxE[..., e // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BxTxNxE * cos + rotated * sin


def forward(
    shape: LlamaShape,
    params: Params,
    tokens_BxT: jax.Array,
    pad_B: jax.Array,
    start: jax.Array | int,
    cache: Cache,
    last_only: bool = False,
) -> tuple[jax.Array, Cache]:
    """Run ``tokens_BxT`` placed at cache slots ``[start, start + T)``; return logits ``[B, T, V]``
    (``[B, 1, V]`` for the last token only with ``last_only``) and the updated cache. Each query
    sees the real (non-pad) slots up to and including its own."""
    b, t = tokens_BxT.shape
    s = cache[0].shape[2]
    h, k, e = shape.num_heads, shape.num_kv_heads, shape.head_dim
    slot_T = start + jnp.arange(t)
    pos_BxT = jnp.maximum(slot_T[None, :] - pad_B[:, None], 0)
    key_slot_S = jnp.arange(s)
    visible_BxTxS = (key_slot_S[None, None, :] >= pad_B[:, None, None]) & (
        key_slot_S[None, None, :] <= slot_T[None, :, None]
    )
    # a finite "minus infinity": fully masked pad queries must not produce NaNs that leak into values
    bias_Bx1xTxS = jnp.where(visible_BxTxS, 0.0, jnp.finfo(jnp.float32).min)[:, None]
    x_BxTxD = params["embed_VxD"][tokens_BxT]

    def layer(carry, w):
        # the whole cache rides in the carry and is updated in place (no per-step copy of it)
        x_BxTxD, keys_LxBxSxKxE, values_LxBxSxKxE, index = carry
        y = _rms_norm(x_BxTxD, w["attn_norm_LxD"], shape.rms_norm_eps)
        q = _rope((y @ w["q_LxDxHE"]).reshape(b, t, h, e), pos_BxT, shape.rope_theta)
        kk = _rope((y @ w["k_LxDxKE"]).reshape(b, t, k, e), pos_BxT, shape.rope_theta)
        vv = (y @ w["v_LxDxKE"]).reshape(b, t, k, e)
        keys_LxBxSxKxE = jax.lax.dynamic_update_slice(keys_LxBxSxKxE, kk[None], (index, 0, start, 0, 0))
        values_LxBxSxKxE = jax.lax.dynamic_update_slice(values_LxBxSxKxE, vv[None], (index, 0, start, 0, 0))
        k_BxSxKxE = keys_LxBxSxKxE[index]
        v_BxSxKxE = values_LxBxSxKxE[index]
        q_BxKxGxTxE = q.reshape(b, t, k, h // k, e).transpose(0, 2, 3, 1, 4)
        scores = jnp.einsum("bkgte,bske->bkgts", q_BxKxGxTxE, k_BxSxKxE) * (e**-0.5)
        probs = jax.nn.softmax(scores + bias_Bx1xTxS[:, :, None], axis=-1)
        attn_BxKxGxTxE = jnp.einsum("bkgts,bske->bkgte", probs, v_BxSxKxE)
        attn_BxTxHE = attn_BxKxGxTxE.transpose(0, 3, 1, 2, 4).reshape(b, t, h * e)
        x_BxTxD = x_BxTxD + attn_BxTxHE @ w["o_LxHExD"]
        y = _rms_norm(x_BxTxD, w["mlp_norm_LxD"], shape.rms_norm_eps)
        x_BxTxD = x_BxTxD + (jax.nn.silu(y @ w["gate_LxDxF"]) * (y @ w["up_LxDxF"])) @ w["down_LxFxD"]
        return (x_BxTxD, keys_LxBxSxKxE, values_LxBxSxKxE, index + 1), None

    carry = (x_BxTxD, cache[0], cache[1], jnp.int32(0))
    (x_BxTxD, keys, values, _), _ = jax.lax.scan(layer, carry, params["layers"])
    new_cache = (keys, values)
    if last_only:
        x_BxTxD = x_BxTxD[:, -1:]
    x_BxTxD = _rms_norm(x_BxTxD, params["final_norm_D"], shape.rms_norm_eps)
    return x_BxTxD @ params["head_DxV"], new_cache
