"""ggml's own C row encoders, reached through the shared library llama-cpp-python ships.

Q8_0 in numpy costs about six array passes per value; ggml's C reference quantizer costs one, so
where llama-cpp-python is installed the converter calls it (``quantize_row_q8_0_ref``: the very
function llama.cpp's tools use, so the bytes are the same by construction) and falls back to
gguf-py's bit-identical numpy version (``gguf.quants``) where it is not. The library is found
without importing ``llama_cpp`` (whose import is slow).
"""
from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK8_0, BLOCK_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0]


@lru_cache(maxsize=1)
def _ggml_base() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            path = Path(folder) / "lib" / name
            if path.is_file():
                try:
                    lib = ctypes.CDLL(str(path))
                    fn = lib.quantize_row_q8_0_ref
                except (OSError, AttributeError):
                    return None
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
                fn.restype = None
                return lib
    return None


def _quantize_q8_0_native(rows: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if x.size % QK8_0:
        raise ValueError(f"Q8_0 needs rows that are a multiple of {QK8_0} elements, got {x.shape[-1]}")
    out = np.empty(x.size // QK8_0 * BLOCK_BYTES, dtype=np.uint8)
    _ggml_base().quantize_row_q8_0_ref(x.ctypes.data, out.ctypes.data, x.size)  # type: ignore[union-attr]
    return out


def native_q8_0() -> Callable[[np.ndarray], np.ndarray] | None:
    """ggml's C Q8_0 quantizer as a numpy function, or None when llama-cpp-python is not installed."""
    return _quantize_q8_0_native if _ggml_base() is not None else None
