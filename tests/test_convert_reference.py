"""Tensor data byte-identical to llama.cpp's own converter (convert_hf_to_gguf.py) for f16 and q8_0.

llama.cpp's converter accepts SentencePiece Llama-2 models (it refuses BPE tokenizers whose
hash it does not know, i.e. every retrained one), so the comparison uses the tiny llama2 CP
model. The converter comes from the llama-cpp-python source distribution that ``make setup``
builds from (``.build/sdist``); without it the test is skipped.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = next(iter(sorted(ROOT.glob(".build/sdist/llama_cpp_python-*/vendor/llama.cpp"))), None)


@pytest.mark.slow
@pytest.mark.skipif(LLAMA_CPP is None or not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(), reason="llama.cpp source (.build/sdist) not present")
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_tensor_bytes_equal_llama_cpp_converter(outtype, tiny_family, tiny_gguf, tmp_path):
    folder = tiny_family("llama2").cp
    reference = tmp_path / f"reference-{outtype}.gguf"
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py")}
    result = subprocess.run(
        [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype, "--outfile", str(reference)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ours = {t.name: t for t in gguf.GGUFReader(tiny_gguf("llama2", outtype, which="cp")).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(reference).tensors}
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert list(ours[name].shape) == list(t.shape), name
        assert np.asarray(ours[name].data).tobytes() == np.asarray(t.data).tobytes(), name
    # and the metadata agree (the display name aside: llama.cpp title-cases the folder name)
    ref_fields = gguf.GGUFReader(reference).fields
    our_fields = gguf.GGUFReader(tiny_gguf("llama2", outtype, which="cp")).fields
    for key, field in ref_fields.items():
        if key.startswith("GGUF.") or key in ("general.name", "tokenizer.ggml.add_sep_token"):
            continue
        assert key in our_fields, key
        assert our_fields[key].contents() == field.contents(), key
