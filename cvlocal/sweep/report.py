"""sweep.json, sweep.md and the terminal view, built from the gathered point results only.

Whichever executor ran the points, the same results give the same files. ``sweep.json`` keeps the
host-dependent parts apart: ``timings`` (seconds), ``work`` (what this run wrote, loaded and took
from the cache) and ``host`` (absolute paths); everything else depends only on the inputs' content
and the settings, so a local and a Ray run of the same sweep agree on it.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from cvlocal import ui
from cvlocal.sweep.pick import metric_labels, pick, pooled

FORMAT = "cvlocal-sweep"
VERSION = 1
HOST_KEYS = ("timings", "work", "host")  # what a comparison of two runs of one sweep leaves out


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    text = f"{cell['value']:.2f}"
    if cell.get("interval"):
        lo, hi = cell["interval"]
        text += f" [{lo:.2f},{hi:.2f}]"
    return text


def _ratio_text(ratios: Sequence[float]) -> str:
    return ",".join(f"{r:g}" for r in ratios)


def _commands(sweep: Any, ratios: list[float] | None) -> dict[str, Any]:
    """The command that produces the recommended model (and the adapter line for --via adapter)."""
    if ratios is None:
        return {}
    spec, task = sweep.spec, sweep.spec.template
    stem = Path(spec.cp).name or "model"
    out = f"{stem}-chat-r{_ratio_text(ratios).replace(',', '_')}-{task.outtype.upper()}.gguf"
    cmd = ["cvlocal", "merge", str(spec.cp)]
    if spec.vectors:
        for vector, ratio in zip(spec.vectors, ratios):
            cmd += ["--vector", f"{vector}:{ratio:g}"]
    else:
        cmd += ["--base", str(spec.base), "--chat", str(spec.chat), "--ratio", f"{ratios[0]:g}"]
    if task.embeddings != "auto":
        cmd += ["--embeddings", task.embeddings]
    if task.special_tokens != "auto":
        cmd += ["--special-tokens", task.special_tokens]
    cmd += ["--outtype", task.outtype, "-o", out]
    found: dict[str, Any] = {"merge": shlex.join(cmd)}
    if task.via == "adapter":
        cp_gguf = f"{stem}-{task.outtype.upper()}.gguf"
        found["adapter"] = [
            shlex.join(["cvlocal", "convert", str(spec.cp), "-o", cp_gguf, "--outtype", task.outtype]),
            shlex.join(["cvlocal", "extract", str(spec.base), str(spec.chat), "-o", "chat-lora.gguf", "--rank", task.rank]),
            shlex.join(["llama-cli", "-m", cp_gguf, "--lora-scaled", "chat-lora.gguf", f"{ratios[0]:g}"]),
        ]
    return found


def build_report(sweep: Any, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """sweep.json's content from the results of every task (references first)."""
    task = sweep.spec.template
    points = [r for r in results if r["kind"] == "point"]
    cp = next((r for r in results if r["kind"] == "cp"), None)
    choice = pick(sweep.pick, points, cp, list(task.suites))
    identity = {k: v for k, v in task.identity().items() if k not in ("kind", "ratios", "version", "fingerprints")}
    work = {r["key"]: r["work"] for r in results}
    return {
        "format": FORMAT,
        "version": VERSION,
        "inputs": {"cp": Path(sweep.spec.cp).name, "base": Path(sweep.spec.base).name if sweep.spec.base else None,
                   "chat": Path(sweep.spec.chat).name if sweep.spec.chat else None,
                   "vectors": [Path(v).name for v in sweep.spec.vectors], "fingerprints": list(task.fingerprints)},
        "settings": identity,
        "ratios": [list(r) for r in sweep.spec.ratios],
        "metrics": [{"suite": s, "metric": k, "higher_is_better": h, "label": label}
                    for s, k, h, label in metric_labels(task.suites)],
        "points": [{k: r[k] for k in ("key", "model_key", "kind", "label", "ratios", "metrics")} for r in results],
        "pick": {"option": sweep.pick, **choice.as_dict()},
        "recommendation": {"ratios": choice.ratios, "commands": _commands(sweep, choice.ratios)},
        "work": {
            "points": work,
            "points_run": sum(1 for w in work.values() if not w["from_cache"]),
            "points_cached": sum(1 for w in work.values() if w["from_cache"]),
            "bytes_written": sum(w["bytes_written"] for w in work.values()),
            "model_loads": sum(w["model_loads"] for w in work.values()),
            "items_evaluated": sum(w["items_evaluated"] for w in work.values()),
        },
        "timings": {"points": {r["key"]: r["timings"] for r in results},
                    "total_s": round(sum(r["timings"]["total_s"] for r in results), 3)},
        "host": {"cp": str(Path(sweep.spec.cp).resolve()), "out": str(Path(sweep.out).resolve()),
                 "executor": "ray" if sweep.ray else "local"},
    }


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The part of sweep.json two runs of the same sweep must agree on."""
    return {k: v for k, v in report.items() if k not in HOST_KEYS}


def _rows(report: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    return [(m["suite"], m["metric"], m["higher_is_better"], m["label"]) for m in report["metrics"]]


def _best(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    """The best value of each metric among the ratio points (what the tables put in bold)."""
    best: dict[tuple[str, str], float] = {}
    for suite, key, higher, _ in _rows(report):
        values = [c["value"] for p in report["points"] if p["kind"] == "point"
                  for c in [pooled(p["metrics"], suite).get(key)] if c and c.get("value") is not None]
        if values:
            best[(suite, key)] = max(values) if higher else min(values)
    return best


def table_cells(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, bool]]]]:
    """One row per metric (``suite: label``), one cell per point (references first): text, is best.
    Metrics as rows: a sweep has a handful of points and may have a dozen metrics."""
    best = _best(report)
    rows = []
    for suite, key, _, label in _rows(report):
        cells = []
        for p in report["points"]:
            cell = pooled(p["metrics"], suite).get(key)
            is_best = p["kind"] == "point" and bool(cell) and cell.get("value") is not None \
                and cell["value"] == best.get((suite, key))
            cells.append((_fmt(cell), is_best))
        rows.append((f"{suite}: {label}", cells))
    return rows


def _recommendation_lines(report: dict[str, Any]) -> list[str]:
    rec = report["recommendation"]
    if rec["ratios"] is None:
        return ["No ratio recommended."]
    lines = [f"Recommended ratio: {_ratio_text(rec['ratios'])}", "", rec["commands"]["merge"]]
    if "adapter" in rec["commands"]:
        lines += ["", "As an adapter (no merge):", *rec["commands"]["adapter"]]
    return lines


def markdown(report: dict[str, Any]) -> str:
    heads = [p["label"] for p in report["points"]]
    lines = [f"# Sweep of {report['inputs']['cp']}", "",
             f"via {report['settings']['via']}, {report['settings']['outtype']}; value [95% interval]; "
             "the best ratio point of each metric in bold.", "",
             "| metric | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, cells in table_cells(report):
        lines.append(f"| {name} | " + " | ".join(f"**{t}**" if b else t for t, b in cells) + " |")
    rec = _recommendation_lines(report)
    lines += ["", f"Pick: {report['pick']['rule']}.", "", rec[0]]
    if len(rec) > 1:
        lines += ["", "```", *[line for line in rec[2:] if line and not line.startswith("As an")], "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    """sweep.json, sweep.md, sweep.png and sweep.svg, each under a temporary name then renamed."""
    from cvlocal.sweep.plot import write_plots

    for name, text in (("sweep.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n"),
                       ("sweep.md", markdown(report))):
        tmp = out / f".{name}.partial"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    write_plots(report, out)


def show_report(report: dict[str, Any], out: Path, *, quiet: bool) -> None:
    """The rich table, the text plot, the pick and the work summary on stderr."""
    if quiet:
        return
    from rich.table import Table

    from cvlocal.sweep.plot import text_plot

    table = Table(title=f"sweep of {report['inputs']['cp']}: value [95% interval], best ratio point in bold")
    table.add_column("metric")
    for p in report["points"]:
        table.add_column(p["label"], justify="right")
    for name, cells in table_cells(report):
        table.add_row(name, *[f"[bold]{t}[/bold]" if b else t for t, b in cells])
    ui.stderr.print(table)
    ui.stderr.print(text_plot(report), markup=False, highlight=False)
    ui.stderr.print(f"pick: {report['pick']['rule']}", markup=False)
    for line in _recommendation_lines(report):
        if line:
            ui.stderr.print(("  " if line.startswith(("cvlocal", "llama")) else "") + line, markup=False)
    work = report["work"]
    ui.stderr.print(f"{work['points_run']} point(s) run, {work['points_cached']} from the cache; "
                    f"{ui.human_bytes(work['bytes_written'])} written, {work['model_loads']} model load(s), "
                    f"{work['items_evaluated']} item(s) evaluated; wrote {out / 'sweep.json'}, sweep.md, sweep.png, sweep.svg",
                    markup=False)
