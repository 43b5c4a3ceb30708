"""Re-encode a float (f32/f16/bf16) GGUF into another direct type, keeping its metadata.

Used when several output types come from one source pass: the lossless float file holds the
source values exactly, so re-encoding it gives the same bytes as converting the source directly.
Tensors are read through a memory map, one at a time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType, Keys

from convert.errors import ConvertError
from convert.gguf_reader import GGUFFile, read_gguf
from convert.gguf_stream import StreamingWriter
from convert.quant_tables import OutType
from convert.tensor_encoding import encode
from convert.tensor_plan import tensor_type
from convert.conversion import Progress


def _float_tensor(src: GGUFFile, name: str) -> torch.Tensor:
    t = src.tensor(name)
    raw = src.data(name)
    if t.ggml_type == GGMLType.F32:
        return torch.from_numpy(raw.view(np.float32).reshape(t.shape))
    if t.ggml_type == GGMLType.F16:
        return torch.from_numpy(raw.view(np.float16).reshape(t.shape))
    if t.ggml_type == GGMLType.BF16:
        return torch.from_numpy(raw.view(np.int16).reshape(t.shape)).view(torch.bfloat16)
    raise ConvertError(f"tensor {name!r} is {t.ggml_type.name}; only f32/f16/bf16 files can be re-encoded", src.path, "Start from an f16, bf16 or f32 GGUF.")


def transcode(inp: Path, out: Path, out_type: OutType, on_progress: Progress | None = None, threads: int | None = None,
              adjust: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Re-encode a float GGUF into a direct type, keeping its metadata (file type updated).

    ``adjust(name, values)`` may replace a tensor's values (same shape) before encoding: how a
    merge is applied to a model that exists only as a float GGUF.
    """
    if out_type.ggml_type is None:
        raise ValueError(f"{out_type.name} is not a direct type")
    with read_gguf(inp) as src:
        writer = StreamingWriter(out, src.architecture or "", alignment=src.alignment)
        try:
            for key, value in src.metadata.items():
                vtype, elem = src.value_types[key]
                writer.add_value(key, out_type.ftype if key == Keys.General.FILE_TYPE else value, vtype, elem)
            if Keys.General.FILE_TYPE not in src.metadata:
                writer.add_value(Keys.General.FILE_TYPE, out_type.ftype, GGUFValueType.UINT32)
            types = {t.name: tensor_type(t.name, t.shape, out_type.ggml_type) for t in src.tensors}
            for t in src.tensors:
                writer.add_tensor(t.name, t.shape, types[t.name])
            writer.write_header()
            for t in src.tensors:
                values = _float_tensor(src, t.name)
                if adjust is not None:
                    values = adjust(t.name, values)
                writer.write_tensor(t.name, encode(values, types[t.name], threads))
                del values  # a view of the memory map: the map cannot close while it lives
                if on_progress is not None:
                    on_progress(t.name, t.nbytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
