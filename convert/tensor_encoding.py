"""Turn a torch tensor into the bytes of one GGML tensor type, a slab of rows at a time.

The writer calls ``encode`` and writes each returned piece as it comes, so converting a tensor
costs its source bytes plus a slab of temporaries (``SLAB_ELEMENTS`` float32 values), not a float32
copy of the whole tensor. The arithmetic matches llama.cpp's converter, which widens every weight
to float32 first: float16 is round-to-nearest-even from float32 (torch and numpy agree), bfloat16
follows ggml's ``ggml_compute_fp32_to_bf16`` (round-to-nearest-even, NaN kept quiet) through
gguf-py's numpy encoder (``gguf.quants``, what llama.cpp's converter uses), and Q8_0 is ggml's C
reference quantizer (``convert.ggml_native``), falling back to ``gguf.quants`` (the same bytes)
where llama-cpp-python is absent.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch

from gguf import GGMLQuantizationType as GGMLType
from gguf.quants import quantize

from convert.ggml_native import native_q8_0

# 4 Mi float32 values (16 MiB) per slab: big enough that numpy's per-call overhead vanishes,
# small enough that Q8_0's few temporaries stay well under 100 MiB.
SLAB_ELEMENTS = 4 * 1024 * 1024

DIRECT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as 2-D (rows, row length); 0-D and 1-D tensors are one row."""
    t = tensor.detach().to("cpu")
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.reshape(-1, t.shape[-1])


def _bf16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bytes, as ggml does (gguf-py's numpy encoder)."""
    return quantize(np.ascontiguousarray(values, dtype=np.float32), GGMLType.BF16).reshape(-1)


def _q8_0_bytes(values: np.ndarray) -> np.ndarray:
    """float32 to Q8_0 blocks: ggml's C quantizer when llama-cpp-python is there, gguf-py's otherwise."""
    native = native_q8_0()
    if native is not None:
        return native(values)
    return quantize(np.ascontiguousarray(values, dtype=np.float32), GGMLType.Q8_0).reshape(-1)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def default_threads() -> int:
    """Threads for numpy encoding: the CPUs this process may use, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(8, os.cpu_count() or 1))


def _in_parallel(fn: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, threads: int) -> np.ndarray:
    """Apply a row-wise numpy encoder to row groups on ``threads`` threads (numpy releases the GIL)."""
    if threads <= 1 or rows.shape[0] < 2 * threads:
        return fn(rows)
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="gguf-encode")
    parts = np.array_split(rows, threads)
    return np.concatenate(list(pool.map(fn, parts)))


def encode(tensor: torch.Tensor, ggml_type: GGMLType, threads: int | None = None) -> Iterator[memoryview | bytes]:
    """Yield the GGML bytes of ``tensor`` as ``ggml_type``, slab by slab, in row-major order.

    ``threads`` (default: the usable CPUs, at most 8) splits each slab's Q8_0 / bfloat16 encoding
    across threads; the bytes do not depend on it.
    """
    threads = default_threads() if threads is None else max(1, int(threads))
    rows = _rows(tensor)
    n_rows, row_len = rows.shape
    if n_rows == 0 or row_len == 0:
        return
    if ggml_type == GGMLType.BF16 and rows.dtype == torch.bfloat16:
        # bf16 -> f32 -> bf16 is the identity (for every non-NaN value), so copy the bytes.
        yield rows.contiguous().view(torch.int16).numpy().data.cast("B")
        return
    if ggml_type == GGMLType.F16 and rows.dtype == torch.float16:
        yield rows.contiguous().numpy().data.cast("B")
        return
    if ggml_type == GGMLType.F32 and rows.dtype == torch.float32:
        yield rows.contiguous().numpy().data.cast("B")
        return
    step = max(1, SLAB_ELEMENTS // row_len)
    for start in range(0, n_rows, step):
        slab = rows[start:start + step]
        if ggml_type == GGMLType.F16:
            # bf16/f32 -> f16 in one step: torch widens to float32 internally, then rounds to nearest even
            yield slab.to(torch.float16).contiguous().numpy().data.cast("B")
        elif ggml_type == GGMLType.F32:
            yield slab.to(torch.float32).contiguous().numpy().data.cast("B")
        elif ggml_type == GGMLType.BF16:
            yield np.ascontiguousarray(_in_parallel(_bf16_bytes, slab.to(torch.float32).numpy(), threads)).data.cast("B")
        elif ggml_type == GGMLType.Q8_0:
            yield np.ascontiguousarray(_in_parallel(_q8_0_bytes, slab.to(torch.float32).numpy(), threads)).data.cast("B")
        else:
            raise ValueError(f"convert writes only {', '.join(t.name for t in DIRECT_TYPES)}, not {ggml_type.name}")
