"""gguf-py's ``GGUFWriter``, fed tensor data in pieces so that no tensor is ever held whole once encoded.

``gguf.GGUFWriter`` writes the header, the key-values and the tensor directory (offsets included)
from tensor *infos* alone (``add_tensor_info``, then ``write_header_to_file``,
``write_kv_data_to_file``, ``write_ti_data_to_file``); only its data step wants each tensor as one
numpy array. An 8B model's embedding is 1 GB in bf16, so this adapter writes the data itself to
the writer's open file, tensor by tensor and piece by piece, with the writer's own alignment
padding (``write_padding``) before the first tensor and after each one. It also refuses, before a
byte is written, a piece stream that is out of order or of the wrong length, so a malformed file is
never produced. Sizes come from ``gguf.GGML_QUANT_SIZES`` (``quant_shape_to_byte_shape``).
"""
from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, Keys
from gguf.quants import quant_shape_to_byte_shape

from convert.gguf_keys import free_form_type

Piece = bytes | bytearray | memoryview | np.ndarray


def tensor_nbytes(ggml_type: GGMLQuantizationType, shape: Sequence[int]) -> int:
    """Bytes of a tensor of GGML type and HF-order shape (last dimension is the row)."""
    return prod(quant_shape_to_byte_shape(tuple(shape) or (1,), ggml_type))


class StreamingWriter:
    """One GGUF file: metadata and every tensor declared first, then each tensor's data in order.

    Use: ``add_value`` for metadata, ``add_tensor`` for each tensor (in data order),
    ``write_header()``, then ``write_tensor(name, pieces)`` for each tensor in the same order and
    ``close()``; ``abort()`` on failure (the caller removes the partial file).
    """

    def __init__(self, path: Path, arch: str, alignment: int | None = None) -> None:
        self.path = Path(path)
        self._writer = GGUFWriter(self.path, arch)
        if alignment is not None:
            self._writer.data_alignment = int(alignment)
        self._order: list[tuple[str, int]] = []
        self._next = 0

    def add_value(self, key: str, value: object, vtype: GGUFValueType | None = None, elem: GGUFValueType | None = None) -> None:
        """Set one key, replacing (and moving to the end) an earlier value; free-form type when not given."""
        if vtype is None:
            vtype, elem = free_form_type(value)
        kv = self._writer.kv_data[0]
        kv.pop(key, None)
        self._writer.add_key_value(key, value, vtype, elem)
        if key == Keys.General.ALIGNMENT:
            self._writer.data_alignment = int(value)  # type: ignore[call-overload]

    def add_tensor(self, name: str, shape: Sequence[int], ggml_type: GGMLQuantizationType) -> int:
        """Declare a tensor (HF-order shape); returns its byte size. Data comes later, in order."""
        shape = tuple(int(d) for d in shape) or (1,)
        nbytes = tensor_nbytes(ggml_type, shape)
        # a non-uint8 dtype tells GGUFWriter the shape is in elements, not bytes
        self._writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=ggml_type)
        self._order.append((name, nbytes))
        return nbytes

    def write_header(self) -> None:
        """Write header, key-values and tensor directory, then pad to where tensor data starts."""
        self._writer.write_header_to_file()
        self._writer.write_kv_data_to_file()
        self._writer.write_ti_data_to_file()
        out = self._file()
        self._writer.write_padding(out, out.tell())

    def _file(self):  # type: ignore[no-untyped-def]
        assert self._writer.fout is not None, "write_header() first"
        return self._writer.fout[0]

    def write_tensor(self, name: str, pieces: Iterable[Piece]) -> int:
        """Write the data of the next declared tensor from its byte pieces; returns its size."""
        if self._next >= len(self._order) or self._order[self._next][0] != name:
            expected = self._order[self._next][0] if self._next < len(self._order) else None
            raise RuntimeError(f"GGUF writer expected tensor {expected!r}, got {name!r}")
        nbytes = self._order[self._next][1]
        out = self._file()
        written = 0
        for piece in pieces:
            view = (np.ascontiguousarray(piece).data if isinstance(piece, np.ndarray) else memoryview(piece)).cast("B")
            if written + view.nbytes > nbytes:
                raise RuntimeError(f"tensor {name!r}: more than the {nbytes} bytes its type and shape need")
            out.write(view)
            written += view.nbytes
        if written != nbytes:
            raise RuntimeError(f"tensor {name!r}: wrote {written} bytes, its type and shape need {nbytes}")
        self._writer.write_padding(out, nbytes)
        self._next += 1
        return written

    def close(self) -> None:
        """Finish the file; raises if a declared tensor was never written."""
        try:
            if self._next != len(self._order):
                raise RuntimeError(f"{self.path}: only {self._next} of {len(self._order)} tensors were written")
            self._writer.flush()
        finally:
            self._writer.close()

    def abort(self) -> None:
        self._writer.close()


__all__ = ["StreamingWriter", "tensor_nbytes"]
