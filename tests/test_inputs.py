"""Real users' inputs: the hub-cache layout, values that are not numbers, damaged headers and side files.

Independent truth: the hub layout is built as huggingface_hub stores it (blobs named by hash,
relative symlinks, refs/main) and resolved by huggingface_hub itself; tensors are written and
read back by the safetensors library and gguf-py; expected merges are plain torch arithmetic.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.merge_helpers import assert_one_line_error, cli, leftovers, load_folder

COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ---- the hub-cache layout ------------------------------------------------------------------------
def make_hub_cache(cache: Path, repo_id: str, source: Path, shards: int = 2) -> Path:
    """Store ``source`` in ``cache`` as huggingface_hub does, with its weights split into ``shards``.

    Files become ``blobs/<sha256>``; ``snapshots/COMMIT/<name>`` are relative symlinks to them;
    ``refs/main`` holds COMMIT. Returns the snapshot folder.
    """
    staging = cache.parent / f"staging-{repo_id.replace('/', '--')}"
    shutil.copytree(source, staging)
    tensors = load_file(str(staging / "model.safetensors"))
    (staging / "model.safetensors").unlink()
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(staging / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (staging / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for file in sorted(staging.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.move(file, repo / "blobs" / digest)
        os.symlink(f"../../blobs/{digest}", snapshot / file.name)
    staging.rmdir()
    return snapshot


@pytest.fixture
def hub(tiny_family, tmp_path, monkeypatch):
    """A hub cache (HF_HUB_CACHE) holding the llama2 family as org/tiny-{base,chat,cp}, sharded."""
    fam = tiny_family("llama2")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshots = {which: make_hub_cache(cache, f"org/tiny-{which}", getattr(fam, which)) for which in ("base", "chat", "cp")}
    return fam, cache, snapshots


def _expected(fam, ratio):
    cp, base, chat = load_folder(fam.cp), load_folder(fam.base), load_folder(fam.chat)
    return {n: t.float() + ratio * (chat[n].float() - base[n].float()) for n, t in cp.items()}


def test_a_sharded_hub_snapshot_merges_by_repo_id_cache_folder_and_snapshot(hub, tmp_path):
    fam, cache, snap = hub
    assert all(p.is_symlink() for p in snap["cp"].iterdir())
    want = _expected(fam, 0.5)
    for i, (cp, base, chat) in enumerate([
        ("org/tiny-cp", "org/tiny-base", "org/tiny-chat"),
        (cache / "models--org--tiny-cp", cache / "models--org--tiny-base", cache / "models--org--tiny-chat"),
        (snap["cp"], snap["base"], snap["chat"]),
    ]):
        out = tmp_path / f"merged{i}"
        cli("merge", cp, "--base", base, "--chat", chat, "--ratio", "0.5", "--dtype", "float32", "--special-tokens", "none", "-o", out, "--quiet")
        got = load_folder(out)
        assert set(got) == set(want)
        assert all(torch.equal(got[n], want[n]) for n in want), i
    # extract from repo ids too
    cli("extract", "org/tiny-base", "org/tiny-chat", "-o", tmp_path / "vec", "--dtype", "float32", "--quiet")
    assert (tmp_path / "vec" / "chat_vector.json").is_file()


def test_a_sharded_hub_snapshot_converts_by_repo_id(hub, tmp_path):
    fam, _cache, _snap = hub
    out = tmp_path / "chat.gguf"
    cli("convert", "org/tiny-chat", "-o", out, "--outtype", "f32", "--quiet")
    reader = gguf.GGUFReader(out)
    source = load_folder(fam.chat)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert torch.equal(torch.from_numpy(embd.data.copy()).reshape(source["model.embed_tokens.weight"].shape), source["model.embed_tokens.weight"].float())
    name = reader.fields["general.name"].contents()
    assert COMMIT not in name
    # a folder target names the file by the model, not by the snapshot's commit hash
    folder = tmp_path / "named"
    folder.mkdir()
    cli("convert", "org/tiny-chat", "-o", f"{folder}/", "--outtype", "f16", "--quiet")
    assert [p.name for p in folder.iterdir()] and all(COMMIT not in p.name for p in folder.iterdir())


def test_release_takes_a_repo_id_too(hub):
    from cvlocal.release.source import open_source

    _fam, cache, snap = hub
    for spec in ("org/tiny-chat", cache / "models--org--tiny-chat"):
        source = open_source(spec)
        assert source.kind == "hf" and source.path == snap["chat"]


def test_a_repo_id_that_is_not_cached_is_one_line(hub, tmp_path):
    proc = cli("merge", "org/not-there", "--base", "org/tiny-base", "--chat", "org/tiny-chat", "-o", tmp_path / "out", check=False)
    assert_one_line_error(proc, "org/not-there", "not in the local hub cache")
    assert leftovers(tmp_path, "out") == []


def test_an_output_inside_the_snapshot_a_repo_id_names_is_refused(hub, tmp_path):
    """The repo id is not a path, yet its snapshot (and the blobs its links point to) are the input."""
    _fam, _cache, snap = hub
    before = {p.name: p.resolve().read_bytes() for p in snap["cp"].iterdir()}
    for target in (snap["cp"] / "model.gguf", snap["cp"] / "config.json"):
        proc = cli("convert", "org/tiny-cp", "-o", target, "--outtype", "f16", "--force", check=False)
        assert_one_line_error(proc, "destroy that input")
    for target in (snap["cp"] / "merged", snap["cp"].parent):
        proc = cli("merge", "org/tiny-cp", "--base", "org/tiny-base", "--chat", "org/tiny-chat", "-o", target,
                   "--force", "--quiet", check=False)
        assert_one_line_error(proc, "destroy that input")
    assert {p.name: p.resolve().read_bytes() for p in snap["cp"].iterdir()} == before


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../outside.safetensors"])
def test_an_index_entry_naming_a_path_outside_stays_refused(hub, tmp_path, entry):
    fam, cache, snap = hub
    repo = cache / "models--org--tiny-cp"
    index = snap["cp"] / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = entry
    index.unlink()  # the symlink: write a real file in its place
    index.write_text(json.dumps(data))
    proc = cli("merge", "org/tiny-cp", "--base", fam.base, "--chat", fam.chat, "-o", tmp_path / "out", check=False)
    assert_one_line_error(proc, "outside the folder", "model.safetensors.index.json")
    assert leftovers(tmp_path, "out") == []
    assert repo.is_dir()


# ---- values that are not numbers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def vector(tiny_family, tmp_path_factory):
    fam = tiny_family("llama2")
    out = tmp_path_factory.mktemp("vector") / "vec"
    cli("extract", fam.base, fam.chat, "-o", out, "--quiet")
    return out


@pytest.mark.parametrize("how", ["--ratio nan", "--ratio inf", "--ratio -inf", "--vector :nan", "--vector :inf"])
def test_a_ratio_that_is_not_finite_is_refused(tiny_family, vector, tmp_path, how):
    fam = tiny_family("llama2")
    option, value = how.split()
    terms = ["--base", fam.base, "--chat", fam.chat, f"--ratio={value}"] if option == "--ratio" else ["--vector", f"{vector}{value}"]
    out = tmp_path / "out"
    proc = cli("merge", fam.cp, *terms, "-o", out, check=False)
    assert_one_line_error(proc, "not a finite number")
    assert leftovers(tmp_path, "out") == []


def _poison(folder: Path, name: str, values: list[float]) -> Path:
    """Put ``values`` (NaN, Inf) at the first positions of tensor ``name``; returns the weights file."""
    file = folder / "model.safetensors"
    tensors = load_file(str(file))
    flat = tensors[name].view(-1)
    for i, v in enumerate(values):
        flat[i * 7] = v
    save_file(tensors, str(file), metadata={"format": "pt"})
    return file


NAME = "model.layers.1.mlp.down_proj.weight"


@pytest.mark.parametrize("where", ["cp", "chat", "base", "vector"])
def test_nan_or_inf_in_an_input_is_refused_naming_the_tensor_and_file(tiny_family, vector, tmp_path, where):
    fam = tiny_family("llama2")
    folders = {}
    for which in ("cp", "chat", "base"):
        folders[which] = getattr(fam, which)
    target = tmp_path / where
    shutil.copytree(vector if where == "vector" else folders[where], target)
    folders[where] = target
    file = _poison(target, NAME, [math.nan, math.inf, -math.inf])
    terms = ["--vector", target] if where == "vector" else ["--base", folders["base"], "--chat", folders["chat"]]
    for out in (tmp_path / "out", tmp_path / "out.gguf"):
        proc = cli("merge", folders["cp"], *terms, "-o", out, "--quiet", check=False)
        assert_one_line_error(proc, NAME, str(file), "3 NaN/Inf", "--allow-nonfinite")
        assert leftovers(tmp_path, out.name) == []


def test_extract_refuses_nan_in_chat_or_base(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    chat = tmp_path / "chat"
    shutil.copytree(fam.chat, chat)
    file = _poison(chat, NAME, [math.inf])
    proc = cli("extract", fam.base, chat, "-o", tmp_path / "vec", "--quiet", check=False)
    assert_one_line_error(proc, f"chat tensor {NAME} holds 1 NaN/Inf", str(file))
    assert leftovers(tmp_path, "vec") == []
    cli("extract", fam.base, chat, "-o", tmp_path / "vec", "--quiet", "--allow-nonfinite")
    assert torch.isinf(load_folder(tmp_path / "vec")[NAME]).sum() == 1


def test_allow_nonfinite_merges_and_reports(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    cp = tmp_path / "cp"
    shutil.copytree(fam.cp, cp)
    _poison(cp, NAME, [math.nan, math.inf])
    out = tmp_path / "out"
    proc = cli("merge", cp, "--base", fam.base, "--chat", fam.chat, "--dtype", "float32", "--special-tokens", "none", "--allow-nonfinite", "-o", out, "--json")
    assert json.loads(proc.stdout)["nonfinite"] == {f"CP tensor {NAME}": 2}
    assert f"CP tensor {NAME}: 2 NaN/Inf" in proc.stderr
    got = load_folder(out)[NAME]
    cp_t, base, chat = load_file(str(cp / "model.safetensors"))[NAME], load_folder(fam.base)[NAME], load_folder(fam.chat)[NAME]
    want = cp_t.float() + (chat.float() - base.float())
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    assert torch.equal(got[finite], want[finite])


def test_the_converter_warns_about_nan_per_tensor(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    cp = tmp_path / "cp"
    shutil.copytree(fam.cp, cp)
    _poison(cp, NAME, [math.nan, math.nan, math.inf])
    out = tmp_path / "cp.gguf"
    proc = cli("convert", cp, "-o", out, "--outtype", "f32", "--json")
    warnings = json.loads(proc.stdout)["warnings"]
    assert [w for w in warnings if NAME in w and "3 NaN/Inf" in w], warnings
    tensor = next(t for t in gguf.GGUFReader(out).tensors if t.name == "blk.1.ffn_down.weight")
    assert int((~torch.isfinite(torch.from_numpy(tensor.data.copy()))).sum()) == 3


# ---- safetensors headers --------------------------------------------------------------------------
def _rewrite_header(file: Path, change) -> None:
    """Re-write a safetensors header through ``change(header_dict)``, keeping the data bytes."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def _first(header):
    return next(k for k in header if k != "__metadata__")


def _negative_offset(header):
    entry = header[_first(header)]
    b, e = entry["data_offsets"]
    shift = b + 16
    entry["data_offsets"] = [b - shift, e - shift]


def _negative_dims(header):
    entry = header[_first(header)]
    entry["shape"] = [-d for d in entry["shape"]] if len(entry["shape"]) == 2 else entry["shape"]


def _absurd_dims(header):
    entry = header[_first(header)]
    b = entry["data_offsets"][0]
    entry["shape"], entry["data_offsets"] = [1 << 60, 0], [b, b]


def _size_mismatch(header):
    header[_first(header)]["shape"][0] += 1


def _overlap(header):
    names = [k for k in header if k != "__metadata__"]
    a, b = header[names[0]], header[names[1]]
    if a["data_offsets"] == b["data_offsets"]:
        return
    b_size = b["data_offsets"][1] - b["data_offsets"][0]
    a_size = a["data_offsets"][1] - a["data_offsets"][0]
    if a_size == b_size:
        b["data_offsets"] = list(a["data_offsets"])


HEADER_DAMAGE = {
    "negative offset": (_negative_offset, "data_offsets"),
    "__metadata__ a list": (lambda h: h.__setitem__("__metadata__", ["format", "pt"]), "__metadata__"),
    "__metadata__ a string": (lambda h: h.__setitem__("__metadata__", "pt"), "__metadata__"),
    "__metadata__ a number value": (lambda h: h.__setitem__("__metadata__", {"format": 1}), "__metadata__"),
    "negative dimensions": (_negative_dims, "bad shape"),
    "absurd dimension": (_absurd_dims, "bad shape"),
    "float offsets": (lambda h: h[_first(h)].__setitem__("data_offsets", [float(x) for x in h[_first(h)]["data_offsets"]]), "data_offsets"),
    "entry not an object": (lambda h: h.__setitem__(_first(h), [1, 2]), "not an object"),
    "unknown dtype": (lambda h: h[_first(h)].__setitem__("dtype", "F4"), "dtype"),
    "size mismatch": (_size_mismatch, "does not match"),
}


@pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
@pytest.mark.parametrize("command", ["merge", "convert"])
def test_a_damaged_safetensors_header_is_one_line(tiny_family, tmp_path, damage, command):
    fam = tiny_family("llama2")
    cp = tmp_path / "cp"
    shutil.copytree(fam.cp, cp)
    change, needle = HEADER_DAMAGE[damage]
    _rewrite_header(cp / "model.safetensors", change)
    out = tmp_path / ("out.gguf" if command == "convert" else "out")
    args = ["convert", cp, "-o", out] if command == "convert" else ["merge", cp, "--base", fam.base, "--chat", fam.chat, "-o", out]
    proc = cli(*args, check=False)
    assert_one_line_error(proc, str(cp / "model.safetensors"), needle)
    assert leftovers(tmp_path, out.name) == []


def test_overlapping_ranges_are_refused(tmp_path):
    from convert.errors import ConvertError
    from convert.safetensors_format import read_header

    file = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(4)}, str(file))
    _rewrite_header(file, _overlap)
    with pytest.raises(ConvertError, match="overlap"):
        read_header(file)


def test_stored_special_rows_of_the_wrong_width_are_one_line(tiny_family, vector, tmp_path):
    fam = tiny_family("llama2")
    vec = tmp_path / "vec"
    shutil.copytree(vector, vec)
    rows_file = vec / "extras" / "special_rows.safetensors"
    rows = load_file(str(rows_file))
    save_file({k: v[:, :-1].contiguous() for k, v in rows.items()}, str(rows_file))
    proc = cli("merge", fam.cp, "--vector", vec, "-o", tmp_path / "out", check=False)
    assert_one_line_error(proc, str(vec), "row of token", "has [255] values")
    assert leftovers(tmp_path, "out") == []


# ---- side files ---------------------------------------------------------------------------------------
def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data = change(data) or data
    path.write_text(json.dumps(data), encoding="utf-8")


SIDE_DAMAGE = {
    "tokenizer_config added_tokens_decoder a list": ("cp", "tokenizer_config.json", lambda d: d.__setitem__("added_tokens_decoder", [1]), "added_tokens_decoder"),
    "tokenizer_config decoder key not an id": ("cp", "tokenizer_config.json", lambda d: d.__setitem__("added_tokens_decoder", {"abc": {"content": "x"}}), "added_tokens_decoder"),
    "tokenizer_config eos a number": ("chat", "tokenizer_config.json", lambda d: d.__setitem__("eos_token", 5), "eos_token"),
    "config architectures a number": ("cp", "config.json", lambda d: d.__setitem__("architectures", -1), "architectures"),
    "config hidden_size a string": ("chat", "config.json", lambda d: d.__setitem__("hidden_size", "64"), "hidden_size"),
    "tokenizer_config a list": ("cp", "tokenizer_config.json", lambda d: [d], "not a JSON object"),
    "generation_config eos a float": ("chat", "generation_config.json", lambda d: d.__setitem__("eos_token_id", 1.5), "eos_token_id"),
    "generation_config eos a negative id": ("cp", "generation_config.json", lambda d: d.__setitem__("eos_token_id", [2, -5]), "eos_token_id[1]"),
    "generation_config a list": ("chat", "generation_config.json", lambda d: [1], "not a JSON object"),
    "tokenizer.json vocab a number": ("chat", "tokenizer.json", lambda d: d["model"].__setitem__("vocab", 5), "model.vocab"),
    "tokenizer.json added id a string": ("chat", "tokenizer.json", lambda d: d["added_tokens"][0].__setitem__("id", "x"), "added_tokens[0].id"),
    "tokenizer.json added id huge": ("cp", "tokenizer.json", lambda d: d["added_tokens"][0].__setitem__("id", 10 ** 12), "added_tokens[0].id"),
    "tokenizer.json model a string": ("cp", "tokenizer.json", lambda d: d.__setitem__("model", "BPE"), "field 'model'"),
    "chat_vector format_version a string": ("vector", "chat_vector.json", lambda d: d.__setitem__("format_version", "x"), "format_version"),
    "chat_vector special id a string": ("vector", "chat_vector.json", lambda d: d["special_rows"]["tokens"][0].__setitem__("id", "a"), "special_rows.tokens[0].id"),
    "chat_vector signature a list": ("vector", "chat_vector.json", lambda d: d.__setitem__("signature", [1]), "signature"),
    "chat_vector chat_template a number": ("vector", "chat_vector.json", lambda d: d.__setitem__("chat_template", 5), "chat_template"),
    "chat_vector stored eos a float": ("vector", "chat_tokenizer/generation_config.json", lambda d: d.__setitem__("eos_token_id", 2.5), "eos_token_id"),
}


@pytest.mark.parametrize("damage", list(SIDE_DAMAGE))
def test_a_malformed_side_file_is_one_line_naming_file_and_field(tiny_family, vector, tmp_path, damage):
    fam = tiny_family("llama2")
    which, name, change, field = SIDE_DAMAGE[damage]
    folders = {"cp": fam.cp, "chat": fam.chat, "base": fam.base, "vector": vector}
    target = tmp_path / which
    shutil.copytree(folders[which], target)
    folders[which] = target
    _edit(target / name, change)
    terms = ["--vector", folders["vector"]] if which == "vector" else ["--base", folders["base"], "--chat", folders["chat"]]
    out = tmp_path / "out"
    proc = cli("merge", folders["cp"], *terms, "-o", out, check=False)
    assert_one_line_error(proc, str(target / name), field)
    assert leftovers(tmp_path, "out") == []
