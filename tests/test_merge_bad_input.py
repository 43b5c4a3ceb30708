"""Bad input to extract/merge: one line naming the file and the fix, exit 2, nothing at the output path."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from tests.merge_helpers import ROOT, assert_one_line_error, cli, cli_proc, leftovers, load_folder


def _copy_cp(fam, tmp_path, name="cp"):
    folder = tmp_path / name
    shutil.copytree(fam.cp, folder)
    return folder


def _rewrite(folder, change):
    tensors = load_folder(folder)
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _merge(fam, cp, out, *extra):
    return cli("merge", cp, "--base", fam.base, "--chat", fam.chat, "-o", out, *extra, check=False)


def test_missing_folder_and_no_config_through_the_real_cli(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    out = tmp_path / "out"
    proc = cli_proc("merge", tmp_path / "nope", "--base", fam.base, "--chat", fam.chat, "-o", out, check=False)
    assert_one_line_error(proc, "nope", "folder not found")
    cp = _copy_cp(fam, tmp_path)
    (cp / "config.json").unlink()
    proc = cli_proc("extract", cp, fam.chat, "-o", out, check=False)
    assert_one_line_error(proc, "no config.json", str(cp))
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("damage", ["garbage-header", "truncated"])
def test_corrupted_safetensors(tiny_family, tmp_path, damage):
    fam = tiny_family("llama2")
    cp = _copy_cp(fam, tmp_path)
    weights = cp / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" * 64 + data[64:] if damage == "garbage-header" else data[: len(data) - 1000])
    proc = _merge(fam, cp, tmp_path / "out")
    assert_one_line_error(proc, str(weights), "truncated" if damage == "truncated" else "corrupted")
    assert leftovers(tmp_path, "out") == []


def test_index_naming_a_file_outside_the_folder(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    cp = _copy_cp(fam, tmp_path)
    shutil.move(cp / "model.safetensors", tmp_path / "outside.safetensors")
    names = list(load_folder_from(tmp_path / "outside.safetensors"))
    (cp / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "../outside.safetensors" for n in names}}))
    proc = _merge(fam, cp, tmp_path / "out")
    assert_one_line_error(proc, "outside the folder", "model.safetensors.index.json")
    assert leftovers(tmp_path, "out") == []


def load_folder_from(file):
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return list(f.keys())


def test_shape_and_dtype_mismatch_and_missing_and_extra_tensors_are_listed_together(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    cp = _copy_cp(fam, tmp_path)

    def change(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-32].clone()
        t["model.layers.1.input_layernorm.weight"] = torch.zeros(256, dtype=torch.int32)
        del t["model.layers.1.self_attn.o_proj.weight"]
        t["model.layers.1.extra.weight"] = torch.zeros(4, dtype=torch.bfloat16)

    _rewrite(cp, change)
    proc = _merge(fam, cp, tmp_path / "out")
    assert_one_line_error(proc, "mismatch", "up_proj", "int32", "o_proj.weight in vector 1 but not in CP", "extra.weight in CP")
    assert leftovers(tmp_path, "out") == []


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cvlocal-pwned",))


def test_a_pickle_that_weights_only_refuses(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    cp = _copy_cp(fam, tmp_path)
    (cp / "model.safetensors").unlink()
    with open(cp / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Evil()}, f)
    proc = _merge(fam, cp, tmp_path / "out")
    assert_one_line_error(proc, "pytorch_model.bin", "refused")
    assert not os.path.exists("/tmp/cvlocal-pwned")
    assert leftovers(tmp_path, "out") == []


def test_a_vector_from_another_architecture(tiny_family, tmp_path):
    qwen, llama = tiny_family("qwen2"), tiny_family("llama3")
    vec = tmp_path / "vec"
    cli("extract", qwen.base, qwen.chat, "-o", vec, "--quiet")
    proc = cli("merge", llama.cp, "--vector", vec, "-o", tmp_path / "out", check=False)
    assert_one_line_error(proc, "architecture", "Qwen2ForCausalLM", "LlamaForCausalLM")
    assert leftovers(tmp_path, "out") == []
    proc = cli("merge", llama.cp, "--vector", llama.base, "-o", tmp_path / "out", check=False)
    assert_one_line_error(proc, "not a chat-vector folder", "cvlocal extract")


def test_existing_output_is_refused_unless_force(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(_merge(fam, fam.cp, out), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only an earlier merge's folder, never a folder of other things (issue 12)
    assert_one_line_error(_merge(fam, fam.cp, out, "--force"), "not an output of this command", "--force or not")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty folder holds nothing to lose
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "-o", out, "--force", "--quiet")
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "-o", out, "--force", "--quiet")
    assert (out / "model.safetensors").is_file()


def test_ctrl_c_leaves_nothing(tiny_family, tmp_path, monkeypatch):
    fam = tiny_family("llama2")
    from cvlocal.vector import hf_output

    calls = {"n": 0}
    original = hf_output.ShardedWriter.write_rows

    def interrupted(self, name, rows):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, name, rows)

    monkeypatch.setattr(hf_output.ShardedWriter, "write_rows", interrupted)
    proc = _merge(fam, fam.cp, tmp_path / "out")
    assert proc.returncode == 130 and calls["n"] == 5
    assert leftovers(tmp_path, "out") == []


def test_a_killed_merge_leaves_no_folder_that_looks_complete(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from cvlocal.vector import hf_output
        original, seen = hf_output.ShardedWriter.write_rows, []
        def write_then_die(self, name, rows):
            seen.append(name)
            if len(seen) == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, name, rows)
        hf_output.ShardedWriter.write_rows = write_then_die
        from cvlocal.cli import main
        sys.exit(main(["merge", {str(fam.cp)!r}, "--base", {str(fam.base)!r}, "--chat", {str(fam.chat)!r}, "-o", {str(out)!r}, "--quiet"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    partial = leftovers(tmp_path, "out")
    assert len(partial) == 1 and partial[0].name.startswith(".out.partial-")
