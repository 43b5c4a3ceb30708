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

With ``--serve TYPE``: 8 concurrent streaming ``openai`` clients against ``cvlocal serve --parallel
N`` and against llama-cpp-python's own server (``interrupt_requests`` off, so it completes every
request) on the same GGUF: aggregate streamed chunks per second (about one per token), time to
first token and latency (p50, p95), failed requests, and the share of greedy replies the two
servers give identically.

Every comparison runs ``--repeats`` rounds (default 3) taking turns (eval: parallel N, parallel 1,
bare, then again; server: ours, theirs, ours, theirs, ...); rows are medians with the lowest and
highest run, ratios the medians of the per-round ratios: on a shared machine the load moves single
runs, and one busy minute must not decide a ratio.

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
    from cvlocal.outputs.gguf import write_gguf

    triple = synthetic.ensure_triple(size, cache, progress=False)
    target = cache / "gguf" / size / f"chat-{outtype}.gguf"
    stamp = target.with_suffix(".batched.json")
    marker = json.dumps(synthetic._marker(size, synthetic.SIZES[size]))
    if not (target.is_file() and stamp.is_file() and stamp.read_text() == marker):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_gguf(triple.chat, target, outtype, force=True)
        stamp.write_text(marker)
    return target


def same_threads(threads: int | None) -> int:
    """One explicit thread count for every tool in a comparison: ``threads``, else every CPU.

    Left to themselves the tools differ: llama-cpp-python (and cvlocal's one-at-a-time path, which
    copies it) decode a single sequence with half the CPUs, while a batch of several sequences
    runs on ``n_threads_batch`` (all of them), and llama-server picks its own count. A
    comparison with defaults would measure thread counts, not batching.
    """
    import multiprocessing

    return threads or multiprocessing.cpu_count()


def build_demo_gguf(outtype: str, cache: Path) -> Path:
    """The demo's chat model (``assets/demo/chat``) as ``gguf/demo/chat-<outtype>.gguf`` in the cache."""
    from cvlocal.outputs.gguf import convert_checkpoint

    source = ROOT / "assets" / "demo" / "chat"
    target = cache / "gguf" / "demo" / f"chat-{outtype}.gguf"
    stamp = target.with_suffix(".batched.json")
    marker = json.dumps(sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in source.iterdir() if f.is_file()))
    if not (target.is_file() and stamp.is_file() and stamp.read_text() == marker):
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(source, target, outtype=outtype, force=True)
        stamp.write_text(marker)
    return target


def bench_demo(path: Path, parallel: int, threads: int | None, repeats: int = 3) -> dict[str, Any]:
    """The demo's 128 held-out chats (the sweep's ``demo`` suite): ``parallel`` at a time against one
    at a time, ``repeats`` alternating rounds; chats per minute and the share of identical replies."""
    from cvlocal.demo.bundle import load_bundle
    from cvlocal.demo.runner import MAX_TOKENS, chat_with

    bundle = load_bundle()
    names = (f"parallel {parallel}", "parallel 1")
    rounds: list[dict[str, Any]] = []
    for _ in range(repeats):
        figures = {}
        for name, n in zip(names, (parallel, 1)):
            t0 = time.perf_counter()
            replies = chat_with(path, bundle.prompts, bundle.a_words, threads=threads, max_tokens=MAX_TOKENS, parallel=n)
            figures[name] = {"seconds": time.perf_counter() - t0, "replies": [r.as_dict() for r in replies]}
        rounds.append(figures)
    first = rounds[0]
    same = sum(a == b for a, b in zip(first[names[0]]["replies"], first[names[1]]["replies"]))
    n = len(bundle.prompts)
    rows = {}
    for name in names:
        seconds = spread([r[name]["seconds"] for r in rounds])
        rows[name] = {"seconds": seconds["median"], "runs": [round(r[name]["seconds"], 3) for r in rounds],
                      "chats_per_minute": round(60 * n / seconds["median"], 1)}
    return {"gguf": str(path), "chats": n, "repeats": repeats, "rows": rows,
            "speedup_vs_parallel_1": spread([r[names[1]]["seconds"] / r[names[0]]["seconds"] for r in rounds], 2),
            "identical": {"same": same, "outputs": n}}


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


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median, lowest and highest of repeated figures (the spread says how much load moved them)."""
    import statistics

    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def bench_type(path: Path, items: list, settings: Any, parallel: int, threads: int | None,
               repeats: int = 3) -> dict[str, Any]:
    """``repeats`` rounds of ``--parallel N``, ``--parallel 1`` and the bare loop, taking turns.

    Each round runs the three one after the other, so a ratio within a round compares runs minutes
    apart; the reported ratios are the medians of the per-round ratios, with their spread, and each
    row's rate the median of its runs. Load that comes and goes on a shared machine then moves a
    round's three runs together or one round only, not the whole figure.
    """
    names = (f"parallel {parallel}", "parallel 1", "bare llama-cpp-python")
    rounds: list[dict[str, dict[str, Any]]] = []
    for _ in range(repeats):
        rounds.append({names[0]: run_cvlocal(path, items, settings, parallel, threads),
                       names[1]: run_cvlocal(path, items, settings, 1, threads),
                       names[2]: run_bare(path, items, settings, threads)})
    first = rounds[0]
    greedy = identical_share(first[names[1]]["records"], first[names[0]]["records"], ("safety", "instructions", "dialogue"))
    sampled = identical_share(first[names[1]]["records"], first[names[0]]["records"], ("toxicity",))
    # cvlocal's outputs should not change between rounds (seeded, greedy); at k-quants the batched ones
    # can, since which sequences share a batch depends on timing and the kernels' rounding on the batch
    changed = [name for name in names[:2] if any(len(set(identical_share(first[name]["records"], r[name]["records"],
                                                                         SUITES))) > 1 for r in rounds[1:])]
    n = len(items)

    def row(name: str) -> dict[str, Any]:
        seconds = [r[name]["seconds"] for r in rounds]
        rates = [r[name]["tokens"] / r[name]["seconds"] for r in rounds]
        middle = spread(seconds)["median"]
        return {"seconds": middle, "runs": [round(x, 3) for x in seconds], "items_per_minute": round(60 * n / middle, 2),
                "tokens": rounds[0][name]["tokens"], "tokens_per_second": spread(rates, 1)}

    def ratio(slow: str) -> dict[str, float]:
        return spread([r[slow]["seconds"] / r[names[0]]["seconds"] for r in rounds], 2)

    return {
        "gguf": str(path), "items": n, "repeats": repeats, "rows": {name: row(name) for name in names},
        "speedup_vs_parallel_1": ratio(names[1]), "speedup_vs_bare": ratio(names[2]),
        "identical_greedy": {"same": greedy[0], "outputs": greedy[1]},
        "identical_sampled": {"same": sampled[0], "outputs": sampled[1]},
        "records_changed_between_rounds": changed,
    }


SERVE_QUESTIONS = ("Tell me about the weather today.", "請用繁體中文介紹台灣的夜市。", "Write three short lines about the sea.",
                   "한국어로 인사해 주세요.", "日本語で自己紹介をしてください。", "Give me a list of five fruits.",
                   "为什么天空是蓝色的？", "Summarise the plot of a film you like.")


def start_server(command: list[str], port: int, log: Any = None) -> Any:
    """Start a server process and wait (up to 120 s) until ``/v1/models`` answers; (process, openai client)."""
    import subprocess

    import openai

    out = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if log is not None else out, cwd=ROOT)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600, max_retries=0)
    deadline = time.monotonic() + 120
    while True:
        try:
            client.models.list()
            return proc, client
        except (openai.APIConnectionError, openai.InternalServerError):  # not listening yet; llama-server: 503 while loading
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server did not start: {' '.join(command)}") from None
            time.sleep(0.3)


def round_question(question: str, number: int) -> str:
    """The question as round ``number`` asks it: a round mark at the front, so a round never finds
    its prompts in a server's kept cells from the round before (cvlocal keeps one conversation per
    slot, llama-cpp-python its last prompt; either would skip most of a repeated prompt), and both
    servers reuse at most the template's header, as with new users."""
    return f"({number}) {question}"


def _clients(client: Any, model: str, max_tokens: int, number: int = 1) -> dict[str, Any]:
    """8 concurrent streaming clients: aggregate tok/s, time to first token and latency (p50, p95)."""
    import statistics
    import threading

    results: list[tuple[float, float, int]] = []
    replies: dict[str, str] = {}
    failed: list[str] = []
    barrier = threading.Barrier(len(SERVE_QUESTIONS))

    def ask(question: str) -> None:
        try:
            barrier.wait()
            t0 = time.perf_counter()
            first, n, parts = None, 0, []
            asked = round_question(question, number)
            for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": asked}],
                                                         max_tokens=max_tokens, temperature=0.0, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter() - t0
                    n += 1
                    parts.append(chunk.choices[0].delta.content)
            results.append((first or 0.0, time.perf_counter() - t0, n))
            replies[question] = "".join(parts).strip()
        except Exception as err:  # noqa: BLE001  (counted as a failed request)
            failed.append(str(err))

    start = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(q,)) for q in SERVE_QUESTIONS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 3) if values else 0.0

    ttft, latency = [r[0] for r in results], [r[1] for r in results]
    return {"wall_seconds": round(wall, 3), "streamed_chunks": sum(r[2] for r in results),
            "aggregate_chunks_per_second": round(sum(r[2] for r in results) / wall, 1),
            "ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95), "latency_p50": pct(latency, 0.5),
            "latency_p95": pct(latency, 0.95), "failed": len(failed),
            "ttft_max": round(max(ttft), 3) if ttft else None, "latency_min": round(min(latency), 3) if latency else None,
            "ttft_median_all": round(statistics.median(ttft), 3) if ttft else None, "replies": replies}


LLAMA_SERVER = "llama-server (upper reference)"


def bench_serve(path: Path, parallel: int, threads: int | None, ctx: int, max_tokens: int,
                repeats: int = 3, reference: Path | None = None) -> dict[str, Any]:
    """``cvlocal serve --parallel N`` against llama-cpp-python's server (interrupt_requests off), same GGUF.

    Both servers are started (and loaded) first; then ``repeats`` rounds of 8 concurrent clients
    alternate between them (ours, theirs, ours, theirs, ...), so a busy minute on the shared machine
    falls on one round of one server, not on the whole comparison. Per server: the medians over the
    rounds (aggregate rate with its lowest and highest, time to first token and latency p50/p95),
    failed requests over all rounds, the worst round's latest first token against its earliest
    finish; the ratio is the median of the per-round ratios; the identical-reply share compares
    the two servers' greedy replies to the same questions (first round).

    ``reference``: llama.cpp's own ``llama-server`` binary, a third server in every round (``-np N``
    slots of ``ctx`` tokens each, one KV stream per slot and flash attention off, as cvlocal's), the
    upper reference: C++ all the way, so the share of its rate cvlocal reaches is what Python costs.
    """
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    threads = same_threads(threads)
    thread_args = ["--threads", str(threads)]
    p = port()
    mine = [sys.executable, "-m", "cvlocal", "serve", str(path), "--port", str(p), "--ctx", str(ctx), "--parallel",
            str(parallel), "--quiet", *thread_args]
    q = port()
    theirs = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--port", str(q), "--n_ctx", str(ctx),
              "--interrupt_requests", "False", "--model_alias", path.stem]
    theirs += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    names: tuple[str, ...] = (f"cvlocal serve --parallel {parallel}", "llama-cpp-python server")
    servers = [(names[0], mine, p), (names[1], theirs, q)]
    if reference is not None:
        r = port()
        upper = [str(reference), "-m", str(path), "--host", "127.0.0.1", "--port", str(r), "-c", str(ctx * parallel),
                 "-np", str(parallel), "-fa", "off", "--no-kv-unified", "--no-webui", "-a", path.stem]
        upper += ["-t", str(threads), "-tb", str(threads)]
        names += (LLAMA_SERVER,)
        servers.append((LLAMA_SERVER, upper, r))
    procs, clients = [], {}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for name, command, at in servers:
            proc, clients[name] = start_server(command, at)
            procs.append(proc)
        for number in range(1, repeats + 1):
            for name in names:
                rounds[name].append(_clients(clients[name], path.stem, max_tokens, number))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    out: dict[str, Any] = {}
    for name in names:
        runs = rounds[name]
        out[name] = {
            "rounds": len(runs), "wall_seconds": spread([r["wall_seconds"] for r in runs])["median"],
            "runs": [r["wall_seconds"] for r in runs],
            "aggregate_chunks_per_second": spread([r["aggregate_chunks_per_second"] for r in runs], 1),
            **{k: spread([r[k] for r in runs])["median"] for k in ("ttft_p50", "ttft_p95", "latency_p50", "latency_p95")},
            "failed": sum(r["failed"] for r in runs),
            "waits": sum(1 for r in runs if r["ttft_max"] is None or r["ttft_max"] >= r["latency_min"]),
        }
        # the round closest to a wait: its latest first token and its earliest finished request
        tight = min(runs, key=lambda r: (r["latency_min"] or 0.0) - (r["ttft_max"] or 0.0))
        out[name].update(ttft_max=tight["ttft_max"], latency_min=tight["latency_min"])
    ratios = [a["aggregate_chunks_per_second"] / b["aggregate_chunks_per_second"]
              for a, b in zip(rounds[names[0]], rounds[names[1]]) if b["aggregate_chunks_per_second"]]
    first_mine, first_theirs = rounds[names[0]][0]["replies"], rounds[names[1]][0]["replies"]
    same = sum(1 for question, text in first_mine.items() if first_theirs.get(question) == text)
    same_text = sum(1 for question, text in first_mine.items()
                    if _without_replacement(first_theirs.get(question)) == _without_replacement(text))
    upper = {}
    if reference is not None:
        shares = [a["aggregate_chunks_per_second"] / b["aggregate_chunks_per_second"]
                  for a, b in zip(rounds[names[0]], rounds[LLAMA_SERVER]) if b["aggregate_chunks_per_second"]]
        upper = {"share_of_llama_server": spread(shares, 2) if shares else None}
    return {"servers": out, "ratio": spread(ratios, 2) if ratios else None, **upper,
            "identical_replies": {"same": same, "outputs": len(SERVE_QUESTIONS)},
            "identical_apart_from_replacement": {"same": same_text, "outputs": len(SERVE_QUESTIONS)},
            "first_round_replies": {names[0]: first_mine, names[1]: first_theirs}, "repeats": repeats}


def _without_replacement(text: str | None) -> str | None:
    """The reply without U+FFFD. A token that ends inside a UTF-8 character (a random or
    undertrained model emits such bytes) is shown as U+FFFD by cvlocal serve, as llama-server's
    JSON does; llama-cpp-python's server drops those bytes. The tokens are the same either way."""
    return None if text is None else text.replace("\ufffd", "")


def _range(figure: dict[str, float]) -> str:
    """``median (min to max)``."""
    return f"{figure['median']} ({figure['min']} to {figure['max']})"


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Batched eval generation ({result['size']}, {result['parallel']} sequences, "
             f"{result['threads'] or 'default'} threads, max tokens {result['max_tokens'] or 'per suite'}, "
             f"medians of {result['repeats']} alternating rounds, lowest to highest in brackets)", "",
             "| type | run | seconds (median) | runs (s) | items/min | generated tok/s | identical to parallel 1 |",
             "| --- | --- | ---: | --- | ---: | ---: | --- |"]
    typed = list(result["types"].items()) + ([("demo chat q8_0", result["demo_eval"])] if result.get("demo_eval") else [])
    for outtype, r in typed:
        g, s = r["identical_greedy"], r["identical_sampled"]
        for name, row in r["rows"].items():
            same = (f"greedy {g['same']}/{g['outputs']}, sampled {s['same']}/{s['outputs']}"
                    if name.startswith("parallel") and name != "parallel 1" else "")
            lines.append(f"| {outtype} | {name} | {row['seconds']} | {', '.join(map(str, row['runs']))} | "
                         f"{row['items_per_minute']} | {_range(row['tokens_per_second'])} | {same} |")
        lines.append(f"| {outtype} | speed-up (median of per-round ratios) | x{_range(r['speedup_vs_parallel_1'])} vs "
                     f"parallel 1 | x{_range(r['speedup_vs_bare'])} vs bare | | | |")
    if result.get("demo_chats"):
        d = result["demo_chats"]
        lines += ["", f"## The demo's {d['chats']} held-out chats (the sweep's demo suite), demo chat model q8_0", "",
                  "| run | seconds (median) | runs (s) | chats/min |", "| --- | ---: | --- | ---: |"]
        for name, row in d["rows"].items():
            lines.append(f"| {name} | {row['seconds']} | {', '.join(map(str, row['runs']))} | {row['chats_per_minute']} |")
        lines += ["", f"Speed-up x{_range(d['speedup_vs_parallel_1'])}; replies identical to parallel 1: "
                      f"{d['identical']['same']}/{d['identical']['outputs']}."]
    if result.get("serve"):
        serve = result["serve"]
        lines += ["", f"## Server: {len(SERVE_QUESTIONS)} concurrent streaming clients ({result['serve_type']}, "
                      f"{serve['repeats']} rounds each, alternating)", "",
                  "| server | wall s (median) | chunks/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | failed |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in serve["servers"].items():
            lines.append(f"| {name} | {r['wall_seconds']} | {_range(r['aggregate_chunks_per_second'])} | {r['ttft_p50']} | "
                         f"{r['ttft_p95']} | {r['latency_p50']} | {r['latency_p95']} | {r['failed']} |")
        same = serve["identical_replies"]
        text = serve.get("identical_apart_from_replacement", same)
        ratio = _range(serve["ratio"]) if serve["ratio"] else "n/a"
        if serve.get("share_of_llama_server"):
            lines += ["", f"cvlocal's aggregate rate as a share of llama-server's (median of per-round shares): "
                          f"x{_range(serve['share_of_llama_server'])}."]
        lines += ["", f"Aggregate ratio (median of per-round ratios): x{ratio}; greedy replies identical between the "
                      f"two servers (first round): {same['same']}/{same['outputs']} byte for byte, {text['same']}/"
                      f"{text['outputs']} apart from U+FFFD (bytes of an unfinished character: cvlocal shows them as "
                      f"U+FFFD, as llama-server does; llama-cpp-python drops them)."]
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
    p.add_argument("--serve", default=None, metavar="TYPE", help="also the server comparison on this GGUF type")
    p.add_argument("--no-eval", action="store_true", help="only the server comparison")
    p.add_argument("--llama-server", action="store_true",
                   help="also llama.cpp's llama-server in the server comparison (built once by llama_tools.py)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds per comparison; medians reported (default 3)")
    p.add_argument("--demo", action="store_true", help="also the demo's chat model (q8_0): the eval items and its held-out chats")
    args = p.parse_args(argv)
    args.threads = same_threads(args.threads)
    cache = args.cache or synthetic.default_cache()
    suite_items = load_suites(list(SUITES), args.langs.split(","), SUITES_DIR, args.limit)
    items = [i for s in SUITES for i in suite_items[s]]
    settings = GenerationSettings.create(samples=args.samples, max_tokens=args.max_tokens or None, seed=0,
                                         ctx=args.ctx)
    result: dict[str, Any] = {"size": args.size, "parallel": args.parallel, "threads": args.threads,
                              "max_tokens": args.max_tokens, "limit": args.limit, "langs": args.langs,
                              "repeats": args.repeats, "types": {}}
    for outtype in [] if args.no_eval else args.types.split(","):
        path = build_gguf(args.size, outtype, cache)
        print(f"{outtype}: {len(items)} items on {path}", file=sys.stderr)
        result["types"][outtype] = bench_type(path, items, settings, args.parallel, args.threads, args.repeats)
    if args.demo:
        path = build_demo_gguf("q8_0", cache)
        print(f"demo: {path}", file=sys.stderr)
        result["demo_eval"] = bench_type(path, items, settings, args.parallel, args.threads, args.repeats)
        result["demo_chats"] = bench_demo(path, args.parallel, args.threads, args.repeats)
    if args.serve:
        path = build_gguf(args.size, args.serve, cache)
        print(f"server: {path}", file=sys.stderr)
        result["serve_type"] = args.serve
        reference = None
        if args.llama_server:
            from benchmarks import llama_tools

            reference = llama_tools.build(targets=(llama_tools.SERVER,))[llama_tools.SERVER]
        result["serve"] = bench_serve(path, args.parallel, args.threads, args.ctx, args.max_tokens or 64,
                                      args.repeats, reference)
    out = args.out or cache / "results" / args.size
    out.mkdir(parents=True, exist_ok=True)
    (out / "batched.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "batched.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
