"""``cvlocal sweep`` against the same work done by hand: one command against a chain of merges and evals.

    .venv/bin/python benchmarks/sweep.py                          # the demo models, five ratios
    .venv/bin/python benchmarks/sweep.py --limit 1 --max-tokens 16   # a smoke run

On the bundled demo models (``assets/demo``), five ratios, the same suites, languages, limit,
seed, context, batch and type on both sides:

* ``sweep``: ``cvlocal sweep CP --base B --chat C --ratios R1,...,R5`` (every point, the CP and
  the chat model as references, then the report and the plot);
* ``by hand``: for each ratio ``cvlocal merge CP --base B --chat C --ratio R -o x.gguf`` then
  ``cvlocal eval x.gguf``, and for the two references ``cvlocal convert`` then ``cvlocal eval``:
  the same seven GGUFs and the same seven evaluations, each a process of its own, as a person
  would do it before the sweep existed.

Figures: wall time of each side, their ratio (target: the sweep at least 1.5x faster), and whether
every number in ``sweep.json`` equals the one in the matching ``cvlocal eval`` report (metric by
metric, suite by suite, language by language).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

DEMO = ROOT / "assets" / "demo"
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUITES = ("instructions", "dialogue")
LANGS = ("en",)
TARGET = 1.5


def settings_args(s: argparse.Namespace) -> list[str]:
    """The evaluation settings both sides share (``cvlocal sweep`` and ``cvlocal eval`` spell them alike)."""
    return ["--suite", ",".join(s.suites), "--lang", ",".join(s.langs), "--limit", str(s.limit),
            "--max-tokens", str(s.max_tokens), "--seed", "0", "--ctx", str(s.ctx), "--parallel", str(s.parallel),
            "--threads", str(s.threads)]


def cvlocal(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cvlocal", *[str(a) for a in args]]


def sweep_commands(s: argparse.Namespace, work: Path) -> list[list[str]]:
    return [cvlocal("sweep", DEMO / "cp", "--base", DEMO / "base", "--chat", DEMO / "chat",
                    "--ratios", ",".join(repr(r) for r in s.ratios), "--outtype", s.outtype, *settings_args(s),
                    "--out", work / "sweep", "--quiet", "--json")]


def by_hand_commands(s: argparse.Namespace, work: Path) -> list[tuple[str, list[list[str]]]]:
    """(label, commands) per model: the references converted, each ratio merged, each one evaluated."""
    jobs: list[tuple[str, list[list[str]]]] = []
    for label, folder in (("CP", DEMO / "cp"), ("chat", DEMO / "chat")):
        gguf = work / f"{label}.gguf"
        jobs.append((label, [cvlocal("convert", folder, "-o", gguf, "--outtype", s.outtype, "--threads", str(s.threads)),
                             cvlocal("eval", gguf, *settings_args(s), "--out", work / f"eval-{label}", "--quiet")]))
    for r in s.ratios:
        gguf = work / f"r{r!r}.gguf"
        jobs.append((f"r={r:g}", [
            cvlocal("merge", DEMO / "cp", "--base", DEMO / "base", "--chat", DEMO / "chat", "--ratio", repr(r),
                    "-o", gguf, "--outtype", s.outtype),
            cvlocal("eval", gguf, *settings_args(s), "--out", work / f"eval-r{r!r}", "--quiet")]))
    return jobs


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def compare_numbers(sweep_json: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every metric value of every point in sweep.json against the matching ``cvlocal eval`` report."""
    compared, differ = 0, []
    for point in sweep_json["points"]:
        label = point["label"] if point["kind"] != "point" else f"r{float(point['ratios'][0])!r}"
        report = json.loads((work / f"eval-{label}" / "report.json").read_text(encoding="utf-8"))
        results = report["models"][0]["results"]
        for suite, langs in point["metrics"].items():
            for lang, table in langs.items():
                for metric, cell in table.items():
                    theirs = results.get(suite, {}).get(lang, {}).get(metric)
                    compared += 1
                    if not same(cell["value"], theirs):
                        differ.append(f"{point['label']} {suite}/{lang}/{metric}: sweep {cell['value']} eval {theirs}")
    return {"compared": compared, "differ": differ, "points": len(sweep_json["points"])}


def run_side(commands: list[list[str]], env: dict[str, str], timeout: float) -> harness.Run:
    steps = []
    for argv in commands:
        run = harness.run_command(argv, env=env, cwd=ROOT, timeout=timeout, keep_stdout=True)
        steps.append(run)
        if not run.ok:
            break
    return harness.chain(steps)


def measure(s: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both sides one after the other in ``work``; the figures as a dict (``failed`` names a side that failed)."""
    env = {"OMP_NUM_THREADS": str(s.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    harness.warm([DEMO])
    harness.settle()
    swept = run_side(sweep_commands(s, work), env, s.timeout)
    fig: dict[str, Any] = {"settings": {"ratios": list(s.ratios), "suites": list(s.suites), "langs": list(s.langs),
                                        "limit": s.limit, "max_tokens": s.max_tokens, "ctx": s.ctx,
                                        "parallel": s.parallel, "threads": s.threads, "outtype": s.outtype},
                           "sweep": {"seconds": round(swept.seconds, 2), "peak_rss": swept.peak_rss,
                                     "peak_anon": swept.peak_anon, "ok": swept.ok}}
    if not swept.ok:
        fig["failed"] = f"cvlocal sweep: exit {swept.returncode}: {swept.stderr_tail.strip().splitlines()[-1:]}"
        return fig
    harness.settle()
    steps, per_model = [], {}
    for label, commands in by_hand_commands(s, work):
        run = run_side(commands, env, s.timeout)
        steps.append(run)
        per_model[label] = round(run.seconds, 2)
        if not run.ok:
            fig["failed"] = f"by hand, {label}: exit {run.returncode}: {run.stderr_tail.strip().splitlines()[-1:]}"
            return fig
    by_hand = harness.chain(steps)
    fig["by_hand"] = {"seconds": round(by_hand.seconds, 2), "peak_rss": by_hand.peak_rss, "peak_anon": by_hand.peak_anon,
                      "per_model": per_model,
                      "processes": sum(len(c) for _, c in by_hand_commands(s, work))}
    fig["speedup"] = round(by_hand.seconds / swept.seconds, 3) if swept.seconds else None
    sweep_json = json.loads((work / "sweep" / "sweep.json").read_text(encoding="utf-8"))
    fig["numbers"] = compare_numbers(sweep_json, work)
    work_done = sweep_json.get("work") or {}
    fig["sweep"]["work"] = {k: work_done.get(k) for k in ("points_run", "bytes_written", "model_loads", "items_evaluated")}
    return fig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cvlocal sweep against the same merges and evals run one by one.")
    p.add_argument("--ratios", default=",".join(map(repr, RATIOS)), help="five ratios by default: 0,0.25,0.5,0.75,1")
    p.add_argument("--suite", default=",".join(SUITES), help=f"eval suites (default {','.join(SUITES)})")
    p.add_argument("--lang", default=",".join(LANGS), help=f"languages (default {','.join(LANGS)})")
    p.add_argument("--limit", type=int, default=3, help="items per suite and language (default 3)")
    p.add_argument("--max-tokens", type=int, default=48, help="reply length limit (default 48)")
    p.add_argument("--ctx", type=int, default=2048, help="context window (default 2048)")
    p.add_argument("--parallel", type=int, default=4, help="sequences decoded together, both sides (default 4)")
    p.add_argument("--outtype", default="q8_0", help="GGUF type of every model (default q8_0)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    s = p.parse_args(argv)
    s.ratios = tuple(float(x) for x in s.ratios.split(","))
    s.suites = tuple(x for x in s.suite.split(",") if x)
    s.langs = tuple(x for x in s.lang.split(",") if x)
    return s


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    if s.work:
        s.work.mkdir(parents=True, exist_ok=True)
        fig = measure(s, s.work)
    else:
        with tempfile.TemporaryDirectory(prefix="cvlocal-sweep-bench-") as tmp:
            fig = measure(s, Path(tmp))
    text = json.dumps(fig, indent=2, ensure_ascii=False)
    if s.out:
        s.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 1 if fig.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
