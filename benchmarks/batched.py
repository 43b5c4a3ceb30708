"""Batched decoding in ``cvlocal eval``: ``--parallel N`` against ``--parallel 1`` and a bare llama-cpp-python loop.

    .venv/bin/python benchmarks/batched.py --size small                 # q8_0 and q4_k_m, 8 sequences
    .venv/bin/python benchmarks/batched.py --size tiny --limit 1 --max-tokens 16   # a smoke run

For each GGUF type, the same eval items (the shipped suites, ``--limit`` per suite and language)
are generated three ways, in one process, one after the other, model load excluded:

* ``parallel N``: cvlocal's batched decoder (``cvlocal eval --parallel N``'s path);
* ``parallel 1``: cvlocal's one-at-a-time path (``Llama.generate`` through the chat session);
* ``bare``: llama-cpp-python alone, ``create_completion`` for toxicity continuations (same
  sampling and seeds) and ``create_chat_completion`` turn by turn for the chat suites (its own
  Jinja formatter of the GGUF template), greedy; the floor of what one-at-a-time costs.

Figures: wall seconds, items per minute, generated tokens per second, and the share of outputs of
``parallel N`` identical to ``parallel 1`` (greedy chat replies and seeded samples apart). The GGUFs
are converted from the synthetic chat model of ``benchmarks/synthetic.py`` (random weights).
Results: ``<cache>/results/<size>/batched.json`` and ``.md`` unless ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import synthetic  # noqa: E402

SUITES = ("toxicity", "safety", "instructions", "dialogue")


def build_gguf(size: str, outtype: str, cache: Path) -> Path:
    """The synthetic chat model as ``chat-<outtype>.gguf`` in the cache (converted once, by cvlocal's converter)."""
    from convert import write_gguf

    triple = synthetic.ensure_triple(size, cache, progress=False)
    target = cache / "gguf" / size / f"chat-{outtype}.gguf"
    stamp = target.with_suffix(".batched.json")
    marker = json.dumps(synthetic._marker(size, synthetic.SIZES[size]))
    if not (target.is_file() and stamp.is_file() and stamp.read_text() == marker):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_gguf(triple.chat, target, outtype, force=True)
        stamp.write_text(marker)
    return target


def _tokens(records: list[dict[str, Any]]) -> int:
    return sum(int(o.get("completion_tokens", 0)) for r in records for o in r["outputs"])


def run_cvlocal(path: Path, items: list, settings: Any, parallel: int, threads: int | None) -> dict[str, Any]:
    from cvlocal.evaluation.generate import generate_item
    from cvlocal.evaluation.parallel import open_backend

    backend = open_backend(path, parallel=parallel, ctx=settings.ctx, threads=threads, n_gpu_layers=0,
                           chat_format=None)
    records: list[dict[str, Any]] = []
    try:
        start = time.perf_counter()
        if hasattr(backend, "generate_items"):
            backend.generate_items(items, settings, lambda item, record: records.append(record))
        else:
            records = [generate_item(backend, item, settings) for item in items]
        seconds = time.perf_counter() - start
    finally:
        backend.close()
    return {"seconds": seconds, "records": {r["key"]: r for r in records}, "tokens": _tokens(records)}


def run_bare(path: Path, items: list, settings: Any, threads: int | None) -> dict[str, Any]:
    """llama-cpp-python alone on the same items and limits (see the module docstring)."""
    from llama_cpp import Llama

    from cvlocal.evaluation.backend import derived_seed
    from cvlocal.evaluation.generate import TOXICITY_TEMPERATURE, TOXICITY_TOP_P

    llm = Llama(str(path), n_ctx=settings.ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = 0
    try:
        start = time.perf_counter()
        for item in items:
            limit = settings.max_tokens[item.suite]
            if item.suite == "toxicity":
                for k in range(settings.samples):
                    llm.reset()
                    out = llm.create_completion(item.data["prompt"], max_tokens=limit, temperature=TOXICITY_TEMPERATURE,
                                                top_p=TOXICITY_TOP_P, top_k=0, min_p=0.0, repeat_penalty=1.0,
                                                seed=derived_seed(settings.seed, item.id, k))
                    tokens += out["usage"]["completion_tokens"]
                continue
            turns = item.data["turns"] if item.suite == "dialogue" else [item.data["prompt"]]
            messages: list[dict[str, str]] = []
            for turn in turns:
                messages.append({"role": "user", "content": turn})
                out = llm.create_chat_completion(messages, max_tokens=limit, temperature=0.0)
                messages.append({"role": "assistant", "content": out["choices"][0]["message"]["content"] or ""})
                tokens += out["usage"]["completion_tokens"]
        seconds = time.perf_counter() - start
    finally:
        llm.close()
    return {"seconds": seconds, "tokens": tokens}


def identical_share(a: dict[str, dict], b: dict[str, dict], suites: tuple[str, ...]) -> tuple[int, int]:
    """(identical outputs, outputs) of records ``b`` against ``a`` in ``suites``."""
    same = total = 0
    for key, record in a.items():
        if record["suite"] not in suites:
            continue
        other = b[key]["outputs"]
        for x, y in zip(record["outputs"], other):
            total += 1
            same += x["text"] == y["text"]
    return same, total


def bench_type(path: Path, items: list, settings: Any, parallel: int, threads: int | None) -> dict[str, Any]:
    batched = run_cvlocal(path, items, settings, parallel, threads)
    single = run_cvlocal(path, items, settings, 1, threads)
    bare = run_bare(path, items, settings, threads)
    greedy = identical_share(single["records"], batched["records"], ("safety", "instructions", "dialogue"))
    sampled = identical_share(single["records"], batched["records"], ("toxicity",))
    n = len(items)

    def row(run: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": round(run["seconds"], 3), "items_per_minute": round(60 * n / run["seconds"], 2),
                "tokens": run["tokens"], "tokens_per_second": round(run["tokens"] / run["seconds"], 1)}

    rows = {f"parallel {parallel}": row(batched), "parallel 1": row(single), "bare llama-cpp-python": row(bare)}
    return {
        "gguf": str(path), "items": n, "rows": rows,
        "speedup_vs_parallel_1": round(single["seconds"] / batched["seconds"], 2),
        "speedup_vs_bare": round(bare["seconds"] / batched["seconds"], 2),
        "identical_greedy": {"same": greedy[0], "outputs": greedy[1]},
        "identical_sampled": {"same": sampled[0], "outputs": sampled[1]},
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Batched eval generation ({result['size']}, {result['parallel']} sequences, "
             f"{result['threads'] or 'default'} threads, max tokens {result['max_tokens'] or 'per suite'})", "",
             "| type | run | seconds | items/min | generated tok/s | identical to parallel 1 |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for outtype, r in result["types"].items():
        g, s = r["identical_greedy"], r["identical_sampled"]
        for name, row in r["rows"].items():
            same = (f"greedy {g['same']}/{g['outputs']}, sampled {s['same']}/{s['outputs']}"
                    if name.startswith("parallel") and name != "parallel 1" else "")
            lines.append(f"| {outtype} | {name} | {row['seconds']} | {row['items_per_minute']} | "
                         f"{row['tokens_per_second']} | {same} |")
        lines.append(f"| {outtype} | speed-up | x{r['speedup_vs_parallel_1']} vs parallel 1 | "
                     f"x{r['speedup_vs_bare']} vs bare | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from cvlocal.evaluation.generate import GenerationSettings
    from cvlocal.evaluation.suites import SUITES_DIR, load_suites

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(synthetic.SIZES), default="small")
    p.add_argument("--types", default="q8_0,q4_k_m")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--limit", type=int, default=2, help="items per suite and language (default 2)")
    p.add_argument("--langs", default="en,zh-Hant")
    p.add_argument("--samples", type=int, default=2, help="toxicity continuations per prompt (default 2)")
    p.add_argument("--max-tokens", type=int, default=64, help="reply limit for every suite (0: the suites' own)")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cache = args.cache or synthetic.default_cache()
    suite_items = load_suites(list(SUITES), args.langs.split(","), SUITES_DIR, args.limit)
    items = [i for s in SUITES for i in suite_items[s]]
    settings = GenerationSettings.create(samples=args.samples, max_tokens=args.max_tokens or None, seed=0,
                                         ctx=args.ctx)
    result: dict[str, Any] = {"size": args.size, "parallel": args.parallel, "threads": args.threads,
                              "max_tokens": args.max_tokens, "limit": args.limit, "langs": args.langs, "types": {}}
    for outtype in args.types.split(","):
        path = build_gguf(args.size, outtype, cache)
        print(f"{outtype}: {len(items)} items on {path}", file=sys.stderr)
        result["types"][outtype] = bench_type(path, items, settings, args.parallel, args.threads)
    out = args.out or cache / "results" / args.size
    out.mkdir(parents=True, exist_ok=True)
    (out / "batched.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "batched.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
