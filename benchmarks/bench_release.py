"""``cvlocal release`` against the llama.cpp chain, in the same run.

The chain is what a person does today without cvlocal: llama.cpp's ``convert_hf_to_gguf.py``
(to f16, its default) and then llama.cpp's quantizer once per type, and no quality table at all.
``cvlocal release --types q4_k_m,q8_0`` does the same conversion once, quantizes both types, loads
and evaluates every file, measures the quality table (KL divergence, top-1, perplexity against
the lossless reference on the held-out multilingual text) and writes the card, checksums and
Modelfiles. Target: the release is no slower than the chain while also producing the table.

    python benchmarks/bench_release.py --size full            # the synthetic TinyLlama-1.1B shape
    python benchmarks/bench_release.py --size tiny --repeat 1 # a quick check of the script itself

Both tools read the same synthetic chat model (``benchmarks/synthetic.py``; bf16 safetensors)
from a warm page cache; dirty pages are flushed between runs (``harness.settle``). The order of
the two tools alternates between repeats so neither always runs first; the median is reported.
Wall time and peak memory are measured from outside by ``harness.run_command``. The release's own
stage timings and its quality table are read from its ``--json`` output.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import Figure, Run, chain, describe_machine, run_command, settle, size_of, warm  # noqa: E402
from benchmarks.peers import Peers, Unavailable  # noqa: E402
from benchmarks.synthetic import SIZES, default_cache, ensure_triple, parameter_count  # noqa: E402

TYPES = ("q4_k_m", "q8_0")


def run_chain(peers: Peers, model: Path, work: Path, threads: int) -> Run:
    """llama.cpp's converter to f16, then one quantize run per type."""
    conv = peers.llama_convert()
    f16 = work / "model-F16.gguf"
    steps = [run_command(conv.command(model, f16, "f16"), env=conv.env)]
    if steps[-1].ok:
        for qtype in TYPES:
            steps.append(run_command(Peers.quantize_command(sys.executable, f16, work / f"model-{qtype.upper()}.gguf", qtype, threads)))
            if not steps[-1].ok:
                break
    return chain(steps)


def run_release(model: Path, work: Path, threads: int, extra: list[str]) -> Run:
    cmd = [sys.executable, "-m", "cvlocal", "release", str(model), "-o", str(work / "release"),
           "--types", ",".join(TYPES), "--threads", str(threads), "--json", *extra]
    return run_command(cmd, cwd=ROOT, keep_stdout=True, env={"PYTHONPATH": str(ROOT)})


def _fresh(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)


def _figure_dict(fig: Figure) -> dict[str, object]:
    return {
        "seconds_median": round(fig.seconds, 2),
        "seconds_each": [round(r.seconds, 2) for r in fig.runs],
        "peak_rss_mb": round(fig.peak_rss / 1e6),
        "peak_anon_mb": round(fig.peak_anon / 1e6),
        "ok": all(r.ok for r in fig.runs),
        "errors": [r.stderr_tail for r in fig.runs if not r.ok],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cvlocal release vs llama.cpp convert + quantize")
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--cache", type=Path, default=None, help="models and peers (default $CVLOCAL_BENCH_CACHE or ~/.cache/cvlocal-bench)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for outputs (default: a temporary folder)")
    parser.add_argument("--no-install", action="store_true", help="do not install llama.cpp's converter if missing")
    parser.add_argument("--release-args", default="", help="extra arguments for cvlocal release (e.g. '--ctx 512 --chunks 1')")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)

    cache = args.cache or default_cache()
    triple = ensure_triple(args.size, cache)
    model = triple.chat
    peers = Peers(cache, install=not args.no_install)
    try:
        peers.llama_convert()
    except Unavailable as err:
        print(f"llama.cpp's converter is not available: {err}", file=sys.stderr)
        return 1
    work_root = args.work or Path(tempfile.mkdtemp(prefix="bench-release-", dir=cache))
    extra = args.release_args.split()
    warm([model])

    chains: list[Run] = []
    releases: list[Run] = []
    release_json: dict | None = None
    for i in range(args.repeat):
        order = ("chain", "release") if i % 2 == 0 else ("release", "chain")
        for tool in order:
            work = work_root / tool
            _fresh(work)
            settle()
            if tool == "chain":
                chains.append(run_chain(peers, model, work, args.threads))
            else:
                run = run_release(model, work, args.threads, extra)
                releases.append(run)
                if run.ok:
                    release_json = json.loads(run.stdout)
            print(f"[{i + 1}/{args.repeat}] {tool}: {(chains if tool == 'chain' else releases)[-1].seconds:.1f} s", file=sys.stderr)
    chain_fig, release_fig = Figure.of(chains), Figure.of(releases)
    result = {
        "benchmark": "release",
        "size": args.size,
        "parameters": parameter_count(SIZES[args.size]),
        "model_bytes": size_of([model]),
        "types": list(TYPES),
        "threads": args.threads,
        "repeat": args.repeat,
        "machine": describe_machine(sys.executable, peers.versions()),
        "chain": {**_figure_dict(chain_fig),
                  "steps": ["convert_hf_to_gguf.py --outtype f16", *(f"quantize {t}" for t in TYPES)],
                  "steps_seconds_median": [round(statistics.median(r.steps[k].seconds for r in chains), 2)
                                           for k in range(len(TYPES) + 1) if all(len(r.steps) > k for r in chains)]},
        "release": {**_figure_dict(release_fig), "release_args": extra},
        "release_over_chain": round(release_fig.seconds / chain_fig.seconds, 3) if chain_fig.seconds else None,
        "target_met": bool(chain_fig.seconds and release_fig.seconds <= chain_fig.seconds),
    }
    if release_json:
        result["release"]["stage_seconds"] = release_json.get("seconds")
        result["release"]["quality"] = {
            t["label"]: {k: t["quality"][k] for k in ("mean_kld", "p99_kld", "top1", "ppl", "ppl_base") if t.get("quality") and k in t["quality"]}
            for t in release_json["types"] if t.get("quality")
        }
        result["release"]["quality_settings"] = release_json.get("quality_settings")
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.work is None:
        shutil.rmtree(work_root, ignore_errors=True)
    return 0 if chain_fig.runs and release_fig.runs and all(r.ok for r in chains + releases) else 1


if __name__ == "__main__":
    sys.exit(main())
