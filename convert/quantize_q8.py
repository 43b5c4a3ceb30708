"""Q8_0 quantization in numpy, bit-exact with ggml's reference ``quantize_row_q8_0_ref``.

A Q8_0 block is 32 weights stored as one float16 scale ``d`` and 32 signed bytes ``q`` with
``w ≈ d * q``. The reference (ggml-quants.c) computes, all in float32::

    amax = max |x|            d  = amax / 127          id = d ? 1/d : 0
    q    = roundf(x * id)     (round half away from zero)      d stored as fp16 (round to nearest even)

Every step below is the same IEEE float32 operation in the same order, so the bytes are identical
to llama.cpp's C quantizer and to its Python converter. ``roundf`` is computed as
``trunc(v + copysign(0.49999997, v))`` (the cast to int8 truncates): with 0.49999997 being the
float just below 0.5, this equals ``roundf`` for every float32 of magnitude up to 128 (checked
exhaustively), and ``|x * id|`` never exceeds 127 by more than a rounding error. The caller passes
row slabs, so the temporaries stay a few slab sizes.
"""
from __future__ import annotations

import numpy as np

QK8_0 = 32
BLOCK_BYTES = 2 + QK8_0
_JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))


def quantize_q8_0(rows: np.ndarray) -> np.ndarray:
    """Quantize float32 values (last dimension a multiple of 32) to Q8_0: a flat uint8 array of blocks."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if x.shape and x.shape[-1] % QK8_0:
        raise ValueError(f"Q8_0 needs rows that are a multiple of {QK8_0} elements, got {x.shape[-1]}")
    blocks = x.reshape(-1, QK8_0)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32, copy=False)
    scaled = blocks * inv
    scaled += np.copysign(_JUST_BELOW_HALF, scaled)
    out = np.empty((blocks.shape[0], BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = scaled.astype(np.int8).view(np.uint8)
    return out.reshape(-1)


def dequantize_q8_0(data: np.ndarray, n: int) -> np.ndarray:
    """Q8_0 bytes back to ``n`` float32 values."""
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)[:n]
