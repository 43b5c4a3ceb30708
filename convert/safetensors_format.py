"""The safetensors file format, read and written without loading a file whole.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header) plus an optional ``__metadata__`` of strings, then the raw little-endian tensor bytes.
Parsing the header ourselves lets us validate a file (truncation, overlapping or out-of-range
offsets) before any work starts and read one tensor with a single ``readinto``; writing the header
first lets a merge stream tensors to disk one at a time.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

import torch

from convert.errors import ConvertError

# safetensors dtype codes and the torch dtypes they hold.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024
# Bounds on a tensor's shape: no model tensor has more dimensions, or a dimension anywhere near.
MAX_DIMS = 8
MAX_DIM = 1 << 40


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of a torch dtype."""
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and byte range (absolute in the file)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; return the tensors (file order) and metadata.

    Raises ConvertError naming the file for any inconsistency, including a file shorter than its
    header promises (a truncated download).
    """
    fix = "Re-download or re-create this file."
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConvertError("not a safetensors file (too short)", path, fix)
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise ConvertError("corrupted safetensors header (bad length)", path, fix)
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ConvertError("corrupted safetensors header (not JSON)", path, fix) from None
    except OSError as err:
        raise ConvertError(f"cannot read: {err.strerror}", path, "Check the path and its permissions.") from None
    if not isinstance(header, dict):
        raise ConvertError("corrupted safetensors header (not a JSON object)", path, fix)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ConvertError("corrupted safetensors header (__metadata__ must be an object of strings)", path, fix)
    base = 8 + n
    infos = [_entry(name, entry, path, base, size) for name, entry in header.items()]
    infos.sort(key=lambda t: t.start)
    for a, b in zip(infos, infos[1:]):
        if b.start < a.end:
            raise ConvertError(f"tensors {a.name!r} and {b.name!r} overlap", path, fix)
    return {t.name: t for t in infos}, dict(metadata)


def _is_count(value: object, high: int) -> bool:
    """A JSON integer in ``[0, high]`` (``int(x)`` would let ``2.5``, ``"3"`` and ``true`` through)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def _entry(name: str, entry: object, path: Path, base: int, size: int) -> TensorInfo:
    """One header entry, checked: known dtype, sane shape, offsets inside the data and matching the size.

    Every field is checked for its JSON type and range, because a negative offset would make the
    reader take the header's own bytes as the tensor (garbage written, exit 0), and an absurd
    dimension would size a loop or an allocation by it.
    """
    fix = "Re-download or re-create this file."
    if not isinstance(entry, dict):
        raise ConvertError(f"corrupted safetensors header entry for {name!r} (not an object)", path, fix)
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str) or code not in DTYPES:
        raise ConvertError(f"tensor {name!r} has an unsupported dtype {str(code)[:20]!r}", path, fix)
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(d, MAX_DIM) for d in shape):
        raise ConvertError(f"tensor {name!r} has a bad shape {str(shape)[:60]} (at most {MAX_DIMS} dimensions, each 0 to {MAX_DIM})", path, fix)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(x, size) for x in offsets):
        raise ConvertError(f"tensor {name!r} has bad data_offsets {str(offsets)[:60]} (two byte offsets from 0 to the file size)", path, fix)
    dtype = DTYPES[code]
    begin, end = offsets
    if end < begin or (end - begin) != math.prod(shape) * element_size(dtype):
        raise ConvertError(f"tensor {name!r} has a byte range that does not match its shape and dtype", path, fix)
    if base + end > size:
        raise ConvertError(f"truncated: tensor {name!r} ends past the end of the file", path, fix)
    return TensorInfo(name, dtype, tuple(shape), path, base + begin, base + end)


def read_tensor(info: TensorInfo, handle: BinaryIO | None = None) -> torch.Tensor:
    """Read one tensor into a fresh CPU tensor with one ``readinto`` (no intermediate copy)."""
    return read_rows(info, 0, info.shape[0] if info.shape else 1, handle)


def row_count(shape: tuple[int, ...]) -> int:
    """Rows along the leading dimension (a scalar counts as one row)."""
    return shape[0] if shape else 1


def read_rows(info: TensorInfo, start: int, stop: int, handle: BinaryIO | None = None) -> torch.Tensor:
    """Read rows ``start:stop`` of the leading dimension into a fresh CPU tensor.

    Rows are contiguous on disk, so a slice of a large tensor (an embedding matrix) costs only its
    own bytes: this is what keeps the merge's memory at a few chunks, not a few tensors.
    """
    rows = row_count(info.shape)
    row_bytes = info.nbytes // rows if rows else 0
    shape = (stop - start, *info.shape[1:]) if info.shape else ()
    out = torch.empty(shape, dtype=info.dtype)
    nbytes = (stop - start) * row_bytes
    if nbytes == 0:
        return out
    view = out.view(-1).view(torch.uint8).numpy().data
    own = handle is None
    f: BinaryIO = open(info.file, "rb") if handle is None else handle
    try:
        f.seek(info.start + start * row_bytes)
        got = f.readinto(view)  # type: ignore[attr-defined]  # every binary file object has it; typing.BinaryIO omits it
    finally:
        if own:
            f.close()
    if got != nbytes:
        raise ConvertError(f"truncated while reading tensor {info.name!r}", info.file, "Re-download or re-create this file.")
    return out


def header_bytes(tensors: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Build the header for tensors written in the given order; return it with each tensor's range.

    The JSON is padded with spaces to a multiple of 8 bytes so that tensor data is aligned, as the
    reference implementation does.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    ranges: dict[str, tuple[int, int]] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * element_size(dtype)
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        ranges[name] = (offset, offset + nbytes)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ranges


class StreamingWriter:
    """Write one safetensors file whose tensor list is known in advance, one tensor at a time.

    The header is written first; ``write`` must then be called in the planned order. ``close``
    checks that every planned tensor arrived, so a short file can never be produced silently.
    """

    def __init__(self, path: Path, plan: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.plan = dict(plan)
        self.order = list(self.plan)
        head, self.ranges = header_bytes(self.plan, metadata)
        self._f = open(path, "wb")
        self._f.write(head)
        self._next = 0
        self._done_bytes = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor (the next one planned)."""
        dtype, shape = self.plan.get(name, (None, None))
        if tuple(tensor.shape) != tuple(shape or ()):
            raise RuntimeError(f"tensor {name!r} has shape {tuple(tensor.shape)}, planned {shape}")
        self.write_rows(name, tensor)

    def write_rows(self, name: str, rows: torch.Tensor) -> None:
        """Append the next rows of the current tensor; moves on when the tensor is complete."""
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected:
            raise RuntimeError(f"safetensors writer expected {expected!r}, got {name!r}")
        dtype, shape = self.plan[name]
        if rows.dtype != dtype or tuple(rows.shape[1:]) != tuple(shape[1:]):
            raise RuntimeError(f"rows of {name!r} are {rows.dtype}{tuple(rows.shape)}, planned {dtype}{tuple(shape)}")
        t = rows.detach().to("cpu").contiguous()
        if t.numel():
            self._f.write(t.view(-1).view(torch.uint8).numpy().data)
        self._done_bytes += t.numel() * t.element_size()
        begin, end = self.ranges[name]
        if self._done_bytes > end - begin:
            raise RuntimeError(f"too many rows written for {name!r}")
        if self._done_bytes == end - begin:
            self._next += 1
            self._done_bytes = 0

    def close(self) -> None:
        if self._next != len(self.order):
            self._f.close()
            raise RuntimeError(f"{self.path}: only {self._next} of {len(self.order)} tensors were written")
        self._f.flush()
        self._f.close()

    def abort(self) -> None:
        self._f.close()
