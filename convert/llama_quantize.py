"""llama.cpp's quantizer (``llama_model_quantize`` through llama-cpp-python), in a child process.

Our writer produces f32/f16/bf16/q8_0 itself; every other type is made by llama.cpp from a float
GGUF, so the bytes are exactly what ``llama-quantize`` would write with the same options.

Why a child process: ``llama_model_quantize`` is one long C call with no cancel callback. Run in
the main thread, Ctrl-C and SIGTERM are deferred until Python code runs, which is inside the ctypes
log callback, where the exception is printed and dropped: the quantization went on and its output
was renamed into place with exit 0. A worker thread cannot be stopped either. So the parent starts
``python -m convert.llama_quantize`` (same interpreter, same ``convert`` package), sends it the job
on stdin and reads one JSON line per tensor back; the child ignores SIGINT and dies with its parent
(PR_SET_PDEATHSIG). On Ctrl-C or SIGTERM the parent kills the child, waits for it, and re-raises,
so the caller's temporary output is removed and nothing appears at the output path.

The child passes llama.cpp what llama-quantize passes: the importance matrix as a C array of
``llama_model_imatrix_data {name, data, size}`` ending in a NULL name (``in_sum2 / counts`` per
channel), per-tensor types as ``llama_model_tensor_override {pattern, type}`` ending in a NULL
pattern, ``allow_requantize``, and the ``quantize.imatrix.*`` metadata keys as kv overrides.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from gguf import GGMLQuantizationType as GGMLType

from convert.quant_tables import OutType

if TYPE_CHECKING:
    from convert.imatrix_file import Imatrix

TensorProgress = Callable[[int, int, str], None]
"""``on_tensor(done, total, name)`` after llama.cpp starts each tensor."""

_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_KV_INT, _KV_STR = 0, 3  # enum llama_model_kv_override_type
_GGML_TYPE_COUNT = 43  # the terminator type of llama-quantize's override list (ggml.h)


class QuantizeError(RuntimeError):
    """llama.cpp could not quantize a (valid) input: a failure of the work, not of the input."""


@dataclass(frozen=True)
class QuantizeOptions:
    """What llama-quantize's options add to a plain ``--type`` run."""

    imatrix: Path | None = None                                # a GGUF or legacy .dat importance matrix
    tensor_types: tuple[tuple[str, GGMLType], ...] = ()        # (regex searched in names, type), first match wins
    allow_requantize: bool = False                             # quantize tensors that already are quantized
    metadata: Mapping[str, str | int] = field(default_factory=dict)  # extra string/int keys for the output


def imatrix_metadata(path: Path, matrix: Imatrix) -> dict[str, str | int]:
    """The ``quantize.imatrix.*`` keys llama-quantize records (file, first dataset, entries, chunks).

    In llama-quantize's order too: llama.cpp writes overrides in the order given, and with the same
    order the output is byte-identical to llama-quantize's from the same matrix (benchmarks/imatrix_parity.py).
    """
    keys: dict[str, str | int] = {"quantize.imatrix.file": str(path)[:127]}
    if matrix.datasets:
        keys["quantize.imatrix.dataset"] = matrix.datasets[0][:127]
    keys["quantize.imatrix.entries_count"] = len(matrix.sums)
    if matrix.chunk_count > 0:
        keys["quantize.imatrix.chunks_count"] = int(matrix.chunk_count)
    return keys


def llama_quantize(
    inp: Path,
    out: Path,
    out_type: OutType,
    threads: int | None = None,
    options: QuantizeOptions | None = None,
    on_tensor: TensorProgress | None = None,
) -> None:
    """Quantize float GGUF ``inp`` to ``out_type`` at ``out`` (default threads: all cores).

    Ctrl-C / SIGTERM stop the child at once; the exception propagates to the caller, whose
    temporary ``out`` is then removed. A failure inside llama.cpp is a QuantizeError.
    """
    options = options or QuantizeOptions()
    job = {
        "inp": str(inp), "out": str(out), "ftype": out_type.ftype, "label": out_type.label,
        "nthread": int(threads) if threads else (os.cpu_count() or 1),
        "imatrix": str(options.imatrix) if options.imatrix else None,
        "tensor_types": [[p, int(t)] for p, t in options.tensor_types],
        "allow_requantize": bool(options.allow_requantize),
        "metadata": dict(options.metadata),
    }
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "convert.llama_quantize"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=errors, env=env, text=True, encoding="utf-8",
        )
        result: dict[str, Any] = {}
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            for line in proc.stdout:
                message = json.loads(line)
                if "tensor" in message:
                    if on_tensor is not None:
                        on_tensor(message["tensor"], message["of"], message["name"])
                else:
                    result = message
            status = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        if not result and status != 0:
            errors.seek(0)
            tail = errors.read().decode("utf-8", errors="replace").strip().splitlines()
            raise QuantizeError(f"llama.cpp's quantizer stopped (exit {status}) on {inp.name} to {out_type.label}: {(tail or ['no message'])[-1]}")
    if result.get("error"):
        raise QuantizeError(result["error"])


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child and reap it, so nothing writes the temporary output after we remove it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a killed process is reaped at once
        pass


# ----------------------------------------------------------------------------- the child


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies (even by SIGKILL), so no orphan keeps writing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _emit(message: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child_main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    _die_with_parent()
    job = json.loads(sys.stdin.read())
    try:
        _child_quantize(job)
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        _emit({"error": " ".join(str(err).split())})
        return 0
    _emit({"ok": True})
    return 0


def _child_quantize(job: Mapping[str, Any]) -> None:
    try:
        import llama_cpp
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise QuantizeError(f"llama-cpp-python is not installed ({err}); it is needed for quantized types other than q8_0") from None
    lines: list[str] = []
    pending: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: ARG001
        piece = text.decode("utf-8", errors="replace")
        lines.append(piece)
        pending.append(piece)
        if "\n" in piece or "]" in piece:
            joined = "".join(pending)
            pending.clear()
            m = _TENSOR_LINE.search(joined)
            if m:
                _emit({"tensor": int(m.group(1)), "of": int(m.group(2)), "name": m.group(3)})

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(job["nthread"])
    params.ftype = int(job["ftype"])
    params.allow_requantize = bool(job["allow_requantize"])
    keep: list[Any] = []  # ctypes buffers that must outlive the call
    if job["imatrix"]:
        from convert.imatrix_file import read_imatrix

        data = read_imatrix(job["imatrix"]).quantizer_data()
        entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
        for i, (name, values) in enumerate(sorted(data.items())):
            buf = (ctypes.c_float * values.size).from_buffer_copy(values.tobytes())
            keep += [buf, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        entries[len(data)].name = None  # the terminator
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if job["tensor_types"]:
        overrides = (llama_cpp.llama_model_tensor_override * (len(job["tensor_types"]) + 1))()
        for i, (pattern, ggml_type) in enumerate(job["tensor_types"]):
            keep.append(pattern.encode())
            overrides[i].pattern = keep[-1]
            overrides[i].type = int(ggml_type)
        overrides[len(job["tensor_types"])].pattern = None
        overrides[len(job["tensor_types"])].type = _GGML_TYPE_COUNT
        keep.append(overrides)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if job["metadata"]:
        kvs = (llama_cpp.llama_model_kv_override * (len(job["metadata"]) + 1))()
        for i, (key, value) in enumerate(job["metadata"].items()):
            entry: Any = kvs[i]  # a ctypes struct whose value is a union (typeshed cannot say which member)
            entry.key = key.encode()[:127]
            if isinstance(value, int):
                entry.tag = _KV_INT
                entry.value.val_i64 = value
            else:
                entry.tag = _KV_STR
                entry.value.val_str = str(value).encode()[:127]
        kvs[len(job["metadata"])].key = b""
        keep.append(kvs)
        params.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    status = llama_cpp.llama_model_quantize(str(job["inp"]).encode(), str(job["out"]).encode(), ctypes.byref(params))
    if status != 0:
        text = "".join(lines)
        errors = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() or "failed" in ln.lower() or "missing" in ln.lower()]
        detail = errors[-1] if errors else (text.strip().splitlines() or ["no message"])[-1]
        raise QuantizeError(f"llama.cpp could not quantize {Path(job['inp']).name} to {job['label']}: {detail}")


if __name__ == "__main__":
    sys.exit(_child_main())
