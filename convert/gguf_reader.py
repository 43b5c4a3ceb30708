"""Read a GGUF file's metadata and tensor directory, and map its tensor data without loading it.

Used to check an input before handing it to llama.cpp's quantizer (a truncated or foreign file
gets a one-line error instead of a crash), and to re-encode a lossless intermediate file into
other direct types (f16, bf16, q8_0) without reading the HF checkpoint a second time.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from convert.errors import ConvertError
from convert.gguf_constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLType, GGUFValueType, Keys
from convert.quant_tables import tensor_nbytes

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "<?",
}
_NUMPY: dict[GGMLType, str] = {GGMLType.F32: "<f4", GGMLType.F16: "<f2"}
MAX_STRING = 1 << 30


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor of a GGUF file: name, HF-order shape (rows last), GGML type, absolute byte range."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    start: int
    nbytes: int


@dataclass
class GGUFFile:
    """Metadata and tensor directory of a GGUF file; ``data(name)`` maps a tensor's bytes."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor] = field(default_factory=list)
    value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = field(default_factory=dict)
    _map: mmap.mmap | None = field(default=None, repr=False)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get(Keys.ARCHITECTURE)
        return value if isinstance(value, str) else None

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get(Keys.FILE_TYPE)
        return int(value) if isinstance(value, int) else None

    def tensor(self, name: str) -> GGUFTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a uint8 array backed by the file (no copy; writes never reach the file)."""
        t = self.tensor(name)
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: writable views, file untouched
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.start)

    def values(self, name: str) -> np.ndarray:
        """A float tensor (F32, F16) as a numpy array of its HF-order shape, backed by the file."""
        t = self.tensor(name)
        if t.ggml_type not in _NUMPY:
            raise ValueError(f"{name} is {t.ggml_type.name}; only F32/F16 can be viewed as numbers")
        return self.data(name).view(_NUMPY[t.ggml_type]).reshape(t.shape)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Cursor:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        raw = self.f.read(n)
        if len(raw) != n:
            raise ConvertError("truncated GGUF file (ends inside its header)", self.path, "Re-create or re-download it.")
        return raw

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > MAX_STRING:
            raise ConvertError("corrupted GGUF header (absurd string length)", self.path, "Re-create or re-download it.")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == GGUFValueType.ARRAY:
            elem = self.scalar("<I")
            count = self.scalar("<Q")
            if count > MAX_STRING:
                raise ConvertError("corrupted GGUF header (absurd array length)", self.path, "Re-create or re-download it.")
            return [self.value(elem) for _ in range(count)]
        raise ConvertError(f"corrupted GGUF header (unknown value type {vtype})", self.path, "Re-create or re-download it.")


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and validate a GGUF file's header. Raises ConvertError naming the file on any problem."""
    path = Path(path)
    fix = "Pass a GGUF file made by cvlocal convert or llama.cpp."
    if not path.is_file():
        raise ConvertError("file not found", path, "Check the path.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        cur = _Cursor(f, path)
        if f.read(4) != GGUF_MAGIC:
            raise ConvertError("not a GGUF file (bad magic)", path, fix)
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise ConvertError(f"unsupported GGUF version {version}", path, fix)
        n_tensors = cur.scalar("<Q")
        n_kv = cur.scalar("<Q")
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.scalar("<I")
            elem = None
            if vtype == GGUFValueType.ARRAY:
                elem = cur.scalar("<I")
                count = cur.scalar("<Q")
                if count > MAX_STRING:
                    raise ConvertError("corrupted GGUF header (absurd array length)", path, "Re-create or re-download it.")
                metadata[key] = [cur.value(elem) for _ in range(count)]
            else:
                metadata[key] = cur.value(vtype)
            try:
                value_types[key] = (GGUFValueType(vtype), GGUFValueType(elem) if elem is not None else None)
            except ValueError:
                raise ConvertError(f"corrupted GGUF header (unknown value type for {key!r})", path, fix) from None
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            raw_type = cur.scalar("<I")
            offset = cur.scalar("<Q")
            try:
                ggml_type = GGMLType(raw_type)
            except ValueError:
                raise ConvertError(f"tensor {name!r} has an unknown GGML type {raw_type}", path, fix) from None
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        alignment = int(metadata.get(Keys.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
        data_start = f.tell() + (alignment - f.tell() % alignment) % alignment
    tensors = []
    for name, shape, ggml_type, offset in infos:
        try:
            nbytes = tensor_nbytes(ggml_type, shape)
        except ValueError as err:
            raise ConvertError(f"tensor {name!r}: {err}", path, fix) from None
        if data_start + offset + nbytes > size:
            raise ConvertError(f"truncated GGUF file (tensor {name!r} ends past the end)", path, "Re-create or re-download it.")
        tensors.append(GGUFTensor(name, shape, ggml_type, data_start + offset, nbytes))
    return GGUFFile(path, version, metadata, tensors, value_types)
