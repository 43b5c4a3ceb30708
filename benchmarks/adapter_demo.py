"""The demo's own measures with the chat vector as a LoRA adapter (issue 16), beside the exact merge.

Same models, prompts, greedy settings and scoring as ``cvlocal demo`` (``cvlocal.demo.runner``):
CP q8_0 with the adapter (f16) at ratio 1 for several ranks, against the merged q8_0 GGUF (the
demo's "CP + chat vector") and CP alone. Writes ``benchmarks/ADAPTER-demo.md``.

Run: ``python benchmarks/adapter_demo.py [--ranks 4,8,32,full]``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="4,8,32,full")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ADAPTER-demo.md")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from cvlocal.demo.bundle import load_bundle
    from cvlocal.demo.runner import MAX_TOKENS, build_models, chat_with
    from cvlocal.demo.scoring import MEASURES, rates
    from cvlocal.vector.lora_extract import extract_lora

    bundle = load_bundle(None)
    work = Path(tempfile.mkdtemp(prefix="cvlocal-adapter-demo-"))
    rows: list[tuple[str, dict[str, float], str]] = []
    try:
        paths = build_models(bundle, work, threads=args.threads, quiet=True)
        specs = [("CP", str(paths["cp"]), ""), ("CP + chat vector (exact merge)", str(paths["cp+vector"]), "")]
        for rank in args.ranks.split(","):
            adapter = work / f"chat-vector-r{rank}.gguf"
            summary = extract_lora(bundle.base, bundle.chat, adapter, rank=rank, outtype="f16", quiet=True)
            note = f"{summary['energy_kept']:.1%} of the vector kept, {summary['bytes'] / 1e3:.0f} kB"
            specs.append((f"CP + rank-{rank} adapter @1", f"{paths['cp']}+{adapter}@1", note))
        for label, spec, note in specs:
            started = time.perf_counter()
            replies = chat_with(Path(spec), bundle.prompts, bundle.a_words, threads=args.threads, max_tokens=MAX_TOKENS)
            rows.append((label, rates([r.score for r in replies]), f"{note}{'; ' if note else ''}{time.perf_counter() - started:.0f} s"))
            print(label, rows[-1][1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# Demo measures with the chat vector as a LoRA adapter ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"{len(bundle.prompts)} held-out chat prompts in language B, greedy, {MAX_TOKENS} tokens, CP q8_0 (+ f16 adapter).", "",
             "| model | " + " | ".join(MEASURES) + " | notes |", "|---" * (len(MEASURES) + 2) + "|"]
    for label, r, note in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r[m]:.0%}" for m in MEASURES) + f" | {note} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
