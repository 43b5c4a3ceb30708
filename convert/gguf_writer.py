"""A streaming GGUF writer: header, metadata and tensor directory first, then tensor data one at a time.

A GGUF v3 file is::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv    x (string key | u32 value type | value)
    n_tensors x (string name | u32 n_dims | u64 dims (fastest first) | u32 ggml type | u64 offset)
    zero padding to the alignment | tensor data, each tensor padded to the alignment

Strings are a u64 byte length and UTF-8 bytes; arrays are a u32 element type, a u64 count and
the elements. Because every tensor's type and shape is known before its data exists, the whole
directory (with offsets) can be written up front and the data streamed after it, one tensor at a
time: memory is one tensor, never the model.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np

from convert.gguf_constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGMLType, GGUFValueType
from convert.quant_tables import tensor_nbytes

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}
_NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "<u1",
}


def _string(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack("<Q", len(raw)) + raw


def infer_type(value: object) -> tuple[GGUFValueType, GGUFValueType | None]:
    """The GGUF type of a free-form Python value: (type, element type for arrays).

    ints become INT32 when they fit and INT64 otherwise; floats become FLOAT64 so that a recorded
    number (a merge ratio, say) reads back exactly.
    """
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING, None
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None
    if isinstance(value, int):
        return (GGUFValueType.INT32 if -(2**31) <= value < 2**31 else GGUFValueType.INT64), None
    if isinstance(value, float):
        return GGUFValueType.FLOAT64, None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("a GGUF array cannot be empty")
        kinds = {infer_type(v)[0] for v in value}
        if kinds <= {GGUFValueType.INT32, GGUFValueType.INT64}:
            kinds = {max(kinds)}
        if len(kinds) != 1 or GGUFValueType.ARRAY in kinds:
            raise ValueError("a GGUF array needs elements of one scalar type")
        return GGUFValueType.ARRAY, kinds.pop()
    raise ValueError(f"cannot store a {type(value).__name__} in GGUF metadata")


def pack_value(value: object, vtype: GGUFValueType, elem: GGUFValueType | None = None) -> bytes:
    """The bytes of one metadata value (without the key and type tag)."""
    if vtype == GGUFValueType.STRING:
        return _string(value)  # type: ignore[arg-type]
    if vtype in _SCALAR_FORMATS:
        return struct.pack(_SCALAR_FORMATS[vtype], value)
    if vtype == GGUFValueType.ARRAY:
        if elem is None:
            raise ValueError("array element type missing")
        items = list(value)  # type: ignore[call-overload]
        head = struct.pack("<IQ", elem, len(items))
        if elem == GGUFValueType.STRING:
            return head + b"".join(_string(s) for s in items)
        return head + np.asarray(items, dtype=_NUMPY_DTYPES[elem]).tobytes()
    raise ValueError(f"unsupported GGUF value type {vtype!r}")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in the directory: GGUF name, HF-order shape, GGML type, size and offset."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    nbytes: int
    offset: int


def _pad(n: int, alignment: int) -> int:
    return (alignment - n % alignment) % alignment


class GGUFWriter:
    """Write one GGUF file whose tensors are all declared before any data is written.

    Use: ``add_value``/``add_array`` for metadata, ``add_tensor`` for each tensor (in data order),
    ``write_header()``, then ``write_tensor(name, pieces)`` for each tensor in the same order and
    ``close()``. Out-of-order or short tensor data raises, so a malformed file is never produced.
    """

    def __init__(self, path: Path, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> None:
        self.path = Path(path)
        self.alignment = alignment
        self.kv: dict[str, bytes] = {}
        self.tensors: list[TensorEntry] = []
        self._offset = 0
        self._file: BinaryIO | None = None
        self._next = 0

    # -- metadata ------------------------------------------------------------------------
    def add_value(self, key: str, value: object, vtype: GGUFValueType | None = None, elem: GGUFValueType | None = None) -> None:
        """Set one key (replacing an earlier value). The type is inferred when not given."""
        if self._file is not None:
            raise RuntimeError("metadata must be added before write_header()")
        if vtype is None:
            vtype, elem = infer_type(value)
        self.kv.pop(key, None)
        self.kv[key] = struct.pack("<I", vtype) + pack_value(value, vtype, elem)

    def add_array(self, key: str, values: Sequence[object], elem: GGUFValueType) -> None:
        """Set an array-valued key with an explicit element type."""
        self.add_value(key, values, GGUFValueType.ARRAY, elem)

    def remove(self, key: str) -> None:
        self.kv.pop(key, None)

    # -- tensor directory ----------------------------------------------------------------
    def add_tensor(self, name: str, shape: Sequence[int], ggml_type: GGMLType) -> TensorEntry:
        """Declare a tensor (HF-order shape: last dimension is the row). Data comes later, in order."""
        if self._file is not None:
            raise RuntimeError("tensors must be declared before write_header()")
        if any(t.name == name for t in self.tensors):
            raise ValueError(f"duplicate tensor name {name!r}")
        shape = tuple(int(d) for d in shape)
        nbytes = tensor_nbytes(ggml_type, shape)
        entry = TensorEntry(name, shape, ggml_type, nbytes, self._offset)
        self.tensors.append(entry)
        self._offset += nbytes + _pad(nbytes, self.alignment)
        return entry

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    # -- writing -------------------------------------------------------------------------
    def write_header(self) -> None:
        """Write the header, metadata and tensor directory, padded to the alignment."""
        out = bytearray()
        out += GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))
        for key, raw in self.kv.items():
            out += _string(key) + raw
        for t in self.tensors:
            dims = tuple(reversed(t.shape)) if t.shape else (1,)
            out += _string(t.name) + struct.pack("<I", len(dims))
            out += struct.pack(f"<{len(dims)}Q", *dims)
            out += struct.pack("<IQ", int(t.ggml_type), t.offset)
        out += b"\0" * _pad(len(out), self.alignment)
        self._file = open(self.path, "wb")
        self._file.write(out)

    def write_tensor(self, name: str, pieces: Iterable[bytes | bytearray | memoryview | np.ndarray]) -> int:
        """Write the data of the next declared tensor from its byte pieces; returns its size."""
        if self._file is None:
            raise RuntimeError("write_header() first")
        if self._next >= len(self.tensors) or self.tensors[self._next].name != name:
            expected = self.tensors[self._next].name if self._next < len(self.tensors) else None
            raise RuntimeError(f"GGUF writer expected tensor {expected!r}, got {name!r}")
        entry = self.tensors[self._next]
        written = 0
        for piece in pieces:
            view = memoryview(piece).cast("B") if not isinstance(piece, np.ndarray) else np.ascontiguousarray(piece).data.cast("B")
            self._file.write(view)
            written += view.nbytes
        if written != entry.nbytes:
            raise RuntimeError(f"tensor {name!r}: wrote {written} bytes, its {entry.ggml_type.name} shape {entry.shape} needs {entry.nbytes}")
        self._file.write(b"\0" * _pad(entry.nbytes, self.alignment))
        self._next += 1
        return written

    def close(self) -> None:
        """Finish the file; raises if a declared tensor was never written."""
        if self._file is None:
            raise RuntimeError("write_header() was never called")
        try:
            if self._next != len(self.tensors):
                raise RuntimeError(f"{self.path}: only {self._next} of {len(self.tensors)} tensors were written")
            self._file.flush()
        finally:
            self._file.close()

    def abort(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


__all__ = ["GGUFWriter", "TensorEntry", "infer_type", "pack_value"]
