"""The scaling benchmark's arithmetic and plot, on made-up points (no model is run here).

The fit is held against numpy's own least squares; the verdicts against series built to be
linear or not (a known line, a parabola) and memory built to be over or under the limit.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from benchmarks import scaling

GB = 1e9
SIZES = (("small", 0.26 * GB), ("full", 6.6 * GB), ("8b-slice", 11.5 * GB))


def points(seconds, anon_mb: float = 700.0, cpu=None) -> list[scaling.Point]:
    """One point per operation and size, wall time from ``seconds(input_gb)``, CPU time from ``cpu`` (default the same)."""
    out = []
    cpu = cpu or seconds
    for op in scaling.OPS:
        for size, nbytes in SIZES:
            out.append(scaling.Point(op, size, int(nbytes), output_bytes=int(nbytes / 3), seconds=seconds(nbytes / GB),
                                     cpu_seconds=cpu(nbytes / GB),
                                     peak_anon=int(anon_mb * 1e6), peak_rss=int(anon_mb * 2e6), load_before=1.0, load_after=1.2))
    return out


def test_the_fit_matches_numpys_least_squares() -> None:
    rng = random.Random(1)
    xs = [rng.uniform(0, 12e9) for _ in range(7)]
    ys = [1.7 + 2.9e-9 * x + rng.gauss(0, 0.5) for x in xs]
    fit = scaling.linear_fit(xs, ys)
    slope, intercept = np.polyfit(xs, ys, 1)
    assert fit.slope == pytest.approx(slope, rel=1e-9) and fit.intercept == pytest.approx(intercept, rel=1e-9)
    r2 = np.corrcoef(xs, ys)[0, 1] ** 2
    assert fit.r2 == pytest.approx(r2, rel=1e-9) and fit.r2 < 1
    with pytest.raises(ValueError):
        scaling.linear_fit([1.0, 1.0], [2.0, 3.0])


def test_a_line_is_linear_and_a_parabola_is_not() -> None:
    line = scaling.summarize(points(lambda gb: 2.0 + 3.0 * gb))
    for entry in line.values():
        assert entry["linear"] is True
        assert entry["fit"]["seconds_per_gb"] == pytest.approx(3.0) and entry["fit"]["startup_seconds"] == pytest.approx(2.0)
        assert entry["marginal_seconds_per_gb"] == pytest.approx([3.0, 3.0])
    parabola = scaling.summarize(points(lambda gb: 2.0 + gb * gb))
    assert all(entry["linear"] is False and entry["growth"] == "super-linear" for entry in parabola.values())
    root = scaling.summarize(points(lambda gb: 2.0 + 3.0 * gb ** 0.3))  # cheaper per byte as it grows: passes
    assert all(entry["linear"] is True and entry["growth"] == "sub-linear" for entry in root.values())
    # wall time bent by the load of other jobs, CPU time linear: judged on CPU time
    loaded = scaling.summarize(points(lambda gb: 2.0 + gb * gb, cpu=lambda gb: 1.0 + 2.0 * gb))
    assert all(e["linear"] is True and e["linear_on"] == "CPU time" for e in loaded.values())
    assert loaded["merge"]["cpu_fit"]["seconds_per_gb"] == pytest.approx(2.0)
    no_cpu = points(lambda gb: 2.0 + gb * gb, cpu=lambda gb: 1.0 + 2.0 * gb)
    no_cpu[0].cpu_seconds = None
    assert scaling.summarize(no_cpu)["merge"]["linear"] is False  # falls back to wall time


def test_memory_over_the_limit_at_the_largest_size_is_not_flat() -> None:
    assert all(e["flat"] is True for e in scaling.summarize(points(lambda gb: gb, anon_mb=900)).values())
    pts = points(lambda gb: gb, anon_mb=900)
    pts[2].peak_anon = int(2.1e9)  # merge at 8b-slice
    summary = scaling.summarize(pts)
    assert summary["merge"]["flat"] is False and summary["merge"]["largest"] == "8b-slice"
    assert summary["merge"]["memory_growth"] == pytest.approx(2.1e9 / 900e6)
    assert summary["convert"]["memory_growth"] == pytest.approx(1.0) and summary["convert"]["memory_fit"]["mb_per_gb"] == pytest.approx(0)
    grows = points(lambda gb: gb)
    for p in grows:
        p.peak_anon = int(300e6 + 50 * p.input_bytes / 1000)  # 50 MB per GB of input
    assert scaling.summarize(grows)["merge"]["memory_fit"]["mb_per_gb"] == pytest.approx(50, rel=1e-6)
    assert summary["convert"]["flat"] is True
    one = scaling.summarize(pts[:1])  # one size: no verdicts
    assert one["merge"]["flat"] is None and one["merge"]["linear"] is None


def test_the_report_and_the_plot_are_written(tmp_path: Path) -> None:
    pts = points(lambda gb: 2.0 + 3.0 * gb)
    pts[-1].status, pts[-1].reason, pts[-1].seconds = "failed", "exit 1: boom", None
    scaling.write(pts, tmp_path, {"cores": 2})
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "scaling.svg").read_text()
    table = (tmp_path / "SCALING.md").read_text()
    assert table.count("| convert the chat model to an f16 GGUF |") == 3 + 1  # 3 points + its fit row
    assert "failed: exit 1: boom" in table
    again = scaling.load(tmp_path / "SCALING.json")
    assert [(p.op, p.size, p.seconds) for p in again] == [(p.op, p.size, p.seconds) for p in pts]
    newer = scaling.Point("merge", "full", int(6.6 * GB), seconds=99.0, peak_anon=1)
    merged = scaling.merge_points(again, [newer])
    assert len(merged) == len(pts) and [p.seconds for p in merged if (p.op, p.size) == ("merge", "full")] == [99.0]
