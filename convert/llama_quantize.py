"""llama.cpp's quantizer (``llama_model_quantize`` through llama-cpp-python) for the k-quants and friends.

Our writer produces f32/f16/bf16/q8_0 itself; every other type is made by llama.cpp from a
float GGUF, so the bytes are exactly what ``llama-quantize`` would write. llama.cpp logs through
a global callback; while it runs, its log is captured (not printed) and the last error lines are
put in the exception if it fails. Types that need an importance matrix never get here: they are
refused when the output type is parsed (``convert.quant_tables.outtype``).
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from convert.quant_tables import OutType

_LOCK = threading.Lock()


class QuantizeError(RuntimeError):
    """llama.cpp could not quantize a (valid) input: a failure of the work, not of the input."""


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise QuantizeError(f"llama-cpp-python is not installed ({err}); it is needed for quantized types other than q8_0") from None
    return llama_cpp


def llama_quantize(inp: Path, out: Path, out_type: OutType, threads: int | None = None) -> None:
    """Quantize float GGUF ``inp`` to ``out_type`` at ``out`` with ``threads`` threads (default: all cores)."""
    llama_cpp = _llama_cpp()
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: ARG001
        lines.append(text.decode("utf-8", errors="replace"))

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(threads) if threads else (os.cpu_count() or 1)
    params.ftype = out_type.ftype
    with _LOCK:
        llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
        try:
            status = llama_cpp.llama_model_quantize(str(inp).encode(), str(out).encode(), ctypes.byref(params))
        finally:
            _restore_log(llama_cpp)
    if status != 0:
        text = "".join(lines)
        errors = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        detail = errors[-1] if errors else (text.strip().splitlines() or ["no message"])[-1]
        raise QuantizeError(f"llama.cpp could not quantize {inp.name} to {out_type.label}: {detail}")


def _restore_log(llama_cpp) -> None:
    """Give llama.cpp back the callback llama-cpp-python installs at import."""
    try:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except (ImportError, AttributeError):  # pragma: no cover - older bindings
        llama_cpp.llama_log_set(None, ctypes.c_void_p(0))
