"""Compute a matrix into a file with a progress bar, and ``--imatrix FILE|auto`` for other commands.

``auto`` computes the matrix from the command's HF source on the default languages (see
``calibration``) and keeps it beside the outputs as ``<source name>.imatrix.gguf``, so the release
folder or the conversion's folder holds the matrix its files were quantized with. An existing file
there is never replaced without ``--force``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from cvlocal.errors import UsageError
from cvlocal.ui import item_progress


def compute_to_file(
    model: Path,
    out: Path,
    *,
    quiet: bool,
    force: bool = False,
    output_format: str = "gguf",
    **options: Any,
):
    """Compute the matrix of ``model`` (``options``: see ``collect.compute_imatrix``) and write ``out`` atomically."""
    from cvlocal.outputs.atomic import atomic_output, check_output_path
    from convert.imatrix_file import write_imatrix_dat, write_imatrix_gguf
    from cvlocal.imatrix.collect import compute_imatrix

    from cvlocal.outputs.overlap import refuse_overlap

    check_output_path(out, force)
    refuse_overlap([out], [model, *(options.get("text_files") or ())])
    with item_progress(quiet) as progress:
        task = None

        def on_start(total: int, labels: list[str]) -> None:
            nonlocal task
            task = progress.add_task(f"imatrix on {', '.join(labels)}", total=total, detail="")

        def on_chunk(done: int, total: int, tokens: int, seconds: float) -> None:
            if task is not None:
                progress.update(task, completed=done, detail=f"{tokens / max(seconds, 1e-9):,.0f} tok/s")

        result = compute_imatrix(model, on_chunk=on_chunk, on_start=on_start, **options)
    write = write_imatrix_dat if output_format == "dat" else write_imatrix_gguf
    with atomic_output(out, force=force) as tmp:
        write(result.matrix, tmp)
    return result


def auto_path(source: Path, beside: Path) -> Path:
    """Where ``auto`` keeps the matrix: ``<source name>.imatrix.gguf`` in the outputs' folder."""
    folder = beside if beside.is_dir() else beside.parent
    return folder / f"{Path(source).resolve().name.removesuffix('.gguf')}.imatrix.gguf"


def resolve_imatrix(spec: str | None, source: Path, beside: Path, *, quiet: bool, force: bool, device: str = "auto") -> Path | None:
    """``--imatrix`` of convert/merge/release: None, an existing file, or ``auto`` computed now."""
    if spec is None:
        return None
    if spec.strip().lower() != "auto":
        path = Path(spec)
        if not path.is_file():
            raise UsageError("importance matrix not found", path, "Pass an imatrix file (cvlocal imatrix MODEL -o imatrix.gguf) or --imatrix auto.")
        return path
    from cvlocal.vector.device import resolve_device

    out = auto_path(source, beside)
    compute_to_file(Path(source), out, quiet=quiet, force=force, device=resolve_device(device))
    return out


def options_for(imatrix: Path | None, tensor_types: Sequence[str], allow_requantize: bool = False):
    """convert's QuantizeOptions from the CLI flags, checked before any work (bad input: exit 2).

    The matrix's ``quantize.imatrix.*`` keys (file, dataset, entries, chunks) are recorded in every
    quantized output, as llama-quantize records them.
    """
    from convert.imatrix_file import read_imatrix
    from convert.llama_quantize import QuantizeOptions, imatrix_metadata
    from cvlocal.outputs.types import parse_tensor_type

    overrides = tuple(parse_tensor_type(spec) for spec in tensor_types)
    metadata = imatrix_metadata(imatrix, read_imatrix(imatrix)) if imatrix is not None else {}
    return QuantizeOptions(imatrix=imatrix, tensor_types=overrides, allow_requantize=allow_requantize, metadata=metadata)


def add_quantize_flags(p: argparse.ArgumentParser) -> None:
    """--imatrix FILE|auto and --tensor-type, shared by convert, merge and release."""
    p.add_argument("--imatrix", metavar="FILE|auto", help="importance matrix for llama.cpp's types (needed by iq2_xs, iq3_xxs, q2_k_s, iq1_*...); auto computes it from the source on its languages and keeps it beside the outputs")
    p.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE", help="type for tensors whose name matches PATTERN (a regex), e.g. attn_v=q6_k; repeatable")


def imatrix_input(args: argparse.Namespace) -> Path | None:
    """The --imatrix file when one is named (an input the outputs must not overlap); None for auto or none."""
    value = getattr(args, "imatrix", None)
    return None if value in (None, "auto") else Path(value)


def needs_imatrix(check, auto: bool = True) -> None:
    """Run ``check``; a type that needs a matrix becomes a message naming cvlocal's flag (and ``auto`` where offered)."""
    from convert.quant_tables import ImatrixRequired

    try:
        check()
    except ImatrixRequired as err:
        raise UsageError(f"{', '.join(err.needing)} needs an importance matrix (without one llama.cpp's result is garbage)",
                         fix=f"Pass --imatrix FILE (cvlocal imatrix MODEL_DIR -o imatrix.gguf){' or --imatrix auto' if auto else ''}, or choose another type.") from None
