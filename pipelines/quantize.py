"""Weight quantization for a frozen LoRA base (``method.quantize_base``): pure JAX array functions.

Every function quantizes along the **last** axis of ``w`` (a linear layer's input dimension, once
the caller has moved its input axes last and flattened them); all other axes are rows (output
channels, stacked layers).

``int8`` — symmetric, one scale per row (output channel)::

    scale = max|w_row| / 127      code = round(w / scale) in [-127, 127]      w' = code * scale

  Error bound, per element: ``|w - w'| <= scale / 2 = max|w_row| / 254`` (round to nearest; plus
  float rounding of the product). For Gaussian weights the relative Frobenius error is 0.6% at a
  row length of 64, 0.8% at 1536 (the row maximum grows like sqrt(2 ln n)·σ).
  Storage: 1 byte per weight + 4 bytes per row.

``nf4`` — QLoRA's 4-bit NormalFloat (Dettmers et al. 2023, as in bitsandbytes): blocks of
``NF4_BLOCK`` = 64 consecutive weights along the input dimension, each with its absmax scale; each
weight is the nearest of the 16 ``NF4_CODEBOOK`` values (quantiles of a normal distribution scaled
to [-1, 1], 0 exactly representable) times the block's scale; two 4-bit codes per ``uint8``
(element ``2i`` in the low nibble, ``2i + 1`` in the high one). A row whose length is not a
multiple of 64 is zero-padded to one (``dequantize_nf4`` takes the true length back).

  Error bound, per element: ``|w - w'| <= absmax_block * NF4_MAX_HALF_GAP`` (half the widest gap
  between neighbouring codebook values, 0.152, between -1 and -0.696). For Gaussian weights the
  relative Frobenius error is ~9% (any row length): NF4 spends its 16 levels where normal weights are dense.
  Storage: 0.5 byte per weight + 4 bytes per 64 weights (0.5625 byte per weight; QLoRA's double
  quantization of the scales, 0.127 instead of 0.5 bits per weight, is not done here).

Codebook values and zeros round-trip exactly (``dequantize(quantize(c * s)) == c * s`` up to float
rounding of the scale).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

INT8_MAX = 127
NF4_BLOCK = 64

# bitsandbytes' / QLoRA's NF4 levels (float32)
NF4_CODEBOOK = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044006, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)
NF4_MAX_HALF_GAP = float(np.max(np.diff(NF4_CODEBOOK)) / 2)  # 0.1519
_NF4_MIDPOINTS = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2

KINDS = ("int8", "nf4")


class Quantized(NamedTuple):
    codes: jnp.ndarray  # int8 [..., n] or uint8 [..., padded_n / 2]
    scales: jnp.ndarray  # float32 [..., 1] (int8) or [..., padded_n / 64] (nf4)


def _safe(absmax):
    """A divisor for the normalisation: an all-zero row/block quantizes to code 0, scale 0."""
    return jnp.where(absmax == 0, jnp.ones_like(absmax), absmax)


def quantize_int8(w) -> Quantized:
    w = jnp.asarray(w, jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=-1, keepdims=True) / INT8_MAX
    codes = jnp.clip(jnp.round(w / _safe(scale)), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return Quantized(codes, scale)


def dequantize_int8(q: Quantized, dtype=jnp.float32):
    return (q.codes.astype(jnp.float32) * q.scales).astype(dtype)


def nf4_padded_length(n: int) -> int:
    return -(-n // NF4_BLOCK) * NF4_BLOCK


def nf4_codes(x) -> jnp.ndarray:
    """Index (0..15, uint8) of the nearest NF4 level of each value of ``x`` in [-1, 1]."""
    return jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), x, side="left").astype(jnp.uint8)


def pack_nibbles(codes) -> jnp.ndarray:
    """[..., 2k] codes 0..15 -> [..., k] uint8, element 2i in the low nibble, 2i + 1 in the high one."""
    codes = codes.astype(jnp.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed) -> jnp.ndarray:
    """Inverse of ``pack_nibbles``."""
    low, high = packed & 0xF, packed >> 4
    return jnp.stack([low, high], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize_nf4(w) -> Quantized:
    w = jnp.asarray(w, jnp.float32)
    n = w.shape[-1]
    padded = nf4_padded_length(n)
    if padded != n:
        w = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, padded - n)])
    blocks = w.reshape(*w.shape[:-1], padded // NF4_BLOCK, NF4_BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    codes = nf4_codes(blocks / _safe(absmax)[..., None]).reshape(*w.shape[:-1], padded)
    return Quantized(pack_nibbles(codes), absmax)


def dequantize_nf4(q: Quantized, n: int, dtype=jnp.float32):
    """The [..., n] weights (``n``: the unpadded row length)."""
    codes = unpack_nibbles(q.codes)
    values = jnp.asarray(NF4_CODEBOOK)[codes.astype(jnp.int32)]
    blocks = values.reshape(*codes.shape[:-1], -1, NF4_BLOCK) * q.scales[..., None]
    return blocks.reshape(*codes.shape)[..., :n].astype(dtype)


def quantize(w, kind: str) -> Quantized:
    if kind == "int8":
        return quantize_int8(w)
    if kind == "nf4":
        return quantize_nf4(w)
    raise ValueError(f"unknown quantization {kind!r} (expected one of {', '.join(KINDS)})")


def dequantize(q: Quantized, kind: str, n: int, dtype=jnp.float32):
    if kind == "int8":
        return dequantize_int8(q, dtype)
    if kind == "nf4":
        return dequantize_nf4(q, n, dtype)
    raise ValueError(f"unknown quantization {kind!r} (expected one of {', '.join(KINDS)})")
