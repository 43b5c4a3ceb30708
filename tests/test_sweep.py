"""``cvlocal sweep`` end to end on the bundled demo models (real merges, real llama.cpp chats).

One three-point sweep (plus the CP and chat references) is run once per module; the tests read its
files, count real model loads (``llama_cpp.Llama`` constructions) in a second sweep with one more
ratio, interrupt a third one with a real SIGINT and check that the rerun continues and agrees with
the uninterrupted sweep.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cvlocal.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
LIMIT = "4"
ARGS = [str(DEMO / "cp"), "--base", str(DEMO / "base"), "--chat", str(DEMO / "chat"), "--special-tokens", "none",
        "--suite", "demo", "--limit", LIMIT, "--threads", "2"]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


class LoadCounter:
    """Counts llama.cpp model loads (``llama_model_load_from_file``, which a ``llama_cpp.Llama`` and
    the batched engine's model both go through): the independent measure of 'a model was loaded'."""

    def __init__(self, monkeypatch) -> None:
        from llama_cpp import _internals

        self.paths: list[str] = []
        native = _internals.llama_cpp
        original = native.llama_model_load_from_file

        def counting(path, params):
            self.paths.append(path.decode() if isinstance(path, bytes) else str(path))
            return original(path, params)

        monkeypatch.setattr(native, "llama_model_load_from_file", counting)


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    proc = subprocess.run([sys.executable, "-m", "cvlocal", "sweep", *ARGS, "--ratios", "0,0.5,1", "--out", str(out),
                           "--json", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_three_point_sweep_writes_every_file(first_sweep):
    out, report = first_sweep
    for name in ("sweep.json", "sweep.md", "sweep.png", "sweep.svg"):
        assert (out / name).is_file(), name
    assert json.loads((out / "sweep.json").read_text()) == report
    width, height = _png_size(out / "sweep.png")
    assert width >= 400 and height >= 300 and (out / "sweep.png").stat().st_size > 20_000
    svg = ET.parse(out / "sweep.svg").getroot()
    assert svg.tag.endswith("svg") and len(list(svg.iter())) > 100  # a drawing, not an empty canvas
    # schema: references first, then the ratio points in order, every demo measure with its interval
    assert [p["label"] for p in report["points"]] == ["CP", "chat", "r=0", "r=0.5", "r=1"]
    assert [p["kind"] for p in report["points"]] == ["cp", "chat", "point", "point", "point"]
    for point in report["points"]:
        table = point["metrics"]["demo"]["B"]
        assert set(table) == {"ended", "b_language", "b_turn", "correct", "exact"}
        for cell in table.values():
            assert cell["n"] == int(LIMIT) and 0 <= cell["interval"][0] <= cell["value"] <= cell["interval"][1] <= 1
    assert report["work"]["points_run"] == 5 and report["work"]["model_loads"] == 5
    assert report["work"]["items_evaluated"] == 5 * int(LIMIT) and report["work"]["bytes_written"] > 0
    assert set(report["timings"]["points"]) == {p["key"] for p in report["points"]}
    # the merged GGUFs were removed after their evaluation (--keep not given): disk stays bounded
    assert not list((out / "cache" / "gguf").glob("*.gguf"))
    rec = report["recommendation"]
    assert rec["ratios"] == report["pick"]["ratios"] and report["pick"]["rule"].startswith("auto: the smallest ratio")
    assert f"--ratio {rec['ratios'][0]:g}" in rec["commands"]["merge"] and "--special-tokens none" in rec["commands"]["merge"]
    md = (out / "sweep.md").read_text()
    assert "**" in md and "| demo: ends its turn |" in md and rec["commands"]["merge"] in md


def test_ratio_zero_merge_measures_like_cp(first_sweep):
    """Independent check of the merge path: CP + 0 x (chat - base), without special-token rows, is CP."""
    _, report = first_sweep
    by_label = {p["label"]: p["metrics"] for p in report["points"]}
    assert by_label["r=0"] == by_label["CP"]


def test_second_sweep_with_one_more_ratio_runs_only_that_point(first_sweep, tmp_path, monkeypatch, capsys):
    out, first = first_sweep
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    loads = LoadCounter(monkeypatch)
    code, stdout, err = _cli([*ARGS, "--ratios", "0,0.5,0.75,1", "--out", str(copy), "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert len(loads.paths) == 1 and "point-" in Path(loads.paths[0]).name
    assert report["work"]["points_run"] == 1 and report["work"]["points_cached"] == 5
    assert report["work"]["items_evaluated"] == int(LIMIT)
    old = {p["label"]: p["metrics"] for p in first["points"]}
    new = {p["label"]: p["metrics"] for p in report["points"]}
    assert [p["label"] for p in report["points"]] == ["CP", "chat", "r=0", "r=0.5", "r=0.75", "r=1"]
    assert all(new[label] == old[label] for label in old)
    # more items of the same models: the first LIMIT items of every point are reused, the GGUFs rebuilt
    loads.paths.clear()
    code, stdout, err = _cli([*ARGS[:-4], "--limit", str(int(LIMIT) + 1), "--threads", "2", "--ratios", "0,1",
                              "--out", str(copy), "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["work"]["points_run"] == 4 and report["work"]["items_evaluated"] == 4
    assert len(loads.paths) == 4
    assert all(p["metrics"]["demo"]["B"]["ended"]["n"] == int(LIMIT) + 1 for p in report["points"])


def _mid_point(cache: Path) -> bool:
    """A point is finished and another has answered some but not all of its items (no result written).

    Items are counted as the demo suite's cache writes them: one JSON line per answered prompt, in
    ``eval/<model key>/demo-<max tokens>.jsonl``; a point's result lands in ``points/*.json``.
    """
    done = set()
    for path in (cache / "points").glob("*.json") if (cache / "points").is_dir() else []:
        try:
            done.add(json.loads(path.read_text())["model_key"])
        except (OSError, ValueError, KeyError):
            return False
    if not done:  # the test also wants a finished point before the cut one
        return False
    for folder in (cache / "eval").glob("*") if (cache / "eval").is_dir() else []:
        if folder.name in done:
            continue
        answered = set()
        for path in folder.glob("demo-*.jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    answered.add(json.loads(line)["key"])
                except (ValueError, KeyError):
                    return False
        if 0 < len(answered) < int(LIMIT):
            return True
    return False


def _freeze_mid_point(proc: subprocess.Popen, cache: Path, deadline: float) -> bool:
    """Stop the sweep (SIGSTOP) at a moment a point is half-way, checked again once it is frozen.

    A demo item takes a fraction of a second: a point seen half-way may have finished by the time
    the stop arrives. Then the sweep is let go and watched for the next half-way point.
    """
    while proc.poll() is None and time.monotonic() < deadline:
        if _mid_point(cache):
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)  # the stop has taken effect: the files no longer change
            if _mid_point(cache):
                return True
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    return False


def test_interrupted_sweep_continues_and_agrees_with_the_uninterrupted_one(first_sweep, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    ratios = ["--ratios", "0.5,1"]
    cmd = [sys.executable, "-m", "cvlocal", "sweep", *ARGS, *ratios, "--out", str(out), "--quiet"]
    # Ctrl-C's default action in the child even when this test runs in a background job, whose SIGINT
    # is ignored and inherited (Python then installs no KeyboardInterrupt handler).
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    frozen = _freeze_mid_point(proc, out / "cache", time.monotonic() + 240)
    assert frozen, "the sweep ended (or timed out) before it could be stopped half-way through a point"
    # The interrupt is pending until SIGCONT; then Python raises KeyboardInterrupt inside the half-way point.
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in " ".join(err.split())
    assert not (out / "sweep.json").exists()
    loads = LoadCounter(monkeypatch)
    code, stdout, err = _cli([*ARGS, *ratios, "--out", str(out), "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    work = report["work"]
    points = len(report["points"])
    assert points == 4 and work["points_cached"] >= 1
    assert work["items_evaluated"] < (points - work["points_cached"]) * int(LIMIT)  # the cut point kept its items
    assert len(loads.paths) == points - work["points_cached"]
    uninterrupted = {p["label"]: p for p in first_sweep[1]["points"]}
    for point in report["points"]:
        assert point == uninterrupted[point["label"]]
