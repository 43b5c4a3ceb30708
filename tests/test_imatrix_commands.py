"""``--imatrix`` and ``--tensor-type`` on convert, merge (one pass to GGUF) and release.

What reaches the files is read back with gguf-py (llama-quantize's ``quantize.imatrix.*`` keys, the
tensor types llama.cpp wrote); the card is read as text.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from convert.imatrix_file import read_imatrix, write_imatrix_gguf
from tests.merge_helpers import assert_one_line_error, cli, leftovers


def _keys(path: Path) -> dict[str, object]:
    fields = gguf.GGUFReader(path).fields
    out: dict[str, object] = {}
    for key, f in fields.items():
        if key.startswith("quantize.imatrix."):
            value = f.parts[f.data[0]]
            out[key] = bytes(value).decode() if f.types[-1] == gguf.GGUFValueType.STRING else int(value[0])
    return out


def test_convert_with_auto_matrix_keeps_it_beside_the_outputs(tiny_family, tmp_path):
    folder = tiny_family("llama2").chat
    out = tmp_path / "m-{type}.gguf"
    cli("convert", folder, "-o", out, "--outtype", "q2_k_s", "--imatrix", "auto", "--tensor-type", "attn_v=q6_k", "-q")
    kept = tmp_path / f"{folder.name}.imatrix.gguf"
    matrix = read_imatrix(kept)
    assert matrix.datasets == ["heldout/en.txt"] and matrix.chunk_size == 512
    made = tmp_path / "m-q2_k_s.gguf"
    assert _keys(made) == {"quantize.imatrix.file": str(kept), "quantize.imatrix.dataset": "heldout/en.txt",
                           "quantize.imatrix.entries_count": 14, "quantize.imatrix.chunks_count": matrix.chunk_count}
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(made).tensors}
    assert types["blk.0.attn_v.weight"] == "Q6_K" and types["blk.0.ffn_up.weight"] == "Q2_K"
    # a second run never replaces the kept matrix without --force
    proc = cli("convert", folder, "-o", tmp_path / "again.gguf", "--outtype", "q2_k_s", "--imatrix", "auto", check=False)
    assert_one_line_error(proc, kept.name, "exists")
    assert not leftovers(tmp_path, "again.gguf")


def test_convert_and_merge_refuse_before_work(tiny_family, tmp_path, tiny_imatrix):
    fam = tiny_family("llama2")
    merge = ["merge", fam.cp, "--base", fam.base, "--chat", fam.chat]
    other = read_imatrix(tiny_imatrix)
    other.sums["blk.5.attn_q.weight"], other.counts["blk.5.attn_q.weight"] = other.sums["blk.0.attn_q.weight"], other.counts["blk.0.attn_q.weight"]
    write_imatrix_gguf(other, tmp_path / "other-model.gguf")
    cases = {
        "convert matrix for another model": (["convert", fam.chat, "--outtype", "q2_k_s", "--imatrix", tmp_path / "other-model.gguf"],
                                             ("blk.5.attn_q.weight", "another model")),
        "convert type needing a matrix": (["convert", fam.chat, "--outtype", "iq2_xs"], ("iq2_xs", "--imatrix")),
        "convert missing matrix": (["convert", fam.chat, "--outtype", "q2_k_s", "--imatrix", tmp_path / "nope.gguf"], ("nope.gguf",)),
        "convert bad tensor type": (["convert", fam.chat, "--outtype", "q4_k_m", "--tensor-type", "attn_v=q7_k"], ("q7_k",)),
        "merge type needing a matrix": ([*merge, "--outtype", "iq3_xxs"], ("iq3_xxs", "--imatrix")),
        "merge auto": ([*merge, "--outtype", "q2_k_s", "--imatrix", "auto"], ("--imatrix auto", "one-pass")),
    }
    for label, (args, needles) in cases.items():
        out = tmp_path / f"{label.replace(' ', '-')}.gguf"
        proc = cli(*args, "-o", out, check=False)
        assert_one_line_error(proc, *needles)
        assert not leftovers(tmp_path, out.name), label


def test_one_pass_merge_quantizes_with_the_matrix(tiny_family, tmp_path, tiny_imatrix):
    fam = tiny_family("llama2")
    out = tmp_path / "merged.gguf"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "-o", out, "--outtype", "q2_k_s", "--imatrix", tiny_imatrix,
        "--tensor-type", "ffn_down=q4_k", "-q")
    assert _keys(out)["quantize.imatrix.file"] == str(tiny_imatrix)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.1.ffn_down.weight"] == "Q4_K" and types["blk.1.ffn_gate.weight"] == "Q2_K"


def test_release_records_the_matrix_in_card_and_files(tiny_gguf, tmp_path, tiny_imatrix):
    import hashlib

    from cvlocal.outputs.types import parse_outtypes
    from cvlocal.release.pipeline import ReleaseRequest, release

    out = tmp_path / "rel"
    req = ReleaseRequest(source=tiny_gguf("llama2", "f16"), out=out, types=parse_outtypes("q2_k_s"), threads=1, ctx=64, chunks=1,
                         imatrix=tiny_imatrix, tensor_types=("attn_v=q6_k",))
    report = release(req)
    assert not report.failed
    shipped = out / report.outcomes[0].file
    assert _keys(shipped)["quantize.imatrix.entries_count"] == 14
    card = (out / "README.md").read_text(encoding="utf-8")
    assert hashlib.sha256(tiny_imatrix.read_bytes()).hexdigest() in card
    assert "4 windows of 32 tokens" in card and "story.txt" in card and "`attn_v=q6_k`" in card
    # the same folder with another matrix is another release: refused without --force
    other = tmp_path / "other.gguf"
    m = read_imatrix(tiny_imatrix)
    m.sums = {k: v * 2 for k, v in m.sums.items()}
    write_imatrix_gguf(m, other)
    from cvlocal.errors import UsageError

    with pytest.raises(UsageError, match="another source"):
        release(ReleaseRequest(source=req.source, out=out, types=req.types, threads=1, ctx=64, chunks=1, imatrix=other))
