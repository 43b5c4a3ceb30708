"""``cvlocal demo``: watch a chat vector give a continually-pretrained model chat behaviour.

Uses the tiny models bundled in ``assets/demo`` (trained by ``assets/demo/train.py``), writes
three GGUFs and the report into ``--out`` (default ``./demo-out``) and prints the comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvlocal import ui


def register(sub, common) -> None:
    p = sub.add_parser(
        "demo", parents=[common], help="the chat-vector effect end to end on bundled tiny models",
        description="Merge the bundled CP model with (chat - base) straight to GGUF q8_0, convert CP and chat "
                    "too, chat with all three on held-out prompts in the new language, and compare: does the "
                    "reply end its turn, is it in the new language, is it right?")
    p.add_argument("--out", "-o", type=Path, default=Path("demo-out"), help="output folder (default: ./demo-out)")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for conversion and llama.cpp")
    p.add_argument("--assets", type=Path, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvlocal.demo.report import print_report
    from cvlocal.demo.runner import run_demo

    from cvlocal.outputs.overlap import refuse_overlap
    from cvlocal.commands._checks import at_least

    at_least("--threads", args.threads)
    refuse_overlap([args.out], [args.assets])
    report = run_demo(args.out, assets=args.assets, force=args.force, quiet=args.quiet, threads=args.threads)
    if args.json:
        summary = {k: report[k] for k in ("output", "prompts", "ratio", "outtype", "models", "sample", "timings")}
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    else:
        from rich.console import Console

        print_report(report, Console(highlight=False))
    ui.say(f"wrote {args.out}", args.quiet)
    return 0
