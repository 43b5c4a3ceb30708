"""The chat vector as a GGUF LoRA adapter (issue 16), against independent truth.

- llama.cpp's own ``convert_lora_to_gguf.py`` on a PEFT adapter of the same factors gives the
  same tensor names, shapes and products ``lora_b @ lora_a`` (orientation, Q/K permutation and the
  flipped token_embd pair);
- through llama-cpp-python, CP + full-rank adapter(r) reproduces the exact merge CP + r v (an f32
  GGUF written by ``cvlocal merge``) within 1e-3 in the logits, for r = 1 and 0.5, and so does
  llama-cpp-python's own ``Llama(lora_path=...)`` loader;
- KL against the exact merge falls as the rank grows;
- a refused adapter is one line naming the file (llama-cpp-python 0.3.36 would accept it and crash).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = next(iter(sorted(ROOT.glob(".build/sdist/llama_cpp_python-*/vendor/llama.cpp"))), None)
TOKENS = list(range(1, 60))
RANK = 4


def _quiet_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _norms_from_base(family, out: Path) -> Path:
    """A chat model whose norm weights equal the base's: the vector is then only 2-D weights."""
    shutil.copytree(family.chat, out)
    base = load_file(family.base / "model.safetensors")
    path = out / "model.safetensors"
    tensors = load_file(path)
    for name in tensors:
        if name.endswith("norm.weight"):
            tensors[name] = base[name].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    return out


def _logits(model: Path, adapters=(), **kw) -> np.ndarray:
    from cvlocal.llama.adapters import open_model
    from cvlocal.vector.lora_check import scoring_settings

    llm, _ = open_model(model, adapters, **{**scoring_settings(128, 2), **kw})
    try:
        llm.eval(TOKENS)
        return np.array(llm.scores[: len(TOKENS)])
    finally:
        llm.close()


@pytest.fixture(scope="module")
def llama2_setup(tiny_family, tmp_path_factory):
    """CP as f32 GGUF, a norm-free chat, the exact merges at 1.0 and 0.5, and a full-rank adapter."""
    from convert import write_gguf
    from cvlocal.vector.lora_extract import extract_lora
    from cvlocal.vector.merge import merge_models

    family = tiny_family("llama2")
    root = tmp_path_factory.mktemp("adapter-llama2")
    chat = _norms_from_base(family, root / "chat")
    cp = write_gguf(family.cp, root / "cp.gguf", "f32")
    merges = {r: Path(merge_models(family.cp, root / f"merge-{r}.gguf", base=family.base, chat=chat, ratio=r, special_tokens="none",
                                   dtype="float32", outtype="f32", quiet=True)["files"][0]) for r in (1.0, 0.5)}
    full = root / "full.gguf"
    summary = extract_lora(family.base, chat, full, rank="full", outtype="f32", quiet=True)
    return {"family": family, "chat": chat, "cp": cp, "merges": merges, "full": full, "summary": summary, "root": root}


def test_full_rank_adapter_reproduces_exact_merge(llama2_setup):
    from cvlocal.llama.adapters import AdapterSpec

    s = llama2_setup
    assert s["summary"]["left_out_share"] == 0.0 and s["summary"]["energy_kept"] == pytest.approx(1.0, abs=1e-5)
    moved = np.abs(_logits(s["cp"]) - _logits(s["merges"][1.0])).max()
    assert moved > 0.5  # the vector matters, so matching the merge is not trivial
    for r, merged in s["merges"].items():
        diff = np.abs(_logits(s["cp"], [AdapterSpec(s["full"], r)]) - _logits(merged)).max()
        assert diff < 1e-3, (r, diff)


def test_llama_cpp_python_own_loader_reads_it(llama2_setup):
    """Llama(lora_path=..., lora_scale=...) unchanged: the file is a standard GGUF adapter."""
    from llama_cpp import Llama

    from cvlocal.vector.lora_check import scoring_settings

    s = llama2_setup
    llm = Llama(model_path=str(s["cp"]), lora_path=str(s["full"]), lora_scale=0.5, **scoring_settings(128, 2))
    try:
        llm.eval(TOKENS)
        theirs = np.array(llm.scores[: len(TOKENS)])
    finally:
        llm.close()
    assert np.abs(theirs - _logits(s["merges"][0.5])).max() < 1e-3


def test_scales_change_live(llama2_setup):
    """set_scales moves an open model between ratios and drops the stale KV cache."""
    from cvlocal.llama.adapters import AdapterSpec, open_model
    from cvlocal.vector.lora_check import scoring_settings

    s = llama2_setup
    llm, adapters = open_model(s["cp"], [AdapterSpec(s["full"], 1.0)], **scoring_settings(128, 2))
    try:
        results = {}
        for r in (1.0, 0.5, 0.0):
            assert adapters.set_scales([r]) == (r != 1.0)
            llm.eval(TOKENS)
            results[r] = np.array(llm.scores[: len(TOKENS)])
    finally:
        llm.close()
    assert np.abs(results[1.0] - _logits(s["merges"][1.0])).max() < 1e-3
    assert np.abs(results[0.5] - _logits(s["merges"][0.5])).max() < 1e-3
    assert np.abs(results[0.0] - _logits(s["cp"])).max() < 1e-4


def test_kl_falls_as_rank_grows(llama2_setup):
    from cvlocal.vector.lora_check import check_adapter
    from cvlocal.vector.lora_extract import extract_lora

    s = llama2_setup
    paths = []
    for rank in (2, 32):
        paths.append(s["root"] / f"r{rank}.gguf")
        extract_lora(s["family"].base, s["chat"], paths[-1], rank=rank, outtype="f32", quiet=True)
    check = check_adapter(s["family"].cp, s["family"].base, s["chat"], [*paths, s["full"]], ratios=(1.0,), n_ctx=64, threads=2, quiet=True)
    kl = [row["mean_kld"] for row in check["ratios"]["1"]["adapters"]]
    cp_kl = check["ratios"]["1"]["cp"]["mean_kld"]
    assert cp_kl > kl[0] > kl[1] > kl[2], (kl, cp_kl)
    assert kl[2] < 1e-6 < cp_kl
    assert check["ratios"]["1"]["adapters"][2]["top1"] == 1.0


def test_refused_adapter_is_one_line(llama2_setup, tiny_gguf):
    """An adapter for another architecture: llama.cpp refuses it; we say so, naming the file."""
    s = llama2_setup
    qwen = tiny_gguf("qwen2", "f16", which="cp")
    from cvlocal.errors import UsageError
    from cvlocal.llama.adapters import AdapterSpec, open_model

    with pytest.raises(UsageError) as err:
        open_model(qwen, [AdapterSpec(s["full"], 1.0)], n_ctx=64, verbose=False)
    assert str(s["full"]) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(LLAMA_CPP is None or not (LLAMA_CPP / "convert_lora_to_gguf.py").is_file(), reason="llama.cpp source (.build/sdist) not present")
def test_layout_matches_convert_lora_to_gguf(tiny_family, tmp_path):
    """Same names, shapes and B @ A products as llama.cpp's converter writes for a PEFT adapter of the same factors."""
    import gguf

    from cvlocal.vector.lora_extract import extract_lora

    family = tiny_family("llama2")
    base = load_file(family.base / "model.safetensors")
    gen = torch.Generator().manual_seed(3)
    chat_dir = tmp_path / "chat"
    shutil.copytree(family.chat, chat_dir)
    peft: dict[str, torch.Tensor] = {}
    chat: dict[str, torch.Tensor] = {}
    for name, w in base.items():
        w = w.float()
        if w.dim() != 2:
            chat[name] = w
            continue
        out_f, in_f = w.shape
        a = torch.randn(RANK, in_f, generator=gen) * 0.05
        b = torch.randn(out_f, RANK, generator=gen) * 0.05
        chat[name] = w + b @ a
        stem = name.removesuffix(".weight")
        if name == "model.embed_tokens.weight":  # PEFT/mergekit: delta = (B @ A).T with A (r, vocab), B (hidden, r)
            peft[f"base_model.model.{stem}.lora_embedding_A"] = b.T.contiguous()
            peft[f"base_model.model.{stem}.lora_embedding_B"] = a.T.contiguous()
        else:
            peft[f"base_model.model.{stem}.lora_A.weight"] = a
            peft[f"base_model.model.{stem}.lora_B.weight"] = b
    save_file(chat, chat_dir / "model.safetensors", metadata={"format": "pt"})
    base_dir = tmp_path / "base"
    shutil.copytree(family.base, base_dir)
    save_file({k: v.float() for k, v in base.items()}, base_dir / "model.safetensors", metadata={"format": "pt"})
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file(peft, peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps({"lora_alpha": RANK, "r": RANK, "peft_type": "LORA"}))
    reference = tmp_path / "reference.gguf"
    subprocess.run([sys.executable, str(LLAMA_CPP / "convert_lora_to_gguf.py"), str(peft_dir), "--base", str(family.base),
                    "--outtype", "f32", "--outfile", str(reference)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py")})
    ours = tmp_path / "ours.gguf"
    extract_lora(base_dir, chat_dir, ours, rank=RANK, outtype="f32", quiet=True)

    def tensors(path: Path) -> dict[str, np.ndarray]:
        return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}

    def fields(path: Path) -> dict[str, object]:
        r = gguf.GGUFReader(path)
        return {k: r.fields[k].contents() for k in ("general.type", "general.architecture", "adapter.type", "adapter.lora.alpha")}

    theirs, mine = tensors(reference), tensors(ours)
    assert sorted(theirs) == sorted(mine)
    assert fields(reference) == fields(ours)
    for name in theirs:
        assert theirs[name].shape == mine[name].shape, name
    for name in {n.rsplit(".", 1)[0] for n in theirs}:
        a_t, b_t = theirs[name + ".lora_a"], theirs[name + ".lora_b"]
        a_m, b_m = mine[name + ".lora_a"], mine[name + ".lora_b"]
        if name == "token_embd.weight":
            prod_t, prod_m = a_t @ b_t.T, a_m @ b_m.T
        else:
            prod_t, prod_m = b_t @ a_t, b_m @ a_m
        np.testing.assert_allclose(prod_m, prod_t, atol=2e-5, err_msg=name)


def _cli(*args: str) -> subprocess.CompletedProcess:
    from tests.merge_helpers import cli

    return cli(*args, check=False)


def test_bad_rank_in_a_real_process(tiny_family, tmp_path):
    family = tiny_family("llama2")
    result = subprocess.run([sys.executable, "-m", "cvlocal", "extract", str(family.base), str(family.chat), "-o", str(tmp_path / "x.gguf"),
                             "--rank", "0"], capture_output=True, text=True, cwd=ROOT, env=_quiet_env())
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "must be at least 1" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,says", [(["--rank", "0"], "--rank 0 must be at least 1"),
                                         (["--rank", "auto", "--energy", "1.5"], "--energy 1.5 is outside (0, 1]"),
                                         (["--rank", "auto", "--energy", "0"], "--energy 0.0 is outside (0, 1]"),
                                         (["--rank", "x"], "is not a number, 'auto' or 'full'"),
                                         (["--outtype", "q4_k_m"], "--outtype q4_k_m is not an adapter type")])
def test_bad_options_exit_2_nothing_written(tiny_family, tmp_path, extra, says):
    family = tiny_family("llama2")
    out = tmp_path / "x.gguf"
    result = _cli("extract", str(family.base), str(family.chat), "-o", str(out), *extra)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_pairs_exit_2_nothing_written(tiny_family, tmp_path):
    llama, qwen = tiny_family("llama2"), tiny_family("qwen2")
    out = tmp_path / "x.gguf"
    result = _cli("extract", str(llama.base), str(qwen.chat), "-o", str(out), "--rank", "4")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # an architecture without a GGUF adapter layout
    other = tmp_path / "other"
    for side in ("base", "chat"):
        shutil.copytree(getattr(llama, side), other / side)
        config = json.loads((other / side / "config.json").read_text())
        config["architectures"] = ["GPTNeoXForCausalLM"]
        (other / side / "config.json").write_text(json.dumps(config))
    result = _cli("extract", str(other / "base"), str(other / "chat"), "-o", str(out), "--rank", "4")
    assert result.returncode == 2 and "GPTNeoXForCausalLM" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_cli_auto_rank_json_and_tied_qwen2(tiny_family, tmp_path):
    """Qwen2: biases and norms and the tied embedding are reported with their shares; auto ranks keep the energy asked for."""
    import gguf

    family = tiny_family("qwen2")
    out = tmp_path / "q.gguf"
    result = _cli("extract", str(family.base), str(family.chat), "-o", str(out), "--rank", "auto", "--energy", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    kinds = {e["kind"] for e in summary["left_out"]}
    assert kinds == {"norm", "bias", "tied"}
    assert 0 < summary["left_out_share"] < 1
    assert all(0.5 <= e <= 1.0 for e in summary["energy"].values())
    assert summary["bytes"] == out.stat().st_size
    reader = gguf.GGUFReader(out)
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight.lora_a" not in names and "blk.0.attn_q.bias.lora_a" not in names
    assert json.loads(reader.fields["cvlocal.ranks"].contents()) == summary["ranks"]
    # every tensor's rank is the smallest that keeps half its energy: exact SVD of the real delta
    from convert.checkpoint import open_checkpoint

    b, c = open_checkpoint(family.base), open_checkpoint(family.chat)
    name = "model.layers.1.mlp.down_proj.weight"
    s = torch.linalg.svdvals(c.read(name).float() - b.read(name).float()).double() ** 2
    cum = torch.cumsum(s, 0) / s.sum()
    expected = int((cum < 0.5).sum()) + 1
    assert summary["ranks"]["blk.1.ffn_down.weight"] == expected


def test_chat_adapter_ratio_live(llama2_setup, tmp_path):
    """`cvlocal chat CP --adapter FILE:1.0` then `/set ratio 0`: the conversation is re-read, and replies are CP's own."""
    s = llama2_setup
    scripts = {"live": "Hello there\n/set ratio 0\n/show\nHi again\n", "plain": "Hello there\nHi again\n", "zero": "/set ratio 0\nHello there\n"}
    common = ["--json", "--temperature", "0", "--max-tokens", "6", "--ctx", "256"]
    turns = {}
    for name, text in scripts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        adapter = [] if name == "plain" else ["--adapter", f"{s['full']}:1.0"]
        result = _cli("chat", str(s["cp"]), *adapter, "--script", str(tmp_path / name), *common)
        assert result.returncode == 0, result.stderr
        turns[name] = json.loads(result.stdout)["turns"]
        if name == "live":
            assert "adapter 1 at 0" in result.stdout + result.stderr
    assert turns["live"][0]["text"] != turns["plain"][0]["text"]                # ratio 1: the vector changes the reply
    assert turns["zero"][0]["text"] == turns["plain"][0]["text"]                # ratio 0: the CP model itself
    assert turns["live"][1]["new_prompt_tokens"] == turns["live"][1]["prompt_tokens"]    # the KV cache was dropped ...
    assert turns["plain"][1]["new_prompt_tokens"] < turns["plain"][1]["prompt_tokens"]  # ... which it is not otherwise
    bad = _cli("chat", str(s["cp"]), "--adapter", str(tmp_path / "missing.gguf"), "--script", str(tmp_path / "plain"), *common)
    assert bad.returncode == 2 and "missing.gguf" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_eval_model_spec_with_adapter(llama2_setup, tmp_path):
    """`cvlocal eval CP+ADAPTER@0 CP+ADAPTER@1 CP`: @0 generates exactly CP's replies, @1 others; each ratio is its own cache."""
    s = llama2_setup
    specs = [f"{s['cp']}+{s['full']}@0", f"{s['cp']}+{s['full']}@1", str(s["cp"])]
    out = tmp_path / "eval"
    result = _cli("eval", *specs, "--suite", "dialogue", "--lang", "en", "--limit", "1", "--samples", "1", "--max-tokens", "4",
                  "--ctx", "256", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    caches = {p.name.split("-")[0]: [json.loads(line)["outputs"] for line in p.read_text().splitlines()] for p in (out / "cache").glob("*.jsonl")
              if not p.name.endswith(".scores.jsonl")}
    assert caches["cp_full_0"] == caches["cp"] != caches["cp_full_1"]
    bad = _cli("eval", f"{s['cp']}+{tmp_path / 'none.gguf'}@0.5", "--out", str(tmp_path / "e2"), "--quiet")
    assert bad.returncode == 2 and "none.gguf" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF through gguf-py's own reader (not ours)."""
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("chat_kind", ["norm-free", "with norms"])
def test_merge_from_cp_gguf_equals_hf_merge(llama2_setup, chat_kind):
    """CP.gguf + r v in the GGUF's layout is the very file ``cvlocal merge`` writes from the CP folder."""
    from cvlocal.vector.gguf_merge import merge_gguf
    from cvlocal.vector.merge import merge_models

    s = llama2_setup
    chat = s["chat"] if chat_kind == "norm-free" else s["family"].chat
    for r in (1.0, 0.5):
        name = f"{chat_kind.replace(' ', '-')}-{r}"
        reference = s["merges"][r] if chat_kind == "norm-free" else Path(merge_models(
            s["family"].cp, s["root"] / f"hf-{name}.gguf", base=s["family"].base, chat=chat, ratio=r, special_tokens="none",
            dtype="float32", outtype="f32", quiet=True)["files"][0])
        mine = _gguf_tensors(merge_gguf(s["cp"], s["root"] / f"gguf-{name}.gguf", s["family"].base, chat, r))
        expected = _gguf_tensors(reference)
        assert mine.keys() == expected.keys()
        for t in expected:
            assert mine[t].dtype == np.float32 and np.array_equal(mine[t], expected[t]), (r, t)
        moved = _gguf_tensors(s["cp"])
        assert not np.array_equal(moved["blk.0.attn_q.weight"], mine["blk.0.attn_q.weight"])


def test_check_with_cp_gguf_gives_the_hf_folder_numbers(llama2_setup):
    """--check CP.gguf measures the same KL / top-1 as --check CP_DIR; an f16 CP GGUF is accepted too."""
    from convert import write_gguf
    from cvlocal.vector.lora_check import check_adapter
    from cvlocal.vector.lora_extract import extract_lora

    s = llama2_setup
    low = s["root"] / "check-r2.gguf"
    extract_lora(s["family"].base, s["chat"], low, rank=2, outtype="f32", quiet=True)
    kw = dict(ratios=(1.0,), n_ctx=64, threads=2, quiet=True)
    from_dir = check_adapter(s["family"].cp, s["family"].base, s["chat"], [low, s["full"]], **kw)
    from_gguf = check_adapter(s["cp"], s["family"].base, s["chat"], [low, s["full"]], **kw)
    a, b = from_dir["ratios"]["1"], from_gguf["ratios"]["1"]
    assert a["cp"]["mean_kld"] > 1e-3
    for x, y in zip([*a["adapters"], a["cp"]], [*b["adapters"], b["cp"]]):
        assert y["mean_kld"] == pytest.approx(x["mean_kld"], rel=1e-4, abs=1e-7) and y["top1"] == x["top1"], (x, y)
    half = write_gguf(s["family"].cp, s["root"] / "cp-f16.gguf", "f16")
    from_f16 = check_adapter(half, s["family"].base, s["chat"], [s["full"]], **kw)["ratios"]["1"]
    assert from_f16["adapter"]["mean_kld"] < 1e-5 < from_f16["cp"]["mean_kld"]


def test_check_refuses_a_quantized_cp_gguf(llama2_setup, tmp_path):
    from convert import write_gguf

    s = llama2_setup
    quantized = write_gguf(s["family"].cp, s["root"] / "cp-q8.gguf", "q8_0")
    out = tmp_path / "x.gguf"
    result = _cli("extract", s["family"].base, s["chat"], "-o", out, "--rank", "2", "--check", quantized, "--quiet")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "quantized" in result.stderr and str(quantized) in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
