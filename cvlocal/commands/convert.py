"""``cvlocal convert MODEL_DIR -o OUT --outtype T[,T...]``: an HF checkpoint to GGUF, one file per type.

Output names: with one type, ``-o`` is the file (or a folder, then the name follows the GGUF
naming convention). With several types, ``-o`` is a folder (convention names inside) or a name
containing ``{type}`` (lower case, ``q4_k_m``) or ``{TYPE}`` (``Q4_K_M``). The checkpoint is read
once: several types share one lossless float conversion and the rest is made from it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cvlocal.imatrix.auto import add_quantize_flags, imatrix_input as _imatrix_input
from cvlocal.ui import byte_progress, say, warn


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "convert",
        parents=[common],
        help="convert an HF checkpoint to GGUF (f16, bf16, q8_0, q4_k_m, ...)",
        description=(
            "Convert a Llama, Mistral, Qwen2 or Qwen3 checkpoint folder to GGUF for llama.cpp. "
            "f32/f16/bf16/q8_0 are written directly; other types are quantized by llama.cpp from a lossless float file. "
            "Several types (--outtype f16,q4_k_m) read the checkpoint once: -o is then a folder or a name with {type} / {TYPE}."
        ),
    )
    p.add_argument("model", type=Path, help="the HF model folder (config.json, weights, tokenizer)")
    p.add_argument("-o", "--output", required=True, help="output .gguf file; or a folder / a name with {type} for several types")
    p.add_argument("--outtype", default="f16", help="f32, f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k, iq4_xs, ... or a comma-separated list (default f16)")
    p.add_argument("--threads", type=int, help="threads for q8_0/bf16 encoding and llama.cpp's quantizer (default: all cores)")
    p.add_argument("--name", help="model name recorded in general.name (and used for convention file names)")
    add_quantize_flags(p)
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convert import QuantizeError
    from cvlocal.outputs.gguf import write_ggufs
    from cvlocal.outputs.names import output_paths
    from convert.checkpoint import open_checkpoint
    from cvlocal.errors import WorkError

    from cvlocal.outputs.overlap import refuse_overlap
    from cvlocal.commands._checks import at_least

    quiet = args.quiet or args.json
    at_least("--threads", args.threads)
    metadata = {"general.name": args.name} if args.name else None
    outputs = output_paths(args.output, args.outtype, args.model, metadata=metadata)
    refuse_overlap(outputs.values(), [args.model, _imatrix_input(args)])
    quantize = _quantize_options(args, list(outputs.values()))
    with open_checkpoint(args.model) as ckpt:
        total = ckpt.total_bytes()
    started = time.monotonic()
    warnings: list[str] = []

    def on_warning(text: str) -> None:
        warnings.append(text)
        warn(text)

    progress = byte_progress(quiet)
    task = None

    def bar():
        # The bar appears with the first converted tensor, so that bad input (found before any
        # tensor is read) prints its one error line and nothing else.
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task("converting", total=total, detail="")
        return task

    def on_progress(name: str, nbytes: int) -> None:
        progress.update(bar(), advance=nbytes, detail=name)

    def on_stage(type_name: str) -> None:
        progress.update(bar(), description=f"making {type_name}", detail="")

    try:
        written = write_ggufs(
            args.model, outputs, threads=args.threads, force=args.force, inputs=[args.model, _imatrix_input(args)], metadata=metadata,
            on_progress=on_progress, on_stage=on_stage, on_warning=on_warning, quantize=quantize,
        )
        if task is not None:
            progress.update(task, description="done", detail="")
    except QuantizeError as err:
        raise WorkError(str(err)) from None
    finally:
        if task is not None:
            progress.stop()
    seconds = time.monotonic() - started
    files = [{"type": t, "path": str(p), "bytes": p.stat().st_size} for t, p in written.items()]
    if args.json:
        print(json.dumps({"source": str(args.model), "outputs": files, "seconds": round(seconds, 3), "warnings": warnings}, indent=2, ensure_ascii=False))
    else:
        for f in files:
            say(f"wrote {f['path']} ({f['type']}, {f['bytes'] / 1e6:.1f} MB)", args.quiet)
        say(f"{len(files)} file(s) in {seconds:.1f} s", args.quiet)
    return 0


def _quantize_options(args: argparse.Namespace, outputs: list[Path]):
    """Check the outputs and the quantize flags, then resolve ``--imatrix auto`` (computed from the source)."""
    from cvlocal.outputs.atomic import check_output_path
    from convert.quant_tables import require_imatrix
    from cvlocal.outputs.types import parse_outtypes, parse_tensor_type
    from cvlocal.imatrix.auto import needs_imatrix, options_for, resolve_imatrix

    for path in outputs:
        check_output_path(path, args.force)
    overrides = [parse_tensor_type(spec) for spec in args.tensor_type]
    types = parse_outtypes(args.outtype)
    needs_imatrix(lambda: require_imatrix(types, args.imatrix is not None, overrides))
    if args.imatrix and all(t.direct for t in types):
        warn(f"--imatrix is not used: {args.outtype} is written by cvlocal's own writer, not llama.cpp's quantizer")
        return options_for(None, args.tensor_type)
    imatrix = resolve_imatrix(args.imatrix, args.model, outputs[0], quiet=args.quiet or args.json, force=args.force)
    return options_for(imatrix, args.tensor_type)

