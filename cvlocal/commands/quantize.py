"""``cvlocal quantize IN.gguf -o OUT.gguf --type T``: another type from a float (f32/f16/bf16) GGUF.

f32/f16/bf16/q8_0 are re-encoded by cvlocal's writer (the same bytes as a direct conversion);
every other type is made by llama.cpp's quantizer. ``-o`` may also be a folder (naming-convention
name from the input's metadata) or a name with ``{type}`` / ``{TYPE}``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cvlocal.ui import maybe_status, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "quantize",
        parents=[common],
        help="quantize a float GGUF to another type (q4_k_m, q5_k_m, q6_k, q8_0, ...)",
        description="Make a quantized GGUF from an f32, f16 or bf16 GGUF with llama.cpp's quantizer (q8_0 and float types with cvlocal's writer).",
    )
    p.add_argument("input", type=Path, help="a float GGUF (from cvlocal convert --outtype f16/bf16/f32)")
    p.add_argument("-o", "--output", required=True, help="output .gguf file, a folder, or a name with {type}")
    p.add_argument("--type", required=True, dest="qtype", help="q4_k_m, q5_k_m, q6_k, q8_0, iq4_xs, q4_0, ... (see cvlocal convert --help)")
    p.add_argument("--threads", type=int, help="threads for llama.cpp's quantizer (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convert import QuantizeError, quantize_gguf
    from cvlocal.errors import WorkError

    from convert.quant_tables import outtype
    from cvlocal.commands._checks import at_least

    outtype(args.qtype)  # a bad type is refused before the input is opened
    at_least("--threads", args.threads)
    started = time.monotonic()
    with maybe_status(f"quantizing {args.input.name} to {args.qtype}", args.quiet or args.json):
        try:
            out = quantize_gguf(args.input, args.output, args.qtype, threads=args.threads, force=args.force)
        except QuantizeError as err:
            raise WorkError(str(err)) from None
    seconds = time.monotonic() - started
    summary = {"input": str(args.input), "output": str(out), "type": args.qtype.lower(), "bytes": out.stat().st_size, "seconds": round(seconds, 3)}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(f"wrote {out} ({summary['bytes'] / 1e6:.1f} MB) in {seconds:.1f} s", args.quiet)
    return 0
