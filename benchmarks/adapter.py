"""Benchmark of the chat vector as a GGUF LoRA adapter (issue 16): extraction cost, fidelity, chat speed.

On the synthetic triple of ``synthetic.py`` (``--size tiny`` by default; ``small``, ``full`` = the
1.1B shapes):

1. ``cvlocal extract BASE CHAT -o r.gguf --rank R`` for several ranks and ``auto``, each in a fresh
   process measured by ``harness.run_command`` (wall time, peak anonymous memory), with the file
   size and the share of the vector's squared norm kept (from ``--json``);
2. fidelity: KL divergence and top-1 agreement of CP + adapter(r) against the exact merge
   CP + r v (f32 GGUFs), r in {0.5, 1.0}, and of CP alone, on the held-out text
   (``cvlocal.vector.lora_check``);
3. generation rate: CP f16 + the f16 adapter of ``--chat-rank`` against the merged f16 GGUF
   (greedy, the same prompt, tokens per second after the first token).

The synthetic chat model is the base plus i.i.d. noise, a full-rank perturbation: the worst case for
a low-rank adapter (the energy kept grows about linearly with the rank); real chat vectors
concentrate their energy in far fewer directions, so read the fidelity rows as a lower bound.

mergekit's ``mergekit-extract-lora`` + llama.cpp's ``convert_lora_to_gguf.py`` chain is timed by
``benchmarks/run.py --only adapter`` (``make bench``'s adapter section), not here.

Run: ``python benchmarks/adapter.py [--size tiny] [--out benchmarks/ADAPTER.md]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness, synthetic  # noqa: E402

RANKS = ("8", "32", "64", "auto")
PROMPT = "The weather today is mild, and the market by the station opens early. "


def extract_runs(triple: synthetic.Triple, work: Path, ranks: tuple[str, ...]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    env = {"PYTHONPATH": str(ROOT)}
    for rank in ranks:
        path = work / f"rank-{rank}.gguf"
        cmd = [sys.executable, "-m", "cvlocal", "extract", triple.base, triple.chat, "-o", path, "--rank", rank,
               "--outtype", "f32", "--json", "--quiet"]
        if rank == "auto":
            cmd += ["--energy", "0.5"]
        harness.settle()
        run = harness.run_command(cmd, env=env, keep_stdout=True)
        if not run.ok:
            raise SystemExit(f"extract --rank {rank} failed: {run.stderr_tail}")
        summary = json.loads(run.stdout)
        out[rank] = {"path": str(path), "seconds": run.seconds, "peak_anon": run.peak_anon, "bytes": summary["bytes"],
                     "energy_kept": summary["energy_kept"], "left_out_share": summary["left_out_share"],
                     "rank_median": summary["rank_median"]}
    return out


def generation_rate(model: Path, adapters: list, tokens: int = 64) -> float:
    from cvlocal.llama.adapters import open_model

    llm, _ = open_model(model, adapters, n_ctx=512, verbose=False, seed=0)
    try:
        start = None
        count = 0
        for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
            if start is None:
                start = time.perf_counter()
            count += 1
        return (count - 1) / (time.perf_counter() - start) if start and count > 1 else float("nan")
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(synthetic.SIZES), default="tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ADAPTER.md")
    parser.add_argument("--chat-rank", default="64")
    parser.add_argument("--n-ctx", type=int, default=256)
    args = parser.parse_args(argv)

    from convert import write_gguf
    from cvlocal.llama.adapters import AdapterSpec
    from cvlocal.vector.lora_check import check_adapter
    from cvlocal.vector.lora_extract import extract_lora
    from cvlocal.vector.merge import merge_models

    triple = synthetic.ensure_triple(args.size)
    work = Path(tempfile.mkdtemp(prefix="cvlocal-bench-adapter-"))
    try:
        runs = extract_runs(triple, work, RANKS)
        check = check_adapter(triple.cp, triple.base, triple.chat, [Path(r["path"]) for r in runs.values()],
                              n_ctx=args.n_ctx, quiet=True)
        cp16 = write_gguf(triple.cp, work / "cp-f16.gguf", "f16")
        merged16 = Path(merge_models(triple.cp, work / "merged-f16.gguf", base=triple.base, chat=triple.chat, ratio=1.0,
                                     special_tokens="none", outtype="f16", quiet=True)["files"][0])
        adapter16 = work / "chat-f16.gguf"
        extract_lora(triple.base, triple.chat, adapter16, rank=args.chat_rank, outtype="f16", quiet=True)
        rates = {"merged f16": generation_rate(merged16, []),
                 f"CP f16 + rank-{args.chat_rank} f16 adapter": generation_rate(cp16, [AdapterSpec(adapter16, 1.0)])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"size": args.size, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": harness.describe_machine(sys.executable), "extract": runs, "check": check, "rates": rates}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    args.out.write_text(render(result), encoding="utf-8")
    print(render(result))
    return 0


def render(result: dict) -> str:
    lines = [f"# Chat vector as a GGUF LoRA adapter: {result['size']} synthetic triple ({result['measured']})", "",
             "| rank | extract wall | peak anon | file (f32) | vector energy kept | left out (norms) |",
             "|---|---|---|---|---|---|"]
    for rank, r in result["extract"].items():
        label = f"auto (energy 0.5, median {r['rank_median']})" if rank == "auto" else rank
        lines.append(f"| {label} | {r['seconds']:.1f} s | {r['peak_anon'] / 1e6:.0f} MB | {r['bytes'] / 1e6:.2f} MB | "
                     f"{r['energy_kept']:.1%} | {r['left_out_share']:.3%} |")
    check = result["check"]
    lines += ["", f"Fidelity against the exact merge CP + r v (f32 GGUFs, {check['tokens']} held-out tokens in "
              f"{', '.join(check['languages'])}, window {check['n_ctx']}):", "",
              "| ratio | model | mean KL | top-1 |", "|---|---|---|---|"]
    for r, row in check["ratios"].items():
        for rank, measured in zip(result["extract"], row["adapters"]):
            lines.append(f"| {r} | CP + rank {rank} adapter | {measured['mean_kld']:.5f} | {measured['top1']:.1%} |")
        lines.append(f"| {r} | CP alone | {row['cp']['mean_kld']:.5f} | {row['cp']['top1']:.1%} |")
    lines += ["", "Generation rate (greedy, 64 tokens, tokens/s after the first):", ""]
    lines += [f"- {name}: {rate:.1f} tok/s" for name, rate in result["rates"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
