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
    text = render(rows, len(bundle.prompts), MAX_TOKENS, MEASURES)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate over n trials."""
    if n == 0:
        return (0.0, 1.0)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((rate * (1 - rate) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def render(rows: list[tuple[str, dict[str, float], str]], n: int, max_tokens: int, measures: tuple[str, ...]) -> str:
    """The table, every rate with its 95% Wilson interval (no paired test: per-prompt replies are not kept)."""
    lines = [f"# Demo measures with the chat vector as a LoRA adapter ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"{n} held-out chat prompts in language B, greedy, {max_tokens} tokens, CP q8_0 (+ f16 adapter); "
             "rates with their 95% Wilson intervals.", "",
             "| model | " + " | ".join(measures) + " | notes |", "|---" * (len(measures) + 2) + "|"]
    for label, r, note in rows:
        cells = []
        for m in measures:
            lo, hi = wilson(r[m], n)
            cells.append(f"{r[m]:.0%} ({lo:.0%}–{hi:.0%})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
