"""Bad input to ``cvlocal eval`` through the real command line: one line on stderr, exit 2, no traceback,
and no report left behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cvlocal.evaluation.suites import SUITES_DIR


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvlocal", "eval", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    """A file with the GGUF magic: enough for the up-front checks, never loaded in these tests."""
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert proc.stdout == ""


def test_missing_model(tmp_path) -> None:
    proc = run_cli(str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "nope.gguf", "no such GGUF")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf(tmp_path) -> None:
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    proc = run_cli(str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "weights.gguf", "bad magic")


def test_unknown_suite(tmp_path, fake_gguf) -> None:
    proc = run_cli(str(fake_gguf), "--suite", "toxicity,jailbreak", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "unknown suite 'jailbreak'", "toxicity, safety, instructions, dialogue")
    assert not (tmp_path / "out").exists()


def test_unknown_language(tmp_path, fake_gguf) -> None:
    proc = run_cli(str(fake_gguf), "--lang", "zh-Hant,fr", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "unknown language 'fr'", "zh-Hant")


def test_corrupt_suite_file(tmp_path, fake_gguf) -> None:
    suites = tmp_path / "suites"
    suites.mkdir()
    for path in SUITES_DIR.glob("*.jsonl"):
        (suites / path.name).write_bytes(path.read_bytes())
    target = suites / "dialogue.ko.jsonl"
    lines = target.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]  # a line cut in the middle
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_cli(str(fake_gguf), "--suites-dir", str(suites), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "dialogue.ko.jsonl", "line 5", "not valid JSON")
    assert not (tmp_path / "out").exists()


def test_bad_scorer_and_judge(tmp_path, fake_gguf) -> None:
    proc = run_cli(str(fake_gguf), "--scorer", "classifier:" + str(tmp_path / "no-such-dir"), cwd=tmp_path)
    assert_one_line_error(proc, "no-such-dir", "config.json")
    proc = run_cli(str(fake_gguf), "--judge", str(tmp_path / "judge.gguf"), cwd=tmp_path)
    assert_one_line_error(proc, "judge.gguf", "no such GGUF judge file")


def test_out_is_a_file(tmp_path, fake_gguf) -> None:
    out = tmp_path / "report.txt"
    out.write_text("keep me")
    proc = run_cli(str(fake_gguf), "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, "report.txt", "not a folder")
    assert out.read_text() == "keep me"
