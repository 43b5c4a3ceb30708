"""The sweep as a picture: sweep.png / sweep.svg (matplotlib) and a compact text plot for a terminal.

One panel per suite: each metric of the suite against the ratio, one line per language (a colour
per metric, a line style per language; ``all`` is the pooled line), the 95% interval as a band,
and the CP and chat models as dashed horizontal reference lines in the metric's colour. A grid over
two vectors draws the first vector's ratio on the x axis and one line per ratio of the second.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cvlocal.sweep.pick import pooled

STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
BAR_WIDTH = 30


def _series(report: dict[str, Any], suite: str, key: str, lang: str, second: float | None = None) -> tuple[list, list, list, list]:
    xs, ys, lows, highs = [], [], [], []
    for p in report["points"]:
        if p["kind"] != "point" or (second is not None and p["ratios"][1] != second):
            continue
        cell = (p["metrics"].get(suite) or {}).get(lang, {}).get(key)
        if not cell or cell.get("value") is None:
            continue
        xs.append(p["ratios"][0])
        ys.append(cell["value"])
        lo, hi = cell.get("interval") or (cell["value"], cell["value"])
        lows.append(lo)
        highs.append(hi)
    return xs, ys, lows, highs


def _langs(report: dict[str, Any], suite: str) -> list[str]:
    for p in report["points"]:
        if suite in p["metrics"]:
            return list(p["metrics"][suite])
    return []


def write_plots(report: dict[str, Any], out: Path) -> None:
    """sweep.png and sweep.svg in ``out`` (written under temporary names, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    suites = list(dict.fromkeys(m["suite"] for m in report["metrics"]))
    fig, axes = plt.subplots(1, len(suites), figsize=(6.4 * len(suites), 4.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    grid = len(report["ratios"]) > 1
    for ax, suite in zip(axes[0], suites):
        metrics = [m["metric"] for m in report["metrics"] if m["suite"] == suite]
        langs = _langs(report, suite)
        for i, key in enumerate(metrics):
            colour = colours[i % len(colours)]
            if grid:
                lines = [(f"{key} (r2={r2:g})", "all" if "all" in langs else langs[0], r2, STYLES[j % len(STYLES)])
                         for j, r2 in enumerate(report["ratios"][1])]
            else:
                lines = [(f"{key} ({lang})" if len(langs) > 1 else key, lang, None, STYLES[j % len(STYLES)])
                         for j, lang in enumerate(langs)]
            for label, lang, second, style in lines:
                xs, ys, lows, highs = _series(report, suite, key, lang, second)
                if not xs:
                    continue
                ax.plot(xs, ys, linestyle=style, marker=MARKERS[i % len(MARKERS)], color=colour, label=label)
                ax.fill_between(xs, lows, highs, color=colour, alpha=0.12, linewidth=0)
            for ref, dash in (("cp", (0, (4, 2))), ("chat", (0, (1, 2)))):
                point = next((p for p in report["points"] if p["kind"] == ref), None)
                cell = pooled(point["metrics"], suite).get(key) if point else None
                if cell and cell.get("value") is not None:
                    ax.axhline(cell["value"], color=colour, linestyle=dash, linewidth=1.0, alpha=0.8)
        ax.set_title(f"{suite}  (dashed: CP, dotted: chat)")
        ax.set_xlabel("ratio" if not grid else "ratio of vector 1")
        ax.set_ylabel("rate / value")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"cvlocal sweep of {report['inputs']['cp']} ({report['settings']['via']}, {report['settings']['outtype']})")
    fig.tight_layout()
    for suffix in ("png", "svg"):
        tmp = out / f".sweep.partial.{suffix}"
        fig.savefig(tmp, format=suffix, dpi=110)
        tmp.replace(out / f"sweep.{suffix}")
    plt.close(fig)


def _bar(value: float, low: float, high: float) -> str:
    """A bar for a value in [0, 1], with the interval's ends marked by ``[`` and ``]``."""
    cells = [" "] * BAR_WIDTH
    filled = round(max(0.0, min(1.0, value)) * BAR_WIDTH)
    for i in range(filled):
        cells[i] = "█"
    for edge, mark in ((low, "["), (high, "]")):
        at = min(BAR_WIDTH - 1, max(0, round(edge * BAR_WIDTH) - (1 if mark == "]" else 0)))
        if cells[at] == " ":
            cells[at] = mark
    return "".join(cells)


def text_plot(report: dict[str, Any]) -> str:
    """Per suite and headline metric, one bar per point (references included), as plain text."""
    from cvlocal.sweep.pick import AUTO_ROLES

    lines = []
    for suite in dict.fromkeys(m["suite"] for m in report["metrics"]):
        heads = [*AUTO_ROLES.get(suite, ((), ()))[0], *AUTO_ROLES.get(suite, ((), ()))[1]]
        if not heads:
            heads = [m["metric"] for m in report["metrics"] if m["suite"] == suite][:2]
        for key in heads:
            lines.append(f"{suite}.{key}  0{' ' * (BAR_WIDTH - 2)}1")
            for p in report["points"]:
                cell = pooled(p["metrics"], suite).get(key)
                if not cell or cell.get("value") is None:
                    continue
                lo, hi = cell.get("interval") or (cell["value"], cell["value"])
                lines.append(f"  {p['label']:>10} |{_bar(cell['value'], lo, hi)}| {cell['value']:.2f}")
    return "\n".join(lines)
