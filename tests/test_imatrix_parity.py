"""The parity benchmark's comparisons (benchmarks/imatrix_parity.py), on files with known differences.

The benchmark itself needs llama.cpp's tools built (minutes), so CI checks only that its two
verdicts are right: a relative error known by construction is measured as such, a tensor missing on
one side is reported, and two GGUFs that differ in one metadata key only are reported as "same
tensor data, that key differs" while a changed tensor byte is caught.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from benchmarks import imatrix_parity


def _imatrix(path: Path, entries: dict[str, tuple[np.ndarray, float]]) -> Path:
    w = gguf.GGUFWriter(path, arch="")
    w.add_type("imatrix")
    for name, (sums, count) in entries.items():
        w.add_tensor(f"{name}.in_sum2", sums.astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[count]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_matrix_comparison_measures_a_known_relative_error(tmp_path: Path) -> None:
    x = np.arange(1, 257, dtype=np.float32)
    ours = _imatrix(tmp_path / "a.gguf", {"blk.0.attn_q.weight": (x * np.float32(1.25), 64), "blk.0.ffn_up.weight": (x, 64)})
    theirs = _imatrix(tmp_path / "b.gguf", {"blk.0.attn_q.weight": (x, 64), "blk.0.ffn_down.weight": (x, 64)})
    rows = {r["tensor"]: r for r in imatrix_parity.compare_matrices(ours, theirs)}
    q = rows["blk.0.attn_q.weight"]
    assert q["median_rel"] == q["max_rel"] == 0.25          # 1.25 x is exact in float32
    assert abs(q["pearson"] - 1.0) < 1e-12                   # a scale keeps the correlation
    assert q["counts_ours"] == q["counts_theirs"] == 64
    assert rows["blk.0.ffn_up.weight"]["missing_in"] == "llama-imatrix"
    assert rows["blk.0.ffn_down.weight"]["missing_in"] == "cvlocal"
    s = imatrix_parity.summary({"matrices": list(rows.values())})
    assert s["compared"] == 1 and len(s["missing"]) == 2


def _model(path: Path, name: str, data: np.ndarray) -> Path:
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name(name)
    w.add_tensor("blk.0.attn_q.weight", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_file_comparison_separates_metadata_from_tensor_data(tmp_path: Path) -> None:
    data = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    a = _model(tmp_path / "a.gguf", "one", data)
    assert imatrix_parity.compare_gguf(a, _model(tmp_path / "same.gguf", "one", data))["identical_bytes"]

    r = imatrix_parity.compare_gguf(a, _model(tmp_path / "b.gguf", "two", data))
    assert not r["identical_bytes"] and r["tensors_identical"]
    assert [k["key"] for k in r["keys_differ"]] == ["general.name"]
    assert "identical: 1/1 tensors bit-equal" in imatrix_parity.quantize_verdict(r)

    changed = data.copy()
    changed[1, 7] = np.nextafter(changed[1, 7], np.float32(2))  # one ulp in one value
    r = imatrix_parity.compare_gguf(a, _model(tmp_path / "c.gguf", "one", changed))
    assert not r["tensors_identical"] and r["tensors_differ"] == ["blk.0.attn_q.weight"] and r["keys_differ"] == []
