"""Read a GGUF file's metadata and tensor directory, and map its tensor data without loading it.

Used to check an input before handing it to llama.cpp's quantizer (a truncated or foreign file
gets a one-line error instead of a crash), and to re-encode a lossless intermediate file into
other direct types (f16, bf16, q8_0) without reading the HF checkpoint a second time.

Why not ``gguf.GGUFReader``: it builds numpy views for every part of every value (several per
string), so opening a file with a large vocabulary costs many seconds before any tensor is
touched. Measured by ``benchmarks/gguf_reader_speed.py`` on a 90 MB GGUF with a 151,646-token BPE
vocabulary (tokens, types and 151,387 merges; made by our converter from a synthetic Qwen2 model),
gguf 0.19.0, a shared 2-core machine: ``gguf.GGUFReader`` 17.7 s of CPU (96 s wall), this reader
0.71 s of CPU (2.5 s wall), 25x less. The constants (magic, value and tensor types, keys,
alignment, block sizes) are gguf-py's; strings are parsed from a memory map, number arrays in one
numpy read.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFReader, GGUFValueType, Keys
from gguf import GGMLQuantizationType as GGMLType

from convert.errors import ConvertError
from convert.gguf_stream import tensor_nbytes

_SCALARS: dict[GGUFValueType, np.dtype] = {vt: np.dtype(t).newbyteorder("<") for vt, t in GGUFReader.gguf_scalar_to_np.items()}
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
        value = self.metadata.get(Keys.General.ARCHITECTURE)
        return value if isinstance(value, str) else None

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get(Keys.General.FILE_TYPE)
        return int(value) if isinstance(value, int) else None

    @property
    def alignment(self) -> int:
        return int(self.metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))

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
    """Parse position over the file's bytes (a memory map: no read call per string)."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def _truncated(self) -> ConvertError:
        return ConvertError("truncated GGUF file (ends inside its header)", self.path, "Re-create or re-download it.")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise self._truncated()
        raw = self.buf[self.pos:end]
        self.pos = end
        return raw

    def u32(self) -> int:
        return int(self.scalar(GGUFValueType.UINT32))

    def u64(self) -> int:
        return int(self.scalar(GGUFValueType.UINT64))

    def scalar(self, vtype: GGUFValueType) -> Any:
        dtype = _SCALARS[vtype]
        if self.pos + dtype.itemsize > len(self.buf):
            raise self._truncated()
        value = np.frombuffer(self.buf, dtype, 1, self.pos)[0].item()
        self.pos += dtype.itemsize
        return value

    def string(self) -> str:
        if self.pos + 8 > len(self.buf):
            raise self._truncated()
        (n,) = struct.unpack_from("<Q", self.buf, self.pos)  # a GGUF string: u64 byte length, UTF-8 bytes
        if n > MAX_STRING:
            raise ConvertError("corrupted GGUF header (absurd string length)", self.path, "Re-create or re-download it.")
        self.pos += 8
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype in _SCALARS:
            return self.scalar(GGUFValueType(vtype))
        if vtype == GGUFValueType.ARRAY:
            return self.array(self.u32())
        raise ConvertError(f"corrupted GGUF header (unknown value type {vtype})", self.path, "Re-create or re-download it.")

    def array(self, elem: int) -> list[Any]:
        count = self.u64()
        if count > MAX_STRING:
            raise ConvertError("corrupted GGUF header (absurd array length)", self.path, "Re-create or re-download it.")
        if elem in _SCALARS:  # numbers in one numpy read
            dtype = _SCALARS[GGUFValueType(elem)]
            if self.pos + count * dtype.itemsize > len(self.buf):
                raise self._truncated()
            values = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
            self.pos += count * dtype.itemsize
            return values
        return [self.value(elem) for _ in range(count)]


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and validate a GGUF file's header. Raises ConvertError naming the file on any problem."""
    path = Path(path)
    fix = "Pass a GGUF file made by cvlocal convert or llama.cpp."
    if not path.is_file():
        raise ConvertError("file not found", path, "Check the path.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != struct.pack("<I", GGUF_MAGIC):
            raise ConvertError("not a GGUF file (bad magic)", path, fix)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with buf:
        cur = _Cursor(buf, path)
        cur.pos = 4
        version = cur.u32()
        if version not in (2, 3):
            raise ConvertError(f"unsupported GGUF version {version}", path, fix)
        n_tensors = cur.u64()
        n_kv = cur.u64()
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.u32()
            elem = None
            if vtype == GGUFValueType.ARRAY:
                elem = cur.u32()
                metadata[key] = cur.array(elem)
            else:
                metadata[key] = cur.value(vtype)
            try:
                value_types[key] = (GGUFValueType(vtype), GGUFValueType(elem) if elem is not None else None)
            except ValueError:
                raise ConvertError(f"corrupted GGUF header (unknown value type for {key!r})", path, fix) from None
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            dims = [cur.u64() for _ in range(n_dims)]
            raw_type = cur.u32()
            offset = cur.u64()
            try:
                ggml_type = GGMLType(raw_type)
            except ValueError:
                raise ConvertError(f"tensor {name!r} has an unknown GGML type {raw_type}", path, fix) from None
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        alignment = int(metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
        data_start = cur.pos + (alignment - cur.pos % alignment) % alignment
    tensors = []
    for name, shape, ggml_type, offset in infos:
        try:
            nbytes = tensor_nbytes(ggml_type, shape)
        except (ValueError, KeyError) as err:
            raise ConvertError(f"tensor {name!r}: {err}", path, fix) from None
        if data_start + offset + nbytes > size:
            raise ConvertError(f"truncated GGUF file (tensor {name!r} ends past the end)", path, "Re-create or re-download it.")
        tensors.append(GGUFTensor(name, shape, ggml_type, data_start + offset, nbytes))
    return GGUFFile(path, version, metadata, tensors, value_types)
