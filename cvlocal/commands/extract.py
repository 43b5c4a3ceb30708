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
    lora = p.add_argument_group("GGUF LoRA adapter (an output ending in .gguf)")
    lora.add_argument("--rank", default=None, help="R, full or auto: rank of each tensor's truncated SVD (default 64)")
    lora.add_argument("--energy", type=float, default=None, help="with --rank auto: fraction of each tensor's squared norm to keep (default 0.9)")
    lora.add_argument("--outtype", default="f16", help="f32|f16|bf16|q8_0: type of the adapter's tensors (default f16)")
    lora.add_argument("--check", type=Path, default=None, metavar="CP_DIR_OR_GGUF", help="measure KL / top-1 of CP+adapter against the exact merge on the held-out text (CP as HF folder or f32/f16/bf16 GGUF)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvlocal.outputs.overlap import refuse_overlap

    refuse_overlap([args.output], [args.base, args.chat, args.check])
    if args.output.suffix.lower() == ".gguf":
        return _run_lora(args)
    from cvlocal.vector.extract import extract_vector

    summary = extract_vector(args.base, args.chat, args.output, dtype=args.dtype, device=args.device, shard_size=args.shard_size, force=args.force, quiet=args.quiet or args.json,
                             allow_nonfinite=args.allow_nonfinite)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(f"wrote {', '.join(summary['files']) if summary.get('format') == 'gguf' else summary['output']}: {summary['tensors']} tensors, {human_bytes(summary['bytes'])} {summary['dtype']}, {summary['seconds']:.1f} s on {summary['device']}", args.quiet)
    return 0


def _run_lora(args: argparse.Namespace) -> int:
    """The .gguf branch: the chat vector as a GGUF LoRA adapter (and its fidelity with --check)."""
    from cvlocal.vector.lora_extract import extract_lora, parse_rank

    parse_rank(args.rank or 64, args.energy)  # refuse bad --rank / --energy before --check's work
    if args.check is not None:
        from cvlocal.vector.lora_check import check_cp

        check_cp(args.check, args.base, args.chat)  # and a bad --check before the adapter is written
    quiet = args.quiet or args.json
    summary = extract_lora(args.base, args.chat, args.output, rank=args.rank or 64, energy=args.energy, outtype=args.outtype,
                           device=args.device, force=args.force, quiet=quiet)
    if args.check is not None:
        from cvlocal.vector.lora_check import check_adapter

        summary["check"] = check_adapter(args.check, args.base, args.chat, args.output, quiet=quiet)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    say(f"wrote {summary['output']}: {summary['tensors']} LoRA pairs, rank {summary['rank']} (min {summary['rank_min']}, "
        f"median {summary['rank_median']}, max {summary['rank_max']}), {human_bytes(summary['bytes'])} {summary['outtype']}, "
        f"{summary['energy_kept']:.1%} of the vector's squared norm kept, {summary['seconds']:.1f} s on {summary['device']}", args.quiet)
    if summary["left_out"]:
        kinds = sorted({e["kind"] for e in summary["left_out"]})
        say(f"left out ({', '.join(kinds)}): {len(summary['left_out'])} tensors, {summary['left_out_share']:.2%} of the vector's squared norm: "
            + ", ".join(f"{e['tensor']} {e['share']:.2%}" for e in sorted(summary["left_out"], key=lambda e: -e["share"])[:6])
            + (" ..." if len(summary["left_out"]) > 6 else ""), args.quiet)
    if "check" in summary:
        from cvlocal.vector.lora_check import format_check

        say(format_check(summary["check"]), args.quiet)
    return 0
