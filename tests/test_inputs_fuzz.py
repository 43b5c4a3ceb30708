"""Property-based fuzzing of every input file the merge and the converter read.

hypothesis picks an input (a safetensors header, a side file, the chat-vector manifest), a place
in its JSON and a replacement (any JSON value, a deleted key); the command then either works
(exit 0) or refuses with exit 2, one line on stderr, no traceback and nothing at the output
path. Anything else (a traceback, exit 1, a hang) is a bug this test finds.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.merge_helpers import cli, leftovers

TARGETS = [
    ("cp", "model.safetensors"),
    ("cp", "config.json"),
    ("cp", "tokenizer.json"),
    ("cp", "tokenizer_config.json"),
    ("cp", "generation_config.json"),
    ("chat", "tokenizer.json"),
    ("chat", "tokenizer_config.json"),
    ("chat", "generation_config.json"),
    ("chat", "model.safetensors"),
    ("vector", "chat_vector.json"),
    ("vector", "model.safetensors"),
    ("vector", "chat_tokenizer/generation_config.json"),
]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.sampled_from([-1, 0, 1, 2, 7, 2**24, 2**31, 10**12, 2**64])
    | st.integers(-1000, 100_000) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=4,
)


def _read(path: Path) -> tuple[object, bytes | None]:
    """A file's JSON document (for safetensors: its header) and, for safetensors, the data bytes."""
    raw = path.read_bytes()
    if path.suffix == ".safetensors":
        (n,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8 : 8 + n]), raw[8 + n :]
    return json.loads(raw), None


def _write(path: Path, doc: object, data: bytes | None) -> None:
    text = json.dumps(doc).encode()
    if data is None:
        path.write_bytes(text)
    else:
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _places(doc: object, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Paths to the nodes of a JSON document (long lists sampled: their first and last items)."""
    out = [prefix]
    if depth >= 4:
        return out
    if isinstance(doc, dict):
        keys = list(doc)
        for k in keys[:6] + keys[-2:] if len(keys) > 8 else keys:
            out += _places(doc[k], prefix + (k,), depth + 1)
    elif isinstance(doc, list):
        idx = list(range(len(doc)))
        for i in idx[:2] + idx[-1:] if len(idx) > 3 else idx:
            out += _places(doc[i], prefix + (i,), depth + 1)
    return out


def _mutate(doc: object, place: tuple, value: object, delete: bool) -> object:
    if not place:
        return value
    parent = doc
    for step in place[:-1]:
        parent = parent[step]  # type: ignore[index]
    if delete and isinstance(parent, dict):
        del parent[place[-1]]
    else:
        parent[place[-1]] = value  # type: ignore[index]
    return doc


@pytest.fixture(scope="module")
def inputs(tiny_family, tmp_path_factory):
    fam = tiny_family("llama2")
    root = tmp_path_factory.mktemp("fuzz")
    folders = {which: root / which for which in ("cp", "chat", "base")}
    for which, folder in folders.items():
        shutil.copytree(getattr(fam, which), folder)
    folders["vector"] = root / "vector"
    cli("extract", fam.base, fam.chat, "-o", folders["vector"], "--quiet")
    return root, folders


@settings(max_examples=int(os.environ.get("CVLOCAL_FUZZ_EXAMPLES", "60")), deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_of_an_input_is_worked_or_refused_in_one_line(inputs, data):
    root, folders = inputs
    which, name = data.draw(st.sampled_from(TARGETS), label="file")
    path = folders[which] / name
    original = path.read_bytes()
    doc, payload = _read(path)
    place = data.draw(st.sampled_from(_places(doc)), label="place")
    mutated = _mutate(json.loads(json.dumps(doc)), place, data.draw(JSON_VALUES, label="value"), data.draw(st.booleans(), label="delete"))
    convert = which == "cp" and data.draw(st.booleans(), label="convert")
    out = root / ("out.gguf" if convert else "out")
    _write(path, mutated, payload)
    try:
        if convert:
            proc = cli("convert", folders["cp"], "-o", out, "--outtype", "f32", "--quiet", check=False)
        else:
            terms = ["--vector", folders["vector"]] if which == "vector" else ["--base", folders["base"], "--chat", folders["chat"]]
            proc = cli("merge", folders["cp"], *terms, "-o", out, "--quiet", check=False)
    finally:
        path.write_bytes(original)
    try:
        assert proc.returncode in (0, 2), (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode == 2:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, proc.stderr
            assert leftovers(root, out.name) == []
    finally:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
