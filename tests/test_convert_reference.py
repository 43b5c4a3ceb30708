"""Our GGUF against llama.cpp's own converter (convert_hf_to_gguf.py) on every family both support.

For each tiny chat model (llama2, llama3, mistral, qwen2, qwen3) and each type both write (f32,
f16, bf16, q8_0): every tensor has llama.cpp's name, type, shape and bytes; and our key-value set
is a superset of llama.cpp's, with the same value and value type for every key but those listed in
``MAY_DIFFER``. A key llama.cpp writes that we do not fails the test, naming it.

The converter comes from the llama-cpp-python source distribution that ``make setup`` builds
from (``.build/sdist``); without it the tests are skipped. All 20 reference files are made by one
process (``tests/llama_cpp_reference.py``), since importing torch and the converter is most of a
tiny model's conversion time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.factory import KINDS

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = next(iter(sorted(ROOT.glob(".build/sdist/llama_cpp_python-*/vendor/llama.cpp"))), None)
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# general.name: llama.cpp title-cases the folder name ("Llama3 Chat"), we keep it ("llama3-chat").
# tokenizer.ggml.pre of BPE models: llama.cpp is given ours (see tests/llama_cpp_reference.py).
MAY_DIFFER = {"general.name", "tokenizer.ggml.pre"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(LLAMA_CPP is None or not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(), reason="llama.cpp source (.build/sdist) not present"),
]


@pytest.fixture(scope="module")
def pairs(tiny_family, tiny_gguf, tmp_path_factory) -> dict[tuple[str, str], tuple[Path, Path]]:
    """(kind, outtype) -> (our GGUF, llama.cpp's GGUF) of the tiny chat model."""
    out = tmp_path_factory.mktemp("llama-cpp-reference")
    ours = {(kind, t): tiny_gguf(kind, t, which="chat") for kind in KINDS for t in OUTTYPES}
    jobs = []
    for (kind, outtype), path in ours.items():
        fields = gguf.GGUFReader(path).fields
        bpe = fields["tokenizer.ggml.model"].contents() == "gpt2"
        jobs.append({"model": str(tiny_family(kind).chat), "outtype": outtype, "outfile": str(out / f"{kind}-{outtype}.gguf"),
                     "pre": fields["tokenizer.ggml.pre"].contents() if bpe else None})
    (out / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py")}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "llama_cpp_reference.py"), str(LLAMA_CPP), str(out / "jobs.json")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {key: (path, Path(job["outfile"])) for (key, path), job in zip(ours.items(), jobs)}


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_tensor_bytes_equal_llama_cpp_converter(kind, outtype, pairs):
    ours_path, ref_path = pairs[kind, outtype]
    ours = {t.name: t for t in gguf.GGUFReader(ours_path).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(ref_path).tensors}
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert list(ours[name].shape) == list(t.shape), name
        assert np.asarray(ours[name].data).tobytes() == np.asarray(t.data).tobytes(), name


def _key_comparison(ours_path: Path, ref_path: Path) -> tuple[list[str], list[str]]:
    """(keys llama.cpp writes that we do not, keys whose value or value type differ)."""
    ours, theirs = gguf.GGUFReader(ours_path).fields, gguf.GGUFReader(ref_path).fields
    keys = [k for k in theirs if not k.startswith("GGUF.")]
    missing = [k for k in keys if k not in ours]
    differ = [k for k in keys if k in ours and k not in MAY_DIFFER
              and (ours[k].types != theirs[k].types or ours[k].contents() != theirs[k].contents())]
    return missing, differ


@pytest.mark.parametrize("kind", KINDS)
def test_our_keys_are_a_superset_of_llama_cpps(kind, pairs):
    for outtype in ("f16", "q8_0"):
        missing, differ = _key_comparison(*pairs[kind, outtype])
        assert not missing, f"{kind} {outtype}: llama.cpp writes keys we do not: {missing}"
        assert not differ, f"{kind} {outtype}: keys whose value or type differ from llama.cpp's: {differ}"


@pytest.mark.parametrize("outtype", ("f16", "q8_0"))
def test_tensors_read_in_row_pieces_still_equal_llama_cpp(outtype, pairs, tiny_family, tmp_path, monkeypatch):
    """An 8B embedding is read and encoded in runs of rows: with a piece size of a few rows every
    large tensor of the tiny model goes that way (Q/K through the permutation), and the bytes must
    still be llama.cpp's."""
    import convert.convert_model as convert_model
    from convert import write_gguf

    monkeypatch.setattr(convert_model, "READ_PIECE_BYTES", 3000)
    ours = write_gguf(tiny_family("llama3").chat, tmp_path / f"pieces-{outtype}.gguf", outtype)
    theirs = {t.name: t for t in gguf.GGUFReader(pairs["llama3", outtype][1]).tensors}
    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    assert mine.keys() == theirs.keys()
    for name, t in theirs.items():
        assert np.asarray(mine[name].data).tobytes() == np.asarray(t.data).tobytes(), name
