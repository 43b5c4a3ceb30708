"""How cvlocal's cost grows with the work: merge, one-pass merge to GGUF and convert at three sizes.

Issue 15 asks that time grow linearly with the bytes read and that memory stay flat (under
1.5 GB for the 8B-shaped slice): a tool that streams tensor by tensor pays per byte and holds
only a bounded window, while one that loads a model pays its whole size in memory. So each
operation runs on the synthetic triples of ``synthetic.py`` (``small``; ``full``, the
TinyLlama-1.1B shape; ``8b-slice``, Llama-3-8B's shapes and vocabulary with 4 layers, so its
embedding is the real 1.05 GB in bf16):

* ``merge``: ``cvlocal merge CP --base B --chat C -o DIR`` (an HF folder); input: the three folders;
* ``merge_gguf``: the same merge written as an f16 GGUF in one pass (``-o x.gguf --outtype f16``);
* ``convert``: ``cvlocal convert CHAT -o x.gguf --outtype f16``; input: the chat folder.

Each run is a fresh subprocess measured by ``harness.run_command``: wall time, and the peak of
``RssAnon`` (``/proc/PID/status``, sampled every 20 ms, summed over the process tree), the
memory the process really takes: safetensors inputs are mmap'ed, and their pages are
file-backed (``RssFile``), counted by RSS but reclaimable by the kernel at any time, so they are
left out. The page cache is made warm for the inputs before each run and dirty pages flushed,
as in ``run.py``; each output is measured and deleted at once (the 8B slice's are GBs). The
one-minute load average before each run is recorded beside it: on a shared machine the
figures move with the load.

The fit is ordinary least squares, ``time = a + b * bytes``: ``a`` is the start-up (importing
torch, reading configs), ``b`` the cost per byte. "Linear" is judged on the marginal cost
between consecutive sizes, (t2 - t1) / (x2 - x1): for a linear cost it is the same at every
step, so the largest step's must be at most ``LINEAR_TOLERANCE`` times the one before (a cost per
byte that falls with size, as when larger tensors cut the per-tensor overhead, is reported as
sub-linear and passes); R^2 alone would be dominated by the largest point. "Flat" memory: the largest size's peak is under
``ANON_LIMIT``.

``python benchmarks/scaling.py`` runs the sizes and writes ``SCALING.md``, ``SCALING.json``,
``scaling.png`` and ``scaling.svg`` (points of sizes measured before are kept, so sizes can be run
one at a time: ``--sizes 8b-slice``); ``--replot`` only redraws from the JSON. ``run.py --only
scaling`` runs the same measurements as a section of ``make bench``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, synthetic  # noqa: E402

MB = 1e6
GB = 1e9
ANON_LIMIT = 1.5 * GB
LINEAR_TOLERANCE = 1.5  # largest step's marginal cost per byte at most 1.5x the previous step's
DEFAULT_SIZES = ("small", "full", "8b-slice")
SMOKE_SIZES = ("tiny", "small")
ONLY_SCALING = ("8b-slice",)  # sizes for this benchmark only: the peer sections of run.py stay at 1.1B and below
OPS: dict[str, str] = {
    "merge": "merge to an HF folder",
    "merge_gguf": "one-pass merge to an f16 GGUF",
    "convert": "convert the chat model to an f16 GGUF",
}


@dataclass
class Point:
    """One operation at one size: what it read and wrote, how long it took, its peak memory."""

    op: str
    size: str
    input_bytes: int
    status: str = "ok"  # ok | failed
    reason: str = ""
    output_bytes: int | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None  # user + system time of the process tree
    peak_anon: int | None = None
    peak_rss: int | None = None
    load_before: float | None = None
    load_after: float | None = None
    measured_at: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Fit:
    """``y = intercept + slope * x`` by least squares, with its coefficient of determination."""

    slope: float
    intercept: float
    r2: float | None

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * x


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Fit:
    """Ordinary least squares of ``ys`` on ``xs`` (at least two distinct x)."""
    n = len(xs)
    if n < 2 or n != len(ys):
        raise ValueError("a fit needs at least two (x, y) pairs")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a fit needs two distinct x")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    return Fit(slope, intercept, 1 - ss_res / ss_tot if ss_tot else None)


def marginal_costs(points: Sequence[Point], key: str = "seconds") -> list[float]:
    """``(y2 - y1) / (x2 - x1)`` between consecutive sizes (by input bytes), per byte."""
    pts = sorted((p for p in points if p.ok and getattr(p, key) is not None), key=lambda p: p.input_bytes)
    return [(getattr(b, key) - getattr(a, key)) / (b.input_bytes - a.input_bytes)
            for a, b in zip(pts, pts[1:]) if b.input_bytes > a.input_bytes]


def summarize(points: Sequence[Point], limit: float = ANON_LIMIT) -> dict[str, dict]:
    """Per operation: time fits (wall, CPU), marginal costs, memory growth and the verdicts (None: too few points).

    Linearity is judged on CPU time when every point has it: on a shared machine the wall time of
    one run moves with the load (other jobs take the cores), the CPU time it spends much less.
    """
    out: dict[str, dict] = {}
    for op in OPS:
        pts = sorted((p for p in points if p.op == op and p.ok), key=lambda p: p.input_bytes)
        if not pts:
            continue
        entry: dict = {"sizes": [p.size for p in pts], "linear": None, "flat": None}
        xs = [p.input_bytes for p in pts]
        if len(pts) >= 2:
            for key, name in (("seconds", "fit"), ("cpu_seconds", "cpu_fit")):
                if all(getattr(p, key) is not None for p in pts):
                    fit = linear_fit(xs, [getattr(p, key) for p in pts])
                    entry[name] = {"seconds_per_gb": fit.slope * GB, "startup_seconds": fit.intercept, "r2": fit.r2}
                    entry[f"marginal_{key}_per_gb"] = [c * GB for c in marginal_costs(pts, key)]
            mem = linear_fit(xs, [p.peak_anon for p in pts])  # type: ignore[misc]
            entry["memory_fit"] = {"mb_per_gb": mem.slope * GB / MB, "mb_at_zero": mem.intercept / MB, "r2": mem.r2}
            entry["memory_growth"] = pts[-1].peak_anon / pts[-2].peak_anon if pts[-2].peak_anon else None
            judged = "cpu_seconds" if "cpu_fit" in entry else "seconds"
            steps = entry.get(f"marginal_{judged}_per_gb", [])
            entry["linear_on"] = "CPU time" if judged == "cpu_seconds" else "wall time"
            if len(steps) >= 2 and steps[-2] > 0:
                ratio = steps[-1] / steps[-2]
                entry["marginal_ratio"] = ratio
                entry["growth"] = ("super-linear" if ratio > LINEAR_TOLERANCE else
                                   "sub-linear" if ratio < 1 / LINEAR_TOLERANCE else "linear")
                entry["linear"] = ratio <= LINEAR_TOLERANCE  # a per-byte cost that falls is no worse than linear
        largest = pts[-1]
        entry["largest"] = largest.size
        entry["largest_peak_anon"] = largest.peak_anon
        if len(pts) >= 2:
            entry["flat"] = largest.peak_anon is not None and largest.peak_anon < limit
        out[op] = entry
    return out


# --------------------------------------------------------------------------- running


def command(op: str, triple: synthetic.Triple, out: Path, *, python: str, threads: int, ratio: float) -> tuple[list[str], Path]:
    """The argv of one operation and the path it writes."""
    cv = [python, "-m", "cvlocal"]
    if op == "merge":
        target = out / "merged"
        return [*cv, "merge", str(triple.cp), "--base", str(triple.base), "--chat", str(triple.chat), "--ratio", repr(ratio),
                "--special-tokens", "none", "-o", str(target), "--quiet"], target
    if op == "merge_gguf":
        target = out / "merged-f16.gguf"
        return [*cv, "merge", str(triple.cp), "--base", str(triple.base), "--chat", str(triple.chat), "--ratio", repr(ratio),
                "--special-tokens", "none", "-o", str(target), "--outtype", "f16", "--threads", str(threads), "--quiet"], target
    if op == "convert":
        target = out / "chat-f16.gguf"
        return [*cv, "convert", str(triple.chat), "-o", str(target), "--outtype", "f16", "--threads", str(threads),
                "--quiet"], target
    raise ValueError(f"unknown operation {op!r}; choose from {', '.join(OPS)}")


def inputs_of(op: str, triple: synthetic.Triple) -> list[Path]:
    return [triple.chat] if op == "convert" else list(triple.folders())


def measure(op: str, triple: synthetic.Triple, work: Path, *, python: str, threads: int, ratio: float,
            env: Mapping[str, str], timeout: float | None = None) -> Point:
    """Run one operation once in a fresh subprocess; its output is deleted after it is measured."""
    out = work / f"{op}-{triple.size}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    inputs = inputs_of(op, triple)
    point = Point(op, triple.size, harness.size_of(inputs))
    argv, target = command(op, triple, out, python=python, threads=threads, ratio=ratio)
    try:
        harness.warm(inputs)
        harness.settle()
        point.load_before = round(os.getloadavg()[0], 2)
        point.measured_at = datetime.datetime.now().isoformat(timespec="seconds")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # grows by what each reaped child (and its reaped children) spent
        run = harness.run_command(argv, env=env, cwd=ROOT, timeout=timeout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        point.load_after = round(os.getloadavg()[0], 2)
        point.cpu_seconds = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3)
        if not run.ok:
            point.status = "failed"
            point.reason = f"exit {run.returncode}: {run.stderr_tail.splitlines()[-1] if run.stderr_tail else ''}"[:300]
            return point
        point.seconds, point.peak_anon, point.peak_rss = run.seconds, run.peak_anon, run.peak_rss
        point.output_bytes = harness.size_of([target])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return point


def measure_all(sizes: Iterable[str], ops: Iterable[str], cache: Path, work: Path, *, python: str, threads: int,
                ratio: float, env: Mapping[str, str], log: Callable[[str], None], timeout: float | None = None) -> list[Point]:
    """Every operation at every size (sizes in order, so a slow large size comes last)."""
    points = []
    ops = list(ops)
    for size in sizes:
        triple = synthetic.ensure_triple(size, cache)
        for op in ops:
            log(f"scaling: {op} at {size}")
            p = measure(op, triple, work, python=python, threads=threads, ratio=ratio, env=env, timeout=timeout)
            log(f"scaling: {op} at {size}: " + (f"{p.seconds:.1f} s ({p.cpu_seconds:.1f} s CPU), {p.input_bytes / GB:.2f} GB in, peak anon "
                                                 f"{p.peak_anon / MB:,.0f} MB (load {p.load_before})" if p.ok else p.reason))
            points.append(p)
    return points


# --------------------------------------------------------------------------- results


def merge_points(old: Sequence[Point], new: Sequence[Point]) -> list[Point]:
    """``old`` with every (op, size) measured again replaced by the new point."""
    fresh = {(p.op, p.size) for p in new}
    return [p for p in old if (p.op, p.size) not in fresh] + list(new)


def load(path: Path) -> list[Point]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Point(**p) for p in data.get("points", [])]


def _sort_key(p: Point) -> tuple[int, int]:
    return (list(OPS).index(p.op), p.input_bytes)


def shape_line(size: str) -> str:
    s = synthetic.SIZES[size]
    return (f"`{size}`: hidden {s.hidden}, intermediate {s.intermediate}, {s.layers} layers, {s.heads} heads, {s.kv_heads} kv "
            f"heads, vocabulary {s.vocab:,}, {synthetic.parameter_count(s) / 1e9:.2f} B parameters per model, bf16, "
            f"{len(synthetic.shard_plan(s))} shard(s), largest tensor {largest_tensor_bytes(size) / MB:,.0f} MB")


def largest_tensor_bytes(size: str) -> int:
    """The bf16 bytes of the size's largest tensor (the embedding): what a tensor-at-a-time tool holds at most."""
    return max(math.prod(dims) for _, dims in synthetic.tensor_plan(synthetic.SIZES[size])) * 2


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render(points: Sequence[Point], summary: Mapping[str, dict], machine: Mapping[str, object] | None = None) -> str:
    """SCALING.md: the table of points, the fits and the verdicts."""
    pts = sorted(points, key=_sort_key)
    sizes = sorted({p.size for p in pts}, key=lambda s: synthetic.parameter_count(synthetic.SIZES[s]))
    lines = ["# How cvlocal's cost grows with the input", "",
             "Generated by `benchmarks/scaling.py` (method in its docstring). One run per point, each in a fresh "
             "subprocess, page cache warm for the inputs, dirty pages flushed before; time is wall time; peak anon is "
             "the peak of RssAnon (/proc/PID/status, sampled every 20 ms, summed over the process tree): mmap'ed "
             "safetensors pages are file-backed and not counted; peak RSS counts them. Input: the bytes of the three "
             "folders (merge) or of the chat folder (convert). MB = 10^6 bytes, GB = 10^9. The load column is the "
             "one-minute load average before / after the run (2 cores shared with other jobs).", "",
             "Inputs (synthetic LlamaForCausalLM triples, `benchmarks/synthetic.py`):", ""]
    lines += [f"- {shape_line(s)}" for s in sizes]
    lines += ["", "| operation | size | input (GB) | output (GB) | time (s) | CPU (s) | MB/s in | peak anon (MB) | peak RSS (MB) | load | status |",
              "|" + " --- |" * 11]
    for p in pts:
        rate = p.input_bytes / p.seconds / MB if p.ok and p.seconds else None
        lines.append("| " + " | ".join([
            OPS[p.op], p.size, f"{p.input_bytes / GB:.2f}", _fmt(p.output_bytes and p.output_bytes / GB, ".2f"),
            _fmt(p.seconds, ".1f"), _fmt(p.cpu_seconds, ".1f"), _fmt(rate, ",.0f"), _fmt(p.peak_anon and p.peak_anon / MB, ",.0f"),
            _fmt(p.peak_rss and p.peak_rss / MB, ",.0f"), f"{_fmt(p.load_before, '.1f')} / {_fmt(p.load_after, '.1f')}",
            p.status + (f": {p.reason}" if p.reason else "")]) + " |")

    def fit_text(fit: Mapping[str, float] | None) -> str:
        return f"{fit['startup_seconds']:.1f} s + {fit['seconds_per_gb']:.2f} s/GB (R² {fit['r2']:.3f})" if fit else ""

    def steps(values: Sequence[float] | None) -> str:
        return " → ".join(f"{v:.2f}" for v in values or [])

    lines += ["", "## Fits and verdicts", "",
              "| operation | wall time fit | CPU time fit | marginal s/GB between sizes, wall / CPU | time linear | peak anon, last step | "
              "largest peak anon | under 1.5 GB |", "|" + " --- |" * 8]
    verdict = {True: "yes", False: "NO", None: "not measured"}
    for op, e in summary.items():
        growth = e.get("memory_growth")
        lines.append("| " + " | ".join([
            OPS[op], fit_text(e.get("fit")), fit_text(e.get("cpu_fit")),
            f"{steps(e.get('marginal_seconds_per_gb'))} / {steps(e.get('marginal_cpu_seconds_per_gb'))}",
            verdict[e["linear"]] + (f" ({e['growth']}; {e['linear_on']}: last step {e['marginal_ratio']:.2f}x the previous)"
                                    if "marginal_ratio" in e else ""),
            f"{growth:.2f}x" if growth else "",
            f"{e['largest_peak_anon'] / MB:,.0f} MB ({e['largest']})" if e.get("largest_peak_anon") else "",
            verdict[e["flat"]],
        ]) + " |")
    lines += ["", f"Time linear: the marginal cost per GB of the largest step at most {LINEAR_TOLERANCE}x the step before's "
              "(on CPU time, which the load of other jobs moves much less than wall time). \"peak anon, last step\": the "
              "largest size's peak over the one before; a tool that holds a bounded window of rows stays near 1x, one that "
              "holds whole tensors grows with the largest tensor (the embedding). Under 1.5 GB: the issue's target for the "
              "largest size.", "", "![scaling](scaling.png)"]
    if machine:
        lines += ["", "## Machine", "", "| | |", "| --- | --- |"] + [f"| {k} | {v if v is not None else 'n/a'} |" for k, v in machine.items()]
    return "\n".join(lines) + "\n"


def plot(points: Sequence[Point], summary: Mapping[str, dict], stem: Path) -> list[Path]:
    """``stem``.png and .svg: time and peak anonymous memory against input bytes, log-log, with the time fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = dict(zip(OPS, ("o", "s", "^")))
    for op, label in OPS.items():
        pts = sorted((p for p in points if p.op == op and p.ok), key=lambda p: p.input_bytes)
        if not pts:
            continue
        xs = [p.input_bytes / GB for p in pts]
        line = ax_t.plot(xs, [p.seconds for p in pts], markers[op], label=label)[0]
        lo, hi = min(xs) * 0.8, max(xs) * 1.25
        grid = [lo * (hi / lo) ** (i / 60) for i in range(61)]
        for key, fit_name, style in (("seconds", "fit", "-"), ("cpu_seconds", "cpu_fit", "--")):
            if key == "cpu_seconds" and all(p.cpu_seconds is not None for p in pts):
                ax_t.plot(xs, [p.cpu_seconds for p in pts], markers[op], mfc="none", color=line.get_color())
            fit = summary.get(op, {}).get(fit_name)
            if fit:
                ax_t.plot(grid, [fit["startup_seconds"] + fit["seconds_per_gb"] * g for g in grid], style,
                          color=line.get_color(), alpha=0.6)
        ax_m.plot(xs, [p.peak_anon / MB for p in pts], markers[op] + "-", color=line.get_color(), label=label)
        for p, x in zip(pts, xs):
            ax_m.annotate(p.size, (x, p.peak_anon / MB), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax_m.axhline(ANON_LIMIT / MB, color="red", linestyle="--", linewidth=1, label="1.5 GB target")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_xlabel("input (GB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time (s)")
    ax_t.set_title("time against input bytes (log-log)\nfilled, solid fit: wall time; hollow, dashed fit: CPU time", fontsize=10)
    ax_m.set_ylim(bottom=0)
    ax_m.set_ylabel("peak anonymous memory (MB)")
    ax_m.set_title("peak anonymous memory (RssAnon) against input bytes", fontsize=10)
    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        path = stem.with_suffix("." + ext)
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)
    return written


def write(points: Sequence[Point], out_dir: Path, machine: Mapping[str, object] | None = None) -> dict:
    """SCALING.json, SCALING.md, scaling.png and scaling.svg in ``out_dir``; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pts = sorted(points, key=_sort_key)
    summary = summarize(pts)
    data = {"generated_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "sizes": {s: asdict(synthetic.SIZES[s]) | {"parameters": synthetic.parameter_count(synthetic.SIZES[s])}
                      for s in sorted({p.size for p in pts})},
            "machine": dict(machine or {}), "points": [asdict(p) for p in pts], "summary": summary}
    (out_dir / "SCALING.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / "SCALING.md").write_text(render(pts, summary, machine), encoding="utf-8")
    plot(pts, summary, out_dir / "scaling")
    return summary


def bench_env(threads: int) -> dict[str, str]:
    """The environment every measured tool runs in (run.py's too): the same threads, offline, unbuffered."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time and peak anonymous memory of merge / merge to GGUF / convert against input size.")
    p.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help=f"synthetic sizes (default {','.join(DEFAULT_SIZES)})")
    p.add_argument("--ops", default=",".join(OPS), help=f"operations (default {','.join(OPS)})")
    p.add_argument("--cache", type=Path, default=None, help="models and work files (default $CVLOCAL_BENCH_CACHE or ~/.cache/cvlocal-bench)")
    p.add_argument("--out", type=Path, default=HERE, help="folder for SCALING.md/.json and scaling.png/.svg (default benchmarks/)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--ratio", type=float, default=1.0)
    p.add_argument("--fresh", action="store_true", help="drop the points measured before instead of keeping the other sizes'")
    p.add_argument("--replot", action="store_true", help="only redraw SCALING.md and the plots from SCALING.json")
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    ops = [o for o in args.ops.split(",") if o]
    bad = [s for s in sizes if s not in synthetic.SIZES] + [o for o in ops if o not in OPS]
    if bad:
        p.error(f"unknown size or operation: {', '.join(bad)}")
    previous_path = args.out / "SCALING.json"
    previous = load(previous_path)
    machine = json.loads(previous_path.read_text())["machine"] if previous else {}
    if not args.replot:
        cache = args.cache or synthetic.default_cache()
        threads = args.threads or os.cpu_count() or 1
        work = cache / "work" / f"scaling-{os.getpid()}"
        machine = harness.describe_machine(sys.executable) | {"threads": threads}  # before: its load is the start's
        try:
            new = measure_all(sizes, ops, cache, work, python=sys.executable, threads=threads, ratio=args.ratio,
                              env=bench_env(threads), log=lambda m: print(f"[{datetime.datetime.now():%H:%M:%S}] {m}",
                                                                          file=sys.stderr, flush=True))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        previous = new if args.fresh else merge_points(previous, new)
    write(previous, args.out, machine)
    print((args.out / "SCALING.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
