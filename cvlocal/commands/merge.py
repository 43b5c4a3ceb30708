"""``cvlocal merge CP -o OUT``: add chat vectors to a continually-pretrained model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cvlocal.imatrix.auto import add_quantize_flags, imatrix_input as _imatrix_input
from cvlocal.ui import human_bytes, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "merge",
        parents=[common],
        help="add chat vectors to a CP model (HF folder, or GGUF in one pass)",
        description=(
            "out = cp + sum(r_i * (chat_i - base_i)), in float32 on the chosen device, rounded once. "
            "Give --vector DIR[:RATIO] (repeatable) or --base BASE --chat CHAT [--ratio R]. "
            "An output path ending in .gguf writes GGUF in one pass (see --outtype)."
        ),
    )
    p.add_argument("cp", type=Path, help="the continually-pretrained model folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="merged HF folder, or a .gguf file")
    p.add_argument("--vector", action="append", default=[], metavar="DIR[:RATIO]", help="a chat-vector folder and its ratio (default 1.0); repeatable")
    p.add_argument("--base", type=Path, help="base model (one-shot merge, no vector on disk)")
    p.add_argument("--chat", type=Path, help="chat model (one-shot merge)")
    p.add_argument("--ratio", type=float, default=1.0, help="ratio of the one-shot vector (any real number; default 1.0)")
    p.add_argument("--embeddings", default="auto", choices=["auto", "add", "overlap", "skip"], help="embedding and lm_head rows: add (same vocab), overlap (shared leading ids, checked with both tokenizers), skip; auto picks add or overlap")
    p.add_argument("--special-tokens", default="auto", metavar="auto|none|CP_ID=CHAT_ID,...", help="give the template's special tokens the chat model's rows (default auto)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="output dtype (default: the CP model's)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps: where the arithmetic runs (default auto)")
    p.add_argument("--shard-size", default="5GB", help="largest output shard (default 5GB)")
    p.add_argument("--outtype", help="GGUF type for a .gguf output (f32, f16, bf16, q8_0, q4_k_m, ...; default f16)")
    p.add_argument("--threads", type=int, help="threads for quantization to k-quants")
    p.add_argument("--allow-nonfinite", action="store_true", help="merge even if an input tensor holds NaN or Inf (each is reported; default: refuse)")
    add_quantize_flags(p)
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvlocal.outputs.names import fill_type, has_placeholder
    from cvlocal.outputs.types import parse_outtypes
    from cvlocal.outputs.overlap import refuse_overlap
    from cvlocal.commands._checks import at_least
    from cvlocal.vector.merge import merge_models, parse_vector_arg

    vectors = [parse_vector_arg(v) for v in args.vector]
    at_least("--threads", args.threads)
    outputs = [args.output]
    if args.output.suffix.lower() == ".gguf":
        types = parse_outtypes(args.outtype or "f16")
        if has_placeholder(args.output):
            outputs = [args.output.with_name(fill_type(args.output.name, t)) for t in types]
    refuse_overlap(outputs, [args.cp, args.base, args.chat, *(path for path, _ in vectors), _imatrix_input(args)])
    quantize = _quantize_options(args)
    summary = merge_models(
        args.cp,
        args.output,
        base=args.base,
        chat=args.chat,
        ratio=args.ratio,
        vectors=vectors,
        embeddings=args.embeddings,
        special_tokens=args.special_tokens,
        dtype=args.dtype,
        device=args.device,
        shard_size=args.shard_size,
        outtype=args.outtype,
        threads=args.threads,
        force=args.force,
        quiet=args.quiet or args.json,
        allow_nonfinite=args.allow_nonfinite,
        quantize=quantize,
    )
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(f"wrote {', '.join(summary['files']) if summary.get('format') == 'gguf' else summary['output']}: {summary['tensors']} tensors, {human_bytes(summary['bytes'])}, {summary['seconds']:.1f} s on {summary['device']}", args.quiet)
    return 0


def _quantize_options(args: argparse.Namespace):
    """--imatrix FILE and --tensor-type for a one-pass GGUF output, checked before any merge work."""
    from convert.quant_tables import require_imatrix
    from cvlocal.outputs.types import parse_outtypes, parse_tensor_type
    from cvlocal.errors import UsageError
    from cvlocal.imatrix.auto import needs_imatrix, options_for

    if not (args.imatrix or args.tensor_type):
        if args.outtype and args.output.suffix.lower() == ".gguf":
            needs_imatrix(lambda: require_imatrix(parse_outtypes(args.outtype), False), auto=False)
        return None
    if args.output.suffix.lower() != ".gguf":
        raise UsageError("--imatrix and --tensor-type need an output path ending in .gguf", args.output, "Name the output *.gguf for a one-pass merge to GGUF.")
    if args.imatrix and args.imatrix.strip().lower() == "auto":
        raise UsageError("--imatrix auto needs the merged model, which a one-pass merge never writes as a folder", args.output,
                         "Merge to a folder and run cvlocal convert --imatrix auto on it, or pass --imatrix FILE (cvlocal imatrix on the merged folder).")
    overrides = [parse_tensor_type(spec) for spec in args.tensor_type]
    needs_imatrix(lambda: require_imatrix(parse_outtypes(args.outtype or "f16"), args.imatrix is not None, overrides), auto=False)
    imatrix = Path(args.imatrix) if args.imatrix else None
    if imatrix is not None and not imatrix.is_file():
        raise UsageError("importance matrix not found", imatrix, "Pass an imatrix file (cvlocal imatrix MODEL -o imatrix.gguf).")
    return options_for(imatrix, args.tensor_type)
