"""``cvlocal extract BASE CHAT -o VECTOR_DIR``: save the chat vector (chat - base)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cvlocal.ui import human_bytes, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "extract",
        parents=[common],
        help="save chat - base as a chat-vector folder",
        description="Compute the chat vector chat - base tensor by tensor (float32, rounded once) and save it with the chat model's template, stop tokens and special-token rows.",
    )
    p.add_argument("base", type=Path, help="the base model folder (e.g. Llama-3-8B)")
    p.add_argument("chat", type=Path, help="the chat model folder fine-tuned from that base (e.g. Llama-3-8B-Instruct)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the chat-vector folder to create")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="dtype of the saved vector (default: the inputs'; float32 keeps it exact)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps: where the subtraction runs (default auto)")
    p.add_argument("--shard-size", default="5GB", help="largest shard (default 5GB)")
    p.add_argument("--allow-nonfinite", action="store_true", help="extract even if base or chat holds NaN or Inf (default: refuse)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convert.output_policy import refuse_overlap
    from cvlocal.vector.extract import extract_vector

    refuse_overlap([args.output], [args.base, args.chat])
    summary = extract_vector(args.base, args.chat, args.output, dtype=args.dtype, device=args.device, shard_size=args.shard_size, force=args.force, quiet=args.quiet or args.json,
                             allow_nonfinite=args.allow_nonfinite)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(f"wrote {', '.join(summary['files']) if summary.get('format') == 'gguf' else summary['output']}: {summary['tensors']} tensors, {human_bytes(summary['bytes'])} {summary['dtype']}, {summary['seconds']:.1f} s on {summary['device']}", args.quiet)
    return 0
