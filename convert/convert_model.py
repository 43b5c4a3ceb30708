"""The converter's entry points: an HF folder (or a stream of tensors) to one or more GGUF files.

One pass over the source tensors, one tensor in memory at a time:

1. Everything that can be wrong with the input is checked before anything is written: config
   and architecture, the tensor plan (names, shapes, the embedding against ``vocab_size``), the
   tokenizer, the output paths.
2. f32, f16, bf16 and q8_0 are written directly, through gguf-py's writer (``convert.gguf_stream``).
3. Other types are made by llama.cpp's quantizer from a *lossless* float GGUF: bf16 when every
   2-D source weight is bf16, f16 when every one is f16, f32 otherwise. Quantizing from it gives
   the same bytes as quantizing from the source precision, and several types share it.
4. When several types are asked for, the source is read once: the lossless file is written
   first, then each direct type is re-encoded from it (same bytes as a direct conversion, since
   it holds the source values exactly) and each llama.cpp type is quantized from it.

The entry points write to the paths they are given. How an output is opened is the caller's:
``open_output(path)`` and ``open_scratch(near, tag)`` are context managers yielding the path to
write; the defaults write in place and use a temporary file for an intermediate. cvlocal passes
its own (``cvlocal.outputs.gguf``: each output under a temporary name renamed when complete,
overlap refusal, replacement only when forced); the library itself has no output policy.
"""
from __future__ import annotations

import errno
import os
import resource
import tempfile
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from gguf import GGMLQuantizationType as GGMLType

from convert.checkpoint import Checkpoint, open_checkpoint
from convert.conversion import Progress, SourcePlan, lossless_type, prepare, write_direct
from convert.errors import ConvertError
from convert.gguf_reader import read_gguf
from convert.hub_cache import model_folder
from convert.llama_quantize import QuantizeError, QuantizeOptions, TensorProgress, llama_quantize
from convert.quant_tables import OUTTYPES, OutType, outtype as lookup_outtype, require_imatrix
from convert.transcode import transcode

Stage = Callable[[str], None]
OpenOutput = Callable[[Path], AbstractContextManager[Path]]
OpenScratch = Callable[[Path, str], AbstractContextManager[Path]]
_LOSSLESS = {GGMLType.F32: "f32", GGMLType.F16: "f16", GGMLType.BF16: "bf16"}
__all__ = ["convert_checkpoint", "write_gguf", "write_ggufs", "quantize_gguf", "OpenOutput", "OpenScratch"]


@contextmanager
def in_place(target: Path) -> Iterator[Path]:
    """The default ``open_output``: write straight to ``target``."""
    yield target


@contextmanager
def temporary_beside(near: Path, tag: str) -> Iterator[Path]:
    """The default ``open_scratch``: a hidden temporary file beside ``near``, removed on any exit."""
    fd, name = tempfile.mkstemp(prefix=f".{near.name}.", suffix=f".{tag}", dir=near.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# A tensor larger than this is read and encoded in runs of rows (the converter's memory stays flat).
READ_PIECE_BYTES = 64 << 20


def _stream_and_plan(source_dir: Path, plan: SourcePlan | None, tensors: Iterable[tuple[str, torch.Tensor]] | None,
                     ) -> tuple[SourcePlan, Iterator[tuple[str, torch.Tensor]], Checkpoint | None]:
    if (plan is None) != (tensors is None):
        raise ValueError("pass both plan and tensors (a merge stream) or neither (read the folder)")
    if plan is not None:
        return dict(plan), iter(tensors), None  # type: ignore[arg-type]
    ckpt = open_checkpoint(source_dir)
    return {n: (ckpt.dtype(n), ckpt.shape(n)) for n in ckpt.names()}, ckpt.tensors(READ_PIECE_BYTES), ckpt


def write_ggufs(
    source_dir: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    plan: SourcePlan | None = None,
    tensors: Iterable[tuple[str, torch.Tensor]] | None = None,
    threads: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_progress: Progress | None = None,
    on_stage: Stage | None = None,
    on_warning: Callable[[str], None] | None = None,
    origin: str | Path | None = None,
    quantize: QuantizeOptions | None = None,
    open_output: OpenOutput = in_place,
    open_scratch: OpenScratch = temporary_beside,
) -> dict[str, Path]:
    """Write one GGUF per output type (``{"f16": path, "q4_k_m": path}``) reading the source once.

    ``tensors`` streams (HF name, tensor) in the order of ``plan``'s keys (HF name -> dtype,
    shape); without them the weights come from ``source_dir``'s checkpoint files.
    ``threads`` is for q8_0/bf16 encoding and llama.cpp's quantizer (default: the usable CPUs).
    ``on_progress(name, nbytes)`` follows each source tensor, ``on_stage(text)`` announces each
    derived output, ``on_warning(text)`` reports tokenizer caveats. ``quantize`` carries the
    importance matrix, per-tensor types and requantize flag for the types llama.cpp makes.
    ``origin`` is where the files of ``source_dir`` came from when it is a temporary folder (a
    one-pass merge's side files are the CP model's): an error about one of them names the file
    there. ``open_output`` / ``open_scratch`` open each output and the intermediate (see the
    module docstring). Returns the written paths.
    """
    folder = model_folder(source_dir)
    try:
        return _write_ggufs(folder, outputs, plan, tensors, threads, metadata, on_progress, on_stage, on_warning,
                            quantize, open_output, open_scratch)
    except ConvertError as err:
        if origin is None or str(folder) not in str(err):
            raise
        raise ConvertError(str(err).replace(str(folder), str(origin))) from None


def _write_ggufs(folder: Path, outputs: Mapping[str, str | Path], plan: SourcePlan | None,
                 tensors: Iterable[tuple[str, torch.Tensor]] | None, threads: int | None,
                 metadata: Mapping[str, Any] | None, on_progress: Progress | None, on_stage: Stage | None,
                 on_warning: Callable[[str], None] | None, quantize: QuantizeOptions | None,
                 open_output: OpenOutput, open_scratch: OpenScratch) -> dict[str, Path]:
    wanted = {lookup_outtype(name): Path(path) for name, path in outputs.items()}
    if not wanted:
        raise ConvertError("no output type given", fix=f"Choose from: {', '.join(OUTTYPES)}.")
    quantize = quantize or QuantizeOptions()
    require_imatrix(list(wanted), quantize.imatrix is not None, quantize.tensor_types)
    if len({p.resolve() for p in wanted.values()}) != len(wanted):
        raise ValueError("two output types would write the same file")
    source, stream, ckpt = _stream_and_plan(folder, plan, tensors)
    try:
        base_type = lossless_type(source)
        single = next(iter(wanted)) if len(wanted) == 1 else None
        first_type = single if single is not None and single.direct else OUTTYPES[_LOSSLESS[base_type]]
        conv = prepare(folder, source, first_type, metadata)
        if quantize.imatrix is not None and not all(t.direct for t in wanted):  # a matrix for another model: before any work
            from convert.imatrix_file import check_against_model, read_imatrix

            check_against_model(read_imatrix(quantize.imatrix), {t.gguf_name: tuple(reversed(t.shape)) for t in conv.tensors}, quantize.imatrix)
        for warning in conv.warnings:
            if on_warning is not None:
                on_warning(warning)
        written: dict[str, Path] = {}
        if first_type in wanted:
            with open_output(wanted[first_type]) as tmp:
                write_direct(conv, tmp, stream, on_progress, threads, on_warning)
            written[first_type.name] = wanted[first_type]
            _derive(written[first_type.name], {t: p for t, p in wanted.items() if t != first_type}, threads, open_output, on_stage,
                    written, quantize)
            return written
        with open_scratch(next(iter(wanted.values())), "intermediate.gguf") as hidden:
            write_direct(conv, hidden, stream, on_progress, threads, on_warning)
            _derive(hidden, wanted, threads, open_output, on_stage, written, quantize)
        return written
    finally:
        if ckpt is not None:
            ckpt.close()


def _derive(source: Path, targets: Mapping[OutType, Path], threads: int | None, open_output: OpenOutput, on_stage: Stage | None,
            written: dict[str, Path], quantize: QuantizeOptions | None = None) -> None:
    """Make each target type from a lossless float GGUF: re-encode direct types, quantize the rest."""
    for out_type, path in targets.items():
        if on_stage is not None:
            on_stage(out_type.name)
        with open_output(path) as tmp:
            if out_type.direct:
                transcode(source, tmp, out_type, threads=threads)
            else:
                _quantize(source, tmp, path, out_type, threads, quantize)
        written[out_type.name] = path


def _quantize(source: Path, tmp: Path, target: Path, out_type: OutType, threads: int | None,
              quantize: QuantizeOptions | None, on_tensor: TensorProgress | None = None) -> None:
    """llama.cpp's quantizer into ``tmp``; a full disk, a file size limit or a read-only file system
    becomes the OSError it is, naming ``target`` (llama.cpp says only "iostream error")."""
    try:
        llama_quantize(source, tmp, out_type, threads, quantize, on_tensor)
    except QuantizeError:
        fault = _write_fault(tmp)
        if fault is None:
            raise
        raise OSError(fault, os.strerror(fault), str(target)) from None


def _write_fault(path: Path) -> int | None:
    """The errno that explains a failed write of ``path``, if the file system or a limit shows one."""
    try:
        fs = os.statvfs(path.parent)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if fs.f_bavail == 0:
        return errno.ENOSPC
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    if soft != resource.RLIM_INFINITY and size >= soft:
        return errno.EFBIG
    return None


def _single(outputs: dict[str, Path]) -> Path:
    return next(iter(outputs.values()))


def write_gguf(
    source_dir: str | Path,
    out: str | Path,
    outtype: str,
    *,
    plan: SourcePlan | None = None,
    tensors: Iterable[tuple[str, torch.Tensor]] | None = None,
    threads: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_progress: Progress | None = None,
    open_output: OpenOutput = in_place,
) -> Path:
    """Write the GGUF file ``out`` of ``outtype`` from ``source_dir`` (config + tokenizer) and its weights or a tensor stream."""
    outputs = {lookup_outtype(outtype).name: Path(out)}
    return _single(write_ggufs(source_dir, outputs, plan=plan, tensors=tensors, threads=threads, metadata=metadata, on_progress=on_progress,
                               open_output=open_output))


def convert_checkpoint(
    model_dir: str | Path,
    out: str | Path,
    outtype: str = "f16",
    *,
    threads: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_progress: Progress | None = None,
    open_output: OpenOutput = in_place,
) -> Path:
    """Convert an HF checkpoint folder to the GGUF file ``out`` of ``outtype``; returns its path."""
    return write_gguf(model_dir, out, outtype, threads=threads, metadata=metadata, on_progress=on_progress, open_output=open_output)


class RequantizeRefused(ConvertError):
    """The input of a quantization is already quantized and requantizing was not allowed."""

    def __init__(self, quantized: list[str], path: Path, fix: str = "Quantize from the f16, bf16 or f32 GGUF, or allow requantizing (llama.cpp's allow_requantize).") -> None:
        self.quantized = quantized
        super().__init__(f"the input is already quantized ({', '.join(quantized)} tensors); requantizing compounds the quantization error", path, fix)


def quantize_gguf(
    inp: str | Path,
    out: str | Path,
    qtype: str,
    *,
    threads: int | None = None,
    quantize: QuantizeOptions | None = None,
    on_tensor: TensorProgress | None = None,
    open_output: OpenOutput = in_place,
) -> Path:
    """Make the ``qtype`` GGUF file ``out`` from a float (f32/f16/bf16) GGUF ``inp``; returns its path.

    Direct types are re-encoded by our writer, others quantized by llama.cpp
    (with ``quantize``'s importance matrix, per-tensor types and requantize flag). An already
    quantized input is refused unless ``quantize.allow_requantize``; a matrix made for another
    model is refused before any work.
    """
    inp = Path(inp)
    out_type = lookup_outtype(qtype)
    quantize = quantize or QuantizeOptions()
    require_imatrix([out_type], quantize.imatrix is not None, quantize.tensor_types)
    with read_gguf(inp) as src:
        if not src.architecture:
            raise ConvertError("no general.architecture in the GGUF metadata", inp, "Pass a model GGUF.")
        quantized = sorted({t.ggml_type.name for t in src.tensors if t.ggml_type not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)})
        if quantized and not quantize.allow_requantize:
            raise RequantizeRefused(quantized, inp)
        if quantize.imatrix is not None:
            from convert.imatrix_file import check_against_model, read_imatrix

            check_against_model(read_imatrix(quantize.imatrix), {t.name: tuple(reversed(t.shape)) for t in src.tensors}, quantize.imatrix)
    target = Path(out)
    with open_output(target) as tmp:
        if out_type.direct and not quantized:
            transcode(inp, tmp, out_type, threads=threads)
        else:  # llama.cpp also dequantizes, when requantizing is allowed
            _quantize(inp, tmp, target, out_type, threads, quantize, on_tensor)
    return target
