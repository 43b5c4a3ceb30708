"""``cvlocal sweep`` on bad input: one line on stderr, exit 2, nothing written or overwritten; and
the adapter path through the offline eval suites on a tiny real model family."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cvlocal.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
PAIR = [str(DEMO / "cp"), "--base", str(DEMO / "base"), "--chat", str(DEMO / "chat"), "--suite", "demo"]


def _refused(args: list[str], capsys) -> str:
    code = main(["sweep", *args])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("ratios, words", [("", "is empty"), ("0,half", "'half' is not a number"),
                                            ("0,nan", "not a finite number"), ("inf", "not a finite number")])
def test_bad_ratios(ratios, words, tmp_path, capsys):
    err = _refused([*PAIR, "--ratios", ratios, "--out", str(tmp_path / "out")], capsys)
    assert words in err and "--ratios" in err
    assert not (tmp_path / "out").exists()


def test_unknown_pick_metric(tmp_path, capsys):
    err = _refused([*PAIR, "--ratios", "0,1", "--pick", "fluency", "--out", str(tmp_path / "out")], capsys)
    assert "--pick fluency" in err and "demo.b_turn" in err
    assert not (tmp_path / "out").exists()


def test_vector_from_another_architecture(tiny_family, tmp_path, capsys):
    from cvlocal.vector.extract import extract_vector

    family = tiny_family("llama3")  # hidden size 256 and another vocabulary: the demo CP is hidden 128
    vector = tmp_path / "llama3-vector"
    extract_vector(family.base, family.chat, vector, device="cpu", quiet=True)
    err = _refused([str(DEMO / "cp"), "--vector", str(vector), "--ratios", "0,1", "--suite", "demo",
                    "--out", str(tmp_path / "out")], capsys)
    assert "mismatch" in err and str(DEMO / "cp") in err
    assert not (tmp_path / "out").exists()


def test_out_of_another_sweep_or_of_someone_else_is_not_touched(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    identity = {"fingerprints": ["0" * 16], "via": "merge"}
    (out / "cache" / "sweep.inputs.json").write_text(json.dumps(identity))
    (out / "sweep.json").write_text('{"format": "cvlocal-sweep"}\n')
    before = _snapshot(out)
    err = _refused([*PAIR, "--ratios", "0,1", "--out", str(out)], capsys)
    assert "another sweep's results" in err and "fingerprints" in err
    assert _snapshot(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sweep.md").write_text("my notes\n")
    err = _refused([*PAIR, "--ratios", "0,1", "--out", str(mine)], capsys)
    assert "sweep.md" in err and "did not write" in err
    assert _snapshot(mine) == {"sweep.md": b"my notes\n"}


def test_out_inside_an_input_is_refused(tmp_path, capsys):
    err = _refused([*PAIR, "--ratios", "1", "--out", str(DEMO / "cp" / "sweep")], capsys)
    assert "refused" in err
    assert not (DEMO / "cp" / "sweep").exists()


def test_ray_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "cvlocal.sweep.ray_executor", None)
    err = _refused([*PAIR, "--ratios", "1", "--ray", "--out", str(tmp_path / "out")], capsys)
    assert "cvlocal[cluster]" in err


def test_adapter_sweep_through_the_eval_suites(tiny_family, tmp_path, capsys):
    """--via adapter: one CP GGUF and one adapter for every point (no merge), the eval runner's suites."""
    family = tiny_family("llama3")
    out = tmp_path / "out"
    code = main(["sweep", str(family.cp), "--base", str(family.base), "--chat", str(family.chat), "--via", "adapter",
                 "--ratios", "0,1", "--suite", "instructions", "--lang", "en", "--limit", "2", "--max-tokens", "8",
                 "--pick", "instructions.stop_rate", "--out", str(out), "--json", "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(stdout)
    assert [p["label"] for p in report["points"]] == ["CP", "chat", "r=0", "r=1"]
    by_label = {p["label"]: p["metrics"]["instructions"] for p in report["points"]}
    assert set(by_label["r=1"]) == {"all", "en"} and by_label["r=1"]["all"]["prompt_strict"]["n"] == 2
    assert by_label["r=0"] == by_label["CP"]  # the adapter at scale 0 is the CP model itself
    assert report["pick"]["rule"].startswith("maximise instructions.stop_rate")
    lines = report["recommendation"]["commands"]["adapter"]
    assert any("--lora-scaled chat-lora.gguf" in line for line in lines)
    # the shared CP GGUF and adapter stay in the cache (every adapter point reads them); nothing else
    kept = sorted(p.name.split("-")[0] for p in (out / "cache" / "gguf").glob("*.gguf"))
    assert kept == ["adapter", "cp"]
