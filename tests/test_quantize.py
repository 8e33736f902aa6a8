"""The weight codecs of ``method.quantize_base`` (pipelines/quantize.py): the documented error bounds,
exact round trips of representable values, nibble packing."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.quantize import (
    INT8_MAX,
    KINDS,
    NF4_BLOCK,
    NF4_CODEBOOK,
    NF4_MAX_HALF_GAP,
    dequantize,
    pack_nibbles,
    quantize,
    unpack_nibbles,
)


def gaussian(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.02, (rows, cols)).astype(np.float32)


def relative_error(w, kind):
    back = np.asarray(dequantize(quantize(w, kind), kind, w.shape[-1]))
    return np.linalg.norm(back - w) / np.linalg.norm(w), back


@pytest.mark.parametrize("cols", [64, 576, 1536])
def test_int8_error_bound(cols):
    w = gaussian(128, cols)
    rel, back = relative_error(w, "int8")
    assert rel < 0.01  # measured 0.6% (64) .. 0.8% (1536)
    bound = np.abs(w).max(axis=-1, keepdims=True) / (2 * INT8_MAX)
    assert np.all(np.abs(back - w) <= bound * (1 + 1e-5))


@pytest.mark.parametrize("cols", [64, 576, 100])  # 100: padded to two blocks
def test_nf4_error_bound(cols):
    w = gaussian(128, cols)
    rel, back = relative_error(w, "nf4")
    assert 0.05 < rel < 0.11  # measured ~9.2%
    padded = np.pad(w, [(0, 0), (0, -cols % NF4_BLOCK)])
    absmax = np.abs(padded.reshape(128, -1, NF4_BLOCK)).max(axis=-1)
    bound = np.repeat(absmax, NF4_BLOCK, axis=-1)[:, :cols] * NF4_MAX_HALF_GAP
    assert np.all(np.abs(back - w) <= bound * (1 + 1e-5))


def test_storage_shapes_and_dtypes():
    w = gaussian(8, 576)
    q8 = quantize(w, "int8")
    assert (q8.codes.dtype, q8.codes.shape, q8.scales.shape) == (np.int8, (8, 576), (8, 1))
    q4 = quantize(w, "nf4")
    assert (q4.codes.dtype, q4.codes.shape, q4.scales.shape) == (np.uint8, (8, 288), (8, 9))


def test_nf4_codebook_values_round_trip_exactly():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (4, 3 * NF4_BLOCK))
    codes[:, ::NF4_BLOCK] = 15  # every block holds +1.0, so its absmax is exactly its scale
    scales = np.array([0.5, 0.25, 2.0], np.float32)
    w = NF4_CODEBOOK[codes] * np.repeat(scales, NF4_BLOCK)[None]
    q = quantize(w, "nf4")
    np.testing.assert_array_equal(np.asarray(unpack_nibbles(q.codes)), codes)
    np.testing.assert_array_equal(np.asarray(dequantize(q, "nf4", w.shape[-1])), w)


def test_int8_integers_round_trip_exactly():
    codes = np.random.default_rng(2).integers(-INT8_MAX, INT8_MAX + 1, (4, 64)).astype(np.float32)
    codes[:, 0] = INT8_MAX
    w = codes * np.float32(0.125)
    q = quantize(w, "int8")
    np.testing.assert_array_equal(np.asarray(q.codes), codes.astype(np.int8))
    np.testing.assert_array_equal(np.asarray(dequantize(q, "int8", 64)), w)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_rows_stay_zero(kind):
    w = gaussian(3, 128)
    w[1] = 0.0
    back = np.asarray(dequantize(quantize(w, kind), kind, 128))
    assert np.all(np.isfinite(back)) and np.all(back[1] == 0.0)


def test_nibble_packing():
    codes = np.array([[1, 2, 15, 0, 7, 8]], np.uint8)
    packed = np.asarray(pack_nibbles(codes))
    assert packed.tolist() == [[1 | 2 << 4, 15, 7 | 8 << 4]]
    np.testing.assert_array_equal(np.asarray(unpack_nibbles(packed)), codes)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        quantize(gaussian(1, 64), "int4")
