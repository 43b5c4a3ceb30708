"""``cvlocal quantize`` with an importance matrix, per-tensor types, requantizing, and real signals.

Truth comes from outside our code: gguf-py's reader for the tensor types and keys of the output,
llama.cpp itself (through llama-cpp-python) loading and generating from it, real SIGINT/SIGTERM
sent to a real ``cvlocal quantize`` process.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.imatrix_file import Imatrix, read_imatrix, write_imatrix_gguf
from tests.merge_helpers import ROOT, assert_one_line_error, cli, leftovers


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _field(path: Path, key: str):
    f = gguf.GGUFReader(path).fields.get(key)
    if f is None:
        return None
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[-1] == gguf.GGUFValueType.STRING else int(value[0])


LLAMA_CPP = next(iter(sorted(ROOT.glob(".build/sdist/llama_cpp_python-*/vendor/llama.cpp"))), None)


def _llama_quantize_key_order() -> list[str] | None:
    """The order in which llama.cpp's tools/quantize/quantize.cpp sets the quantize.imatrix.* overrides."""
    src = LLAMA_CPP / "tools" / "quantize" / "quantize.cpp" if LLAMA_CPP else None
    if src is None or not src.is_file():
        return None
    text = src.read_text(encoding="utf-8")
    names = dict(re.findall(r'(LLM_KV_QUANTIZE_IMATRIX_\w+)\s*=\s*"([^"]+)"', text))
    return [names[c] for c in re.findall(r"strcpy\(kvo\.key, (LLM_KV_QUANTIZE_IMATRIX_\w+)\)", text)]


def _generates(path: Path) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, n_threads=1, logits_all=True)
    out = llm("The slow train", max_tokens=6, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    assert np.isfinite(np.asarray(llm.scores[: llm.n_tokens])).all()


@pytest.mark.parametrize("qtype,tensor_type", [("iq2_xs", "IQ2_XS"), ("iq3_xxs", "IQ3_XXS"), ("q2_k_s", "Q2_K")])
def test_low_bit_types_with_the_matrix_load_and_generate(tiny_gguf, tiny_imatrix, tmp_path, qtype, tensor_type):
    out = tmp_path / f"m-{qtype}.gguf"
    proc = cli("quantize", tiny_gguf("llama2", "f16"), "-o", out, "--type", qtype, "--imatrix", tiny_imatrix, "--threads", "2", "-q")
    assert proc.returncode == 0
    types = _types(out)
    assert tensor_type in {types[n] for n in types if n.startswith("blk.")}
    # llama-quantize's quantize.imatrix.* keys
    assert _field(out, "quantize.imatrix.file") == str(tiny_imatrix)
    assert _field(out, "quantize.imatrix.entries_count") == 14
    assert _field(out, "quantize.imatrix.chunks_count") == 4
    assert _field(out, "quantize.imatrix.dataset").endswith("story.txt")
    order = _llama_quantize_key_order()  # same order as llama-quantize: then the files are byte-identical
    if order is not None:
        assert len(order) == 4
        assert [k for k in gguf.GGUFReader(out).fields if k.startswith("quantize.imatrix.")] == order
    _generates(out)


def test_matrix_and_tensor_types_reach_llama_cpp(tiny_gguf, tiny_imatrix, tmp_path):
    f16 = tiny_gguf("llama2", "f16")
    plain, weighted, mixed = tmp_path / "plain.gguf", tmp_path / "weighted.gguf", tmp_path / "mixed.gguf"
    cli("quantize", f16, "-o", plain, "--type", "q4_k_m", "-q")
    cli("quantize", f16, "-o", weighted, "--type", "q4_k_m", "--imatrix", tiny_imatrix, "-q")
    cli("quantize", f16, "-o", mixed, "--type", "q4_k_m", "--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.1\.ffn_down=q5_k", "-q")
    a, b = gguf.GGUFReader(plain), gguf.GGUFReader(weighted)
    blocks = [t.name for t in a.tensors if t.name.startswith("blk.") and t.name.endswith("attn_q.weight")]
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert all(ta[n].tensor_type == tb[n].tensor_type for n in blocks)
    assert any(not np.array_equal(ta[n].data, tb[n].data) for n in blocks)  # the matrix changed the rounding
    types = _types(mixed)
    assert types["blk.0.attn_v.weight"] == types["blk.1.attn_v.weight"] == "Q8_0"
    assert types["blk.1.ffn_down.weight"] == "Q5_K" and types["blk.0.ffn_down.weight"] != "Q5_K"


def test_requantize_needs_the_flag_and_warns(tiny_gguf, tmp_path):
    q8 = tiny_gguf("llama2", "q8_0")
    out = tmp_path / "re.gguf"
    proc = cli("quantize", q8, "-o", out, "--type", "q4_k_m", check=False)
    assert_one_line_error(proc, "already quantized", "--allow-requantize")
    assert not leftovers(tmp_path, out.name)
    proc = cli("quantize", q8, "-o", out, "--type", "q4_k_m", "--allow-requantize", "-q")
    assert "warning" in proc.stderr and "allow-requantize" in proc.stderr
    assert "Q4_K" in set(_types(out).values())
    _generates(out)


def test_bad_matrices_and_options_are_refused_before_work(tiny_gguf, tiny_imatrix, tmp_path):
    f16 = tiny_gguf("llama2", "f16")
    good = read_imatrix(tiny_imatrix)

    def variant(name: str, change) -> Path:
        m = Imatrix({k: v.copy() for k, v in good.sums.items()}, {k: v.copy() for k, v in good.counts.items()}, good.datasets, good.chunk_count, good.chunk_size)
        change(m)
        path = tmp_path / name
        write_imatrix_gguf(m, path)
        return path

    extra = variant("other-names.gguf", lambda m: (m.sums.__setitem__("blk.7.attn_q.weight", m.sums["blk.0.attn_q.weight"]), m.counts.__setitem__("blk.7.attn_q.weight", m.counts["blk.0.attn_q.weight"])))
    narrow = variant("other-sizes.gguf", lambda m: m.sums.__setitem__("blk.0.attn_q.weight", m.sums["blk.0.attn_q.weight"][:, :128].copy()))
    nan = variant("nan.gguf", lambda m: m.sums["blk.1.ffn_up.weight"].__setitem__((0, 3), np.nan))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_imatrix.read_bytes()[: tiny_imatrix.stat().st_size // 2])
    cases = {
        "imatrix for another model (names)": (["--type", "iq2_xs", "--imatrix", extra], ("blk.7.attn_q.weight", "another model")),
        "imatrix for another model (sizes)": (["--type", "iq2_xs", "--imatrix", narrow], ("blk.0.attn_q.weight", "another model")),
        "non-finite imatrix": (["--type", "q4_k_m", "--imatrix", nan], ("nan.gguf", "non-finite")),
        "truncated imatrix": (["--type", "q4_k_m", "--imatrix", truncated], ("truncated.gguf",)),
        "model GGUF as imatrix": (["--type", "q4_k_m", "--imatrix", f16], ("not an importance matrix",)),
        "missing imatrix": (["--type", "q4_k_m", "--imatrix", tmp_path / "nope.gguf"], ("nope.gguf",)),
        "unknown tensor type": (["--type", "q4_k_m", "--tensor-type", "attn_v=q9_k"], ("q9_k", "attn_v")),
        "malformed tensor type": (["--type", "q4_k_m", "--tensor-type", "attn_v"], ("PATTERN=TYPE",)),
        "type needing a matrix": (["--type", "iq2_xs"], ("iq2_xs", "--imatrix")),
        "tensor type needing a matrix": (["--type", "q4_k_m", "--tensor-type", "ffn_down=iq2_xxs"], ("ffn_down=iq2_xxs", "--imatrix")),
        "unknown output type": (["--type", "iq9_xs"], ("iq9_xs",)),
    }
    for label, (args, needles) in cases.items():
        out = tmp_path / f"{label.replace(' ', '-')}.gguf"
        proc = cli("quantize", f16, "-o", out, *args, check=False)
        assert_one_line_error(proc, *needles)
        assert not leftovers(tmp_path, out.name), label


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_llama_cpp_and_leaves_nothing(tiny_gguf, tmp_path, sig, code):
    """Before, the signal died in the ctypes log callback: quantization went on and exit was 0."""
    out = tmp_path / "out.gguf"
    # IQ3_S builds its quantization grid on first use: seconds of work inside one C call, no matrix needed
    proc = subprocess.Popen([sys.executable, "-m", "cvlocal", "quantize", str(tiny_gguf("llama2", "f16")), "-o", str(out),
                             "--type", "iq3_s", "--threads", "1", "-q"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a test run in a background job inherits SIGINT ignored (POSIX)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.gguf.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "quantization finished before the signal could be sent"
    sent = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code, proc.stderr.read()
    assert time.monotonic() - sent < 30
    assert "Traceback" not in proc.stderr.read()
    assert not leftovers(tmp_path, out.name)
