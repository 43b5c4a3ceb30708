"""``cvlocal quantize IN.gguf -o OUT.gguf --type T``: another type from a float (f32/f16/bf16) GGUF.

f32/f16/bf16/q8_0 are re-encoded by cvlocal's writer (the same bytes as a direct conversion);
every other type is made by llama.cpp's quantizer, in a child process so that Ctrl-C and SIGTERM
stop it at once (exit 130 / 143, nothing at the output path). ``-o`` may also be a folder
(naming-convention name from the input's metadata) or a name with ``{type}`` / ``{TYPE}``.
``--imatrix`` gives llama.cpp an importance matrix (needed by iq1_*, iq2_*, iq3_xxs, iq3_xs and
q2_k_s), ``--tensor-type PATTERN=TYPE`` overrides the type of matching tensors, and
``--allow-requantize`` accepts an already quantized input (with a warning: the errors compound).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cvlocal.ui import item_progress, say, warn


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "quantize",
        parents=[common],
        help="quantize a float GGUF to another type (q4_k_m, q5_k_m, q6_k, q8_0, iq2_xs with --imatrix, ...)",
        description="Make a quantized GGUF from an f32, f16 or bf16 GGUF with llama.cpp's quantizer (q8_0 and float types with cvlocal's writer).",
    )
    p.add_argument("input", type=Path, help="a float GGUF (from cvlocal convert --outtype f16/bf16/f32)")
    p.add_argument("-o", "--output", required=True, help="output .gguf file, a folder, or a name with {type}")
    p.add_argument("--type", required=True, dest="qtype", help="q4_k_m, q5_k_m, q6_k, q8_0, iq4_xs, q4_0, ...; iq2_xs, iq3_xxs, q2_k_s, iq1_m ... with --imatrix")
    p.add_argument("--imatrix", type=Path, metavar="FILE", help="an importance matrix (cvlocal imatrix, or llama-imatrix's GGUF or .dat)")
    p.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE", help="type for tensors whose name matches PATTERN (a regex), e.g. attn_v=q6_k; repeatable")
    p.add_argument("--allow-requantize", action="store_true", help="accept an already quantized input (quality suffers: the errors compound)")
    p.add_argument("--threads", type=int, help="threads for llama.cpp's quantizer (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convert import QuantizeError
    from cvlocal.outputs.gguf import quantize_gguf
    from convert.convert_model import RequantizeRefused
    from convert.quant_tables import outtype, require_imatrix
    from cvlocal.errors import UsageError, WorkError

    from cvlocal.commands._checks import at_least
    from cvlocal.imatrix.auto import needs_imatrix, options_for

    outtype(args.qtype)  # a bad type is refused before the input is opened
    at_least("--threads", args.threads)
    quiet = args.quiet or args.json
    options = options_for(args.imatrix, args.tensor_type, args.allow_requantize)
    if args.allow_requantize:
        warn("--allow-requantize: a quantized input loses quality again (its errors compound); quantize from the f16/bf16 GGUF when you have it")
    started = time.monotonic()
    with item_progress(quiet) as progress:
        task = None

        def on_tensor(done: int, total: int, name: str) -> None:
            nonlocal task
            if task is None:
                task = progress.add_task(f"quantizing to {args.qtype.lower()}", total=total, detail="")
            progress.update(task, completed=done, detail=name)

        try:
            needs_imatrix(lambda: require_imatrix([outtype(args.qtype)], options.imatrix is not None, options.tensor_types), auto=False)
            out = quantize_gguf(args.input, args.output, args.qtype, threads=args.threads, force=args.force, quantize=options, on_tensor=on_tensor)
        except QuantizeError as err:
            raise WorkError(str(err)) from None
        except RequantizeRefused as err:
            raise UsageError(f"the input is already quantized ({', '.join(err.quantized)} tensors)", err.path,
                             "Quantize from the f16/bf16/f32 GGUF, or pass --allow-requantize (quality suffers).") from None
        if task is not None:
            progress.update(task, completed=progress.tasks[0].total, detail="")
    seconds = time.monotonic() - started
    summary = {"input": str(args.input), "output": str(out), "type": args.qtype.lower(), "bytes": out.stat().st_size, "seconds": round(seconds, 3),
               "imatrix": str(args.imatrix) if args.imatrix else None, "tensor_types": list(args.tensor_type)}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(f"wrote {out} ({summary['bytes'] / 1e6:.1f} MB) in {seconds:.1f} s", args.quiet)
    return 0
