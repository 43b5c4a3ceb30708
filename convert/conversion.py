"""One conversion, planned then written: an HF folder (or stream) to a GGUF file of a direct type.

``prepare`` checks everything that can be wrong with the input before anything is written:
config.json and the architecture, the tensor plan (names, shapes, the embedding against
``vocab_size``), the tokenizer. It decides every metadata key and tensor; ``write_direct`` then
streams the tensors into the file one at a time (each through the named transforms its table lists,
each tensor encoded in slabs). Nothing here reads a tensor twice or holds two at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGUFValueType, Keys
from gguf import GGMLQuantizationType as GGMLType

from convert.architectures import Architecture, architecture_of, supported
from convert.checkpoint import read_config
from convert.errors import ConvertError
from convert.finite import count_nonfinite
from convert.gguf_keys import key_type
from convert.gguf_stream import StreamingWriter
from convert.hparams import gguf_hparams
from convert.metadata import general_metadata
from convert.quant_tables import OutType
from convert.tensor_encoding import encode
from convert.tensor_plan import PlannedTensor, plan_tensors
from convert.transforms import GENERATED, apply_transforms
from convert.vocab import read_vocab

SourcePlan = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
"""HF tensor name -> (dtype, shape), in the order the tensors will be streamed."""
Progress = Callable[[str, int], None]
MAX_NONFINITE_LINES = 10


@dataclass
class Conversion:
    """Everything decided about one source before writing: metadata, tensors, warnings."""

    folder: Path
    arch: Architecture
    config: dict[str, Any]
    kv: list[tuple[str, Any, GGUFValueType | None, GGUFValueType | None]]
    tensors: list[PlannedTensor]
    generated: list[tuple[str, torch.Tensor]]  # tensors computed from config.json, written first
    warnings: list[str] = field(default_factory=list)


def load_config(folder: Path) -> tuple[dict[str, Any], Architecture]:
    """config.json (a multimodal config's ``text_config`` merged in) and its architecture table."""
    config = read_config(folder)
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    arch = architecture_of(config)
    if arch is None:
        names = config.get("architectures") or []
        name = names[0] if isinstance(names, list) and names else None
        shown = repr(name) if name else "not given"
        raise ConvertError(f"unsupported architecture ({shown})", folder / "config.json", f"Supported: {supported()}.")
    return config, arch


def lossless_type(source: SourcePlan) -> GGMLType:
    """The float type that holds every 2-D source weight exactly (bf16, f16, else f32)."""
    dtypes = {dtype for dtype, shape in source.values() if len(shape) >= 2}
    if dtypes == {torch.bfloat16}:
        return GGMLType.BF16
    if dtypes == {torch.float16}:
        return GGMLType.F16
    return GGMLType.F32


def planned(folder: Path, source: SourcePlan, weight_type: GGMLType, notices: list[str] | None = None
            ) -> tuple[dict[str, Any], Architecture, list[PlannedTensor], list[tuple[str, torch.Tensor]]]:
    """Config, architecture, the GGUF tensor plan and the generated tensors, without reading data."""
    config, arch = load_config(folder)
    generated = [t for name in arch.generated for t in GENERATED[name].tensors(config)]
    tensors = plan_tensors(arch, config, source, weight_type, where=folder, generated=generated, notices=notices)
    return config, arch, tensors, generated


def _n_params(tensors: Sequence[PlannedTensor]) -> int:
    return sum(int(np.prod(t.shape)) for t in tensors)


def general_keys(folder: Path, config: Mapping[str, Any], tensors: Sequence[PlannedTensor], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``general.*`` keys: derived from the folder and parameter count, the caller's ``general.*`` on top."""
    general = general_metadata(folder, config, _n_params(tensors), metadata or {})
    general.update({k: v for k, v in (metadata or {}).items() if k.startswith("general.")})
    return general


def prepare(folder: Path, source: SourcePlan, out_type: OutType, metadata: Mapping[str, Any] | None = None) -> Conversion:
    """Check the source and decide every key and tensor of a direct-type GGUF (no data read)."""
    if not out_type.direct or out_type.ggml_type is None:
        raise ValueError(f"{out_type.name} is not written directly")
    notices: list[str] = []
    config, arch, tensors, generated = planned(folder, source, out_type.ggml_type, notices)
    n_vocab = next(t.shape[0] for t in tensors if t.gguf_name == "token_embd.weight")
    vocab = read_vocab(folder, config, n_vocab)
    general = general_keys(folder, config, tensors, metadata)
    kv: list[tuple[str, Any, GGUFValueType | None, GGUFValueType | None]] = [(Keys.General.ARCHITECTURE, arch.gguf_arch, None, None)]
    kv += [(k, v, None, None) for k, v in general.items()]
    warnings = notices + list(vocab.warnings)
    kv += gguf_hparams(arch, config, folder / "config.json", warnings)
    kv += [(Keys.General.FILE_TYPE, out_type.ftype, None, None), (Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION, None, None)]
    kv += vocab.metadata()
    kv += [(k, v, None, None) for k, v in (metadata or {}).items() if not k.startswith("general.")]
    return Conversion(folder, arch, config, kv, tensors, generated, warnings)


def _add_kv(writer: StreamingWriter, arch: str, kv: Iterable[tuple[str, Any, GGUFValueType | None, GGUFValueType | None]]) -> None:
    """Add metadata with the type llama.cpp expects for known keys, inferred types for free-form ones."""
    for key, value, vtype, elem in kv:
        fixed = vtype or key_type(key, arch)
        if fixed is None:
            writer.add_value(key, value)
        elif fixed == GGUFValueType.ARRAY:
            writer.add_value(key, value, fixed, elem)
        else:
            writer.add_value(key, _coerce(value, fixed, key), fixed)


def _coerce(value: Any, vtype: GGUFValueType, key: str) -> Any:
    if vtype == GGUFValueType.STRING:
        return str(value)
    if vtype == GGUFValueType.BOOL:
        return bool(value)
    if vtype.name.startswith("FLOAT"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConvertError(f"metadata {key!r} must be an integer, not {value!r}")
    return int(value)


def _row_pieces(hf_name: str, first: torch.Tensor, stream: Iterator[tuple[str, torch.Tensor]], shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """The pieces of one tensor: ``first`` and, while rows are missing, the stream's next items of the same name.

    A stream may give a tensor whole or as consecutive runs of whole rows (a merge's chunks), so
    that a large tensor (an 8B model's embedding) is encoded piece by piece and never held whole.
    """
    rows = shape[0] if shape else 1
    piece, done = first, 0
    while True:
        if tuple(piece.shape) != shape and (not shape or tuple(piece.shape[1:]) != shape[1:] or done + piece.shape[0] > rows):
            raise RuntimeError(f"tensor {hf_name!r} has shape {tuple(piece.shape)}, planned {shape}")
        done += piece.shape[0] if shape else 1
        yield piece
        if done >= rows:
            return
        following: tuple[str, torch.Tensor] | None = next(stream, None)
        if following is None or following[0] != hf_name:
            got = following[0] if following is not None else None
            raise RuntimeError(f"tensor stream out of order: {hf_name!r} ended after {done} of {rows} rows, got {got!r}")
        piece = following[1]


def write_direct(conv: Conversion, path: Path, stream: Iterable[tuple[str, torch.Tensor]], on_progress: Progress | None, threads: int | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
    """Write the planned file at ``path`` from ``stream`` (HF name, tensor) in plan order.

    A tensor may come whole or as consecutive runs of its rows under the same name (see
    ``_row_pieces``). A tensor holding NaN or Inf is written as it is and reported through
    ``on_warning`` (one line per tensor, the first ``MAX_NONFINITE_LINES``, then one summary):
    converting is not the place to refuse a model, but a user must not ship one unknowingly.

    A stream that is out of order, short, or has a tensor of the wrong shape raises (a bug in
    the caller, not bad input); the caller's atomic output then removes the partial file.
    """
    writer = StreamingWriter(path, conv.arch.gguf_arch)
    try:
        _add_kv(writer, conv.arch.gguf_arch, conv.kv)
        for t in conv.tensors:
            writer.add_tensor(t.gguf_name, t.shape, t.ggml_type)
        writer.write_header()
        pending = iter(t for t in conv.tensors if t.hf_name is not None)
        flagged: list[str] = []
        for name, values in conv.generated:
            writer.write_tensor(name, encode(values, GGMLType.F32))
        items = iter(stream)
        for hf_name, tensor in items:
            if conv.arch.gguf_name(hf_name) == "":
                continue
            planned = next(pending, None)
            if planned is None or planned.hf_name != hf_name:
                raise RuntimeError(f"tensor stream out of order: got {hf_name!r}, expected {planned.hf_name if planned else None!r}")
            pieces = _row_pieces(hf_name, tensor, items, planned.shape)
            del tensor
            if any(name != "keep_fused" for name in planned.transforms):
                # the named transforms see the whole tensor (Q/K projections, norms: small ones)
                whole = torch.cat(list(pieces)) if planned.shape else next(pieces)
                pieces = iter([apply_transforms(planned.transforms, whole, conv.config)])
                del whole
            counts = [0, 0]  # NaN/Inf, elements

            def encoded(pieces: Iterator[torch.Tensor] = pieces, counts: list[int] = counts, ggml_type: GGMLType = planned.ggml_type) -> Iterator[Any]:
                for piece in pieces:
                    counts[0] += count_nonfinite(piece)
                    counts[1] += piece.numel()
                    yield from encode(piece, ggml_type, threads)

            writer.write_tensor(planned.gguf_name, encoded())
            if counts[0]:
                flagged.append(hf_name)
                if on_warning is not None and len(flagged) <= MAX_NONFINITE_LINES:
                    on_warning(f"tensor {hf_name} holds {counts[0]} NaN/Inf value(s) of {counts[1]}; written as they are")
            if on_progress is not None:
                on_progress(hf_name, planned.source_nbytes)
        missing = next(pending, None)
        if missing is not None:
            raise RuntimeError(f"tensor stream ended before {missing.hf_name!r}")
        if on_warning is not None and len(flagged) > MAX_NONFINITE_LINES:
            on_warning(f"{len(flagged)} tensors hold NaN/Inf values in all ({len(flagged) - MAX_NONFINITE_LINES} more than listed)")
        writer.close()
    except BaseException:
        writer.abort()
        raise
