"""``cvlocal convert`` and ``cvlocal quantize`` through the real command line.

Bad input must give one line on stderr naming the problem, exit status 2, no traceback and
nothing at the output path; good input writes the files the rule for ``-o`` promises.
The bad-input commands run concurrently (each is a separate Python process).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cvlocal(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cvlocal", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _bad_inputs(tiny_family, root: Path) -> dict[str, tuple[list, tuple[str, ...]]]:
    """name -> (convert arguments, phrases the error line must contain)."""
    llama3, qwen2, llama2 = tiny_family("llama3").cp, tiny_family("qwen2").cp, tiny_family("llama2").cp
    cases: dict[str, tuple[list, tuple[str, ...]]] = {}

    cases["missing folder"] = ([root / "nope"], ("nope", "not found"))

    d = _copy(qwen2, root / "no-config")
    (d / "config.json").unlink()
    cases["no config.json"] = ([d], ("config.json",))

    d = _copy(qwen2, root / "truncated")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["truncated weights"] = ([d], ("model.safetensors", "truncated"))

    d = _copy(qwen2, root / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    cases["no tokenizer"] = ([d], ("no tokenizer",))

    d = _copy(qwen2, root / "bad-tokenizer-json")
    (d / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {', encoding="utf-8")
    cases["corrupted tokenizer.json"] = ([d], ("tokenizer.json", "not valid JSON"))

    d = _copy(llama2, root / "bad-tokenizer-model")
    (d / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff garbage")
    cases["corrupted tokenizer.model"] = ([d], ("tokenizer.model", "corrupted"))

    d = _copy(qwen2, root / "gpt2-arch")
    _edit_json(d / "config.json", lambda c: c.update(architectures=["GPT2LMHeadModel"]))
    cases["unsupported architecture"] = ([d], ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"))

    d = _copy(llama3, root / "tokenizer-too-big")
    shutil.copy(tiny_family("llama3", True).cp / "tokenizer.json", d / "tokenizer.json")
    cases["tokenizer bigger than the model"] = ([d], ("tokenizer.json", "vocab_size", "1280"))

    d = _copy(qwen2, root / "config-vocab")
    _edit_json(d / "config.json", lambda c: c.update(vocab_size=c["vocab_size"] + 7))
    cases["config vocab_size disagrees with embeddings"] = ([d], ("vocab_size", "rows"))

    d = _copy(llama3, root / "odd-pretokenizer")
    _edit_json(d / "tokenizer.json", lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\p{L}+|\p{N}{1,7}|\s+"))
    cases["unknown pre-tokenizer"] = ([d], (r"\p{N}{1,7}", "llama-bpe", "qwen2"))

    cases["type needing an imatrix"] = ([qwen2, "--outtype", "iq2_xs"], ("iq2_xs", "importance matrix"))
    cases["unknown type"] = ([qwen2, "--outtype", "q9_k"], ("q9_k", "q4_k_m"))
    return cases


@pytest.fixture(scope="module")
def bad_runs(tiny_family, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    cases = _bad_inputs(tiny_family, root)
    outs = {name: tmp_path_factory.mktemp("out") for name in cases}

    def run(name: str):
        args, _ = cases[name]
        return cvlocal("convert", *args, "-o", outs[name] / "model.gguf")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cases, pool.map(run, cases)))
    return {name: (results[name], cases[name][1], outs[name]) for name in cases}


BAD = (
    "missing folder", "no config.json", "truncated weights", "no tokenizer", "corrupted tokenizer.json",
    "corrupted tokenizer.model", "unsupported architecture", "tokenizer bigger than the model",
    "config vocab_size disagrees with embeddings", "unknown pre-tokenizer", "type needing an imatrix", "unknown type",
)


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, bad_runs):
    result, phrases, out_dir = bad_runs[case]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvlocal: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_existing_output_is_refused_without_force_and_replaced_with_it(tiny_family, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    result = cvlocal("convert", tiny_family("qwen3").cp, "-o", out, "--outtype", "q8_0")
    assert result.returncode == 2 and "already exists" in result.stderr and out.read_bytes() == b"keep me"
    result = cvlocal("convert", tiny_family("qwen3").cp, "-o", out, "--outtype", "q8_0", "--force", "--quiet")
    assert result.returncode == 0, result.stderr
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.slow
def test_several_types_in_one_run_then_quantize(tiny_family, tmp_path):
    pytest.importorskip("llama_cpp")
    folder = tiny_family("llama3").chat
    result = cvlocal("convert", folder, "-o", tmp_path, "--outtype", "f16,q8_0,q4_k_m", "--json", "--name", "Tiny-Llama-3-Chat-v0.1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    names = sorted(Path(f["path"]).name for f in summary["outputs"])
    size = gguf.GGUFReader(summary["outputs"][0]["path"]).fields["general.size_label"].contents()
    assert names == sorted(f"Tiny-Llama-3-{size}-Chat-v0.1-{label}.gguf" for label in ("F16", "Q8_0", "Q4_K_M"))
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary file left
    types = {}
    for f in summary["outputs"]:
        reader = gguf.GGUFReader(f["path"])
        types[f["type"]] = reader.fields["general.file_type"].contents()
        assert reader.fields["general.name"].contents() == "Tiny-Llama-3-Chat-v0.1"
        assert reader.fields["general.basename"].contents() == "Tiny-Llama-3"
        assert reader.fields["general.finetune"].contents() == "Chat"
        assert reader.fields["general.version"].contents() == "v0.1"
    assert types == {"f16": 1, "q8_0": 7, "q4_k_m": 15}

    f16 = tmp_path / names[0]
    pattern = tmp_path / "q" / "model-{TYPE}.gguf"
    pattern.parent.mkdir()
    result = cvlocal("quantize", f16, "-o", pattern, "--type", "q5_k_m", "--json")
    assert result.returncode == 0, result.stderr
    out = Path(json.loads(result.stdout)["output"])
    assert out == tmp_path / "q" / "model-Q5_K_M.gguf"
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 17

    result = cvlocal("quantize", out, "-o", tmp_path / "q" / "again.gguf", "--type", "q4_k_m")
    assert result.returncode == 2 and "already quantized" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q" / "again.gguf").exists()
