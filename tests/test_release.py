"""``cvlocal release`` end to end on a tiny real model: files, checksums, card, Modelfiles, resume, failures, bad input.

Independent truth: file names are checked against the parameter count read from the safetensors
headers; files are opened with llama-cpp-python and their type read with the ``gguf`` package;
checksums are recomputed with hashlib; the Modelfile stop tokens are the chat tokenizer's own
end-of-turn token.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from cvlocal.cli import main as cli_main  # noqa: E402
from cvlocal.release import pipeline  # noqa: E402
from cvlocal.release.pipeline import ReleaseRequest, release  # noqa: E402
from cvlocal.outputs.types import parse_outtypes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILE_TYPES = {"Q4_K_M": 15, "Q8_0": 7, "F16": 1}


def _param_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "np") as st:
            for name in st.keys():
                total += int(np.prod(st.get_slice(name).get_shape()))
    return total


def _size_label(n: int) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(n)


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def source(tiny_family):
    return tiny_family("llama3").chat


@pytest.fixture(scope="module")
def released(source, tmp_path_factory):
    """One release of three types through the CLI (module-scoped: several tests read it)."""
    out = tmp_path_factory.mktemp("release") / "rel"
    code = cli_main([
        "release", str(source), "-o", str(out), "--types", "q4_k_m,q8_0,f16", "--threads", "1", "--json", "--version", "v0.1",
        "--language", "zh-Hant,en",
    ])
    return code, out


def test_release_files_named_loaded_and_typed(released, source, capsys):
    import gguf
    from llama_cpp import Llama

    code, out = released
    assert code == 0
    ggufs = sorted(p.name for p in out.glob("*.gguf") if not p.name.startswith("."))
    # <BaseName>-<SizeLabel>-<FineTune>-<Version>-<Encoding>: the folder "llama3-chat" is base "llama3", fine-tune "chat".
    label = _size_label(_param_count(source))
    base, finetune = source.name.split("-", 1)
    assert ggufs == sorted(f"{base}-{label}-{finetune}-v0.1-{t}.gguf" for t in ("Q4_K_M", "Q8_0", "F16"))
    for name in ggufs:
        path = out / name
        reader = gguf.GGUFReader(path)
        file_type = int(reader.fields["general.file_type"].parts[-1][0])
        assert file_type == FILE_TYPES[name.removesuffix(".gguf").rsplit("-", 1)[1]]
        llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        llm.eval(llm.tokenize("台北 hello".encode(), add_bos=True))
        assert np.isfinite(llm.scores[: llm.n_tokens]).all()
        llm.close()
    # Nothing temporary is left behind once every type succeeded.
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".release-state.json"]
    assert leftovers == []


def test_checksums_verify(released):
    _, out = released
    lines = (out / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == {p.name for p in out.glob("*.gguf")}
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_quality_table_in_card_and_q8_closer_than_q4(released):
    _, out = released
    state = json.loads((out / ".release-state.json").read_text())
    q = {k: v["quality"] for k, v in state["types"].items()}
    assert q["q8_0"]["mean_kld"] < q["q4_k_m"]["mean_kld"]
    assert q["q8_0"]["p99_kld"] < q["q4_k_m"]["p99_kld"]
    assert q["q8_0"]["top1"] >= q["q4_k_m"]["top1"]
    assert q["f16"]["mean_kld"] <= q["q8_0"]["mean_kld"]  # f16 from a bf16 reference is (nearly) lossless
    for row in q.values():
        assert set(row["languages"]) == {"en", "zh-Hant", "zh-Hans", "ko", "ja"}
        assert row["tokens"] == 5 * (512 - 1 - 256)
    card = (out / "README.md").read_text(encoding="utf-8")
    for path in out.glob("*.gguf"):
        assert f"| `{path.name}` |" in card
    q4_row = next(line for line in card.splitlines() if "Q4_K_M.gguf` |" in line)
    assert f"{q['q4_k_m']['mean_kld']:.4f}" in q4_row or f"{q['q4_k_m']['mean_kld']:.2e}" in q4_row
    assert f"{100 * q['q4_k_m']['top1']:.2f}%" in q4_row
    assert "<|eot_id|>" in card and "## Usage" in card and "ollama create" in card
    assert "Traditional Chinese" in card


def test_card_states_tokens_per_language_and_standard_errors(released):
    _, out = released
    state = json.loads((out / ".release-state.json").read_text())
    card = (out / "README.md").read_text(encoding="utf-8")
    per_language = 512 - 1 - 256  # the default: one window of 512 tokens per language, second half scored
    assert f"{per_language} tokens per language" in card
    for qtype in ("q4_k_m", "q8_0"):
        q = state["types"][qtype]["quality"]
        for lang, s in q["languages"].items():
            assert s["tokens"] == per_language
            # The default size is stable on the tiny release: each language's mean KLD to within 10% (1 SE).
            assert 0 < s["mean_kld_se"] < 0.1 * s["mean_kld"], (qtype, lang, s)
            small = s["mean_kld_se"] < 1e-3  # the card writes both in one notation, scientific when small
            assert (f"{s['mean_kld']:.2e} ± {s['mean_kld_se']:.2e}" if small
                    else f"{s['mean_kld']:.4f} ± {s['mean_kld_se']:.4f}") in card
        assert 0 < q["mean_kld_se"] < 0.05 * q["mean_kld"]


def test_card_language_is_the_models(released):
    import yaml

    _, out = released
    card = (out / "README.md").read_text(encoding="utf-8")
    # --language zh-Hant,en: the front matter says zh and en, not the five languages the quality was scored on.
    assert yaml.safe_load(card.split("---")[1])["language"] == ["zh", "en"]
    assert "Languages: Traditional Chinese (`zh-Hant`), English (`en`), as given with --language." in card


def test_modelfiles(released, source):
    from transformers import AutoTokenizer

    _, out = released
    tokenizer = AutoTokenizer.from_pretrained(source)
    eos_ids = json.loads((source / "generation_config.json").read_text())["eos_token_id"]
    stops = tokenizer.convert_ids_to_tokens(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    assert "<|eot_id|>" in stops
    for path in out.glob("*.gguf"):
        modelfile = out / (path.stem + ".Modelfile")
        lines = modelfile.read_text(encoding="utf-8").splitlines()
        assert f"FROM ./{path.name}" in lines
        for stop in stops:
            assert f'PARAMETER stop "{stop}"' in lines
        assert any(line.startswith('TEMPLATE """') for line in lines)  # Llama-3 is a family Ollama expresses


def _request(source: Path, out: Path, types: str, **kw) -> ReleaseRequest:
    return ReleaseRequest(source=source, out=out, types=parse_outtypes(types), threads=1, **kw)


def test_resume_after_interruption_rebuilds_only_what_is_missing(source, tmp_path, monkeypatch):
    out = tmp_path / "rel"
    calls: list[str] = []
    real_build = pipeline.build_file

    def interrupt_second(reference, target, qtype, *, threads):
        calls.append(qtype)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_build(reference, target, qtype, threads=threads)

    monkeypatch.setattr(pipeline, "build_file", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        release(_request(source, out, "q8_0,q4_k_m"))
    q8 = next(out.glob("*-Q8_0.gguf"))
    assert not list(out.glob("*-Q4_K_M.gguf"))
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
    q8_mtime = q8.stat().st_mtime_ns

    calls.clear()

    def counting(reference, target, qtype, *, threads):
        calls.append(qtype)
        real_build(reference, target, qtype, threads=threads)

    monkeypatch.setattr(pipeline, "build_file", counting)
    report = release(_request(source, out, "q8_0,q4_k_m"))
    assert calls == ["q4_k_m"]
    assert {o.qtype: o.status for o in report.outcomes} == {"q8_0": "reused", "q4_k_m": "built"}
    assert q8.stat().st_mtime_ns == q8_mtime
    assert not report.failed

    # A file whose bytes no longer match the recorded checksum is rebuilt.
    with open(q8, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    calls.clear()
    report = release(_request(source, out, "q8_0,q4_k_m"))
    assert calls == ["q8_0"]
    assert {o.qtype: o.status for o in report.outcomes} == {"q8_0": "built", "q4_k_m": "reused"}


def test_failing_types_reported_and_left_out(source, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rel"
    real_build = pipeline.build_file

    def broken(reference, target, qtype, *, threads):
        if qtype == "q4_k_m":
            from convert.llama_quantize import QuantizeError

            raise QuantizeError("llama.cpp could not quantize (injected)")
        real_build(reference, target, qtype, threads=threads)
        if qtype == "q5_k_m":  # a file that does not load: cut in half
            with open(target, "r+b") as f:
                f.truncate(target.stat().st_size // 2)

    monkeypatch.setattr(pipeline, "build_file", broken)
    code, stdout, stderr = _run_cli(
        ["release", str(source), "-o", str(out), "--types", "q4_k_m,q5_k_m,q8_0", "--threads", "1", "--json"], capsys)
    assert code == 1
    error_lines = [line for line in stderr.splitlines() if line.startswith("cvlocal: error:")]
    assert len(error_lines) == 1 and "Q4_K_M" in error_lines[0] and "Q5_K_M" in error_lines[0]
    assert "Traceback" not in stderr
    report = json.loads(stdout)
    assert sorted(report["failed"]) == ["q4_k_m", "q5_k_m"]
    assert "injected" in next(t["error"] for t in report["types"] if t["qtype"] == "q4_k_m")
    shipped = [p.name for p in out.glob("*.gguf") if not p.name.startswith(".")]
    assert [n.rsplit("-", 1)[1] for n in shipped] == ["Q8_0.gguf"]
    assert [line.split("  ")[1] for line in (out / "SHA256SUMS").read_text().splitlines()] == shipped
    assert (out / ".reference-BF16.gguf").is_file()  # kept so that a second run retries only the failed types
    assert len(list(out.glob("*.Modelfile"))) == 1
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Types that failed" in card and "**Q4_K_M**" in card and "**Q5_K_M**" in card
    # No --language and a source that names none: no `language:` field (not the held-out text's languages).
    assert "\nlanguage:" not in card.split("---")[1]

    # A second run retries only the failed types, from the kept reference (no new conversion).
    monkeypatch.setattr(pipeline, "build_file", real_build)
    report = release(_request(source, out, "q4_k_m,q5_k_m,q8_0"))
    assert {o.qtype: o.status for o in report.outcomes} == {"q4_k_m": "built", "q5_k_m": "built", "q8_0": "reused"}
    assert "convert" not in report.seconds
    assert not (out / ".reference-BF16.gguf").exists()
    assert "Types that failed" not in (out / "README.md").read_text(encoding="utf-8")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvlocal", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def _one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_input_one_line_exit_2(source, tmp_path, capsys):
    out = tmp_path / "rel"
    # One case in a real process (the console entry point, nothing imported by the test runner) ...
    proc = _cli("release", str(source), "-o", str(out), "--types", "q4_k_m,q9_zz", cwd=tmp_path)
    _one_line_error(proc.returncode, proc.stderr, "q9_zz")
    assert not out.exists()

    # ... the others through the same entry point in this process.
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(source, no_tok)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / name).unlink(missing_ok=True)
    code, _, err = _run_cli(["release", str(no_tok), "-o", str(out), "--types", "q8_0"], capsys)
    _one_line_error(code, err, "no-tokenizer", "tokenizer")
    assert not out.exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    code, _, err = _run_cli(["release", str(source), "-o", str(occupied), "--types", "q8_0"], capsys)
    _one_line_error(code, err, "occupied", "--force")
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]

    code, _, err = _run_cli(["release", str(source), "-o", str(tmp_path / "missing" / "rel"), "--types", "q8_0"], capsys)
    _one_line_error(code, err, "missing")


def test_quantized_gguf_source_refused(released, tmp_path, capsys):
    _, out = released
    q4 = next(out.glob("*-Q4_K_M.gguf"))
    code, _, err = _run_cli(["release", str(q4), "-o", str(tmp_path / "again"), "--types", "q8_0"], capsys)
    _one_line_error(code, err, "Q4_K_M", "f16")
    assert not (tmp_path / "again").exists()
