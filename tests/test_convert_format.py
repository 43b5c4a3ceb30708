"""The GGUF building blocks against independent truth: exact arithmetic, the ``gguf`` package, llama.cpp's tables.

No model is loaded here; these run in a second or two.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType

from convert import tensor_encoding
from convert.errors import ConvertError
from convert.gguf_stream import StreamingWriter
from convert.metadata import file_name, name_parts, size_label
from convert.pretokenizers import detect_pre_tokenizer
from convert.quant_tables import NEEDS_IMATRIX, OUTTYPES, outtype, require_imatrix
from cvlocal.outputs.types import parse_outtypes
from convert.tensor_encoding import encode
from convert.tensor_plan import permute_rotary, tensor_type

# ----------------------------------------------------------------------------- Q8_0


@pytest.fixture(params=["ggml C", "gguf numpy"])
def q8_0(request, monkeypatch):
    """The converter's Q8_0 encoder, through ggml's C quantizer and through its gguf.quants fallback."""
    if request.param == "gguf numpy":
        monkeypatch.setattr(tensor_encoding, "native_q8_0", lambda: None)
    else:
        assert tensor_encoding.native_q8_0() is not None, "llama-cpp-python's ggml library was not found"

    def run(x: np.ndarray) -> np.ndarray:
        return np.frombuffer(b"".join(bytes(p) for p in encode(torch.from_numpy(x), GGMLType.Q8_0)), dtype=np.uint8)

    return run


def test_q8_0_rounds_half_away_from_zero_with_exact_scale(q8_0):
    # amax 127 -> d = 1 exactly, so x * (1/d) = x and ties are visible: roundf(2.5) = 3, roundf(-3.5) = -4.
    block = np.zeros(32, dtype=np.float32)
    block[:6] = [127.0, 2.5, -3.5, 0.5, -0.5, 1.49999988]
    raw = q8_0(block)
    assert raw.size == 34
    assert raw[:2].view(np.float16)[0] == np.float16(1.0)
    q = raw[2:].view(np.int8)
    assert q[:6].tolist() == [127, 3, -4, 1, -1, 1]
    assert not q[6:].any()


def test_q8_0_zero_block_has_zero_scale(q8_0):
    assert not q8_0(np.zeros((2, 64), dtype=np.float32)).any()


def test_q8_0_c_path_and_gguf_fallback_are_byte_identical(monkeypatch):
    """ggml's C quantizer (the fast path) against the gguf.quants fallback, through the converter's encoder."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.001, 30, (64, 1))).astype(np.float32)
    x[3, :32] = 0.0
    x[5, 7] = 1e-30
    x[6, :32] = np.linspace(-127, 127, 32, dtype=np.float32) + 0.5  # ties
    c_path = b"".join(bytes(p) for p in encode(torch.from_numpy(x), GGMLType.Q8_0))
    monkeypatch.setattr(tensor_encoding, "native_q8_0", lambda: None)
    fallback = b"".join(bytes(p) for p in encode(torch.from_numpy(x), GGMLType.Q8_0))
    assert c_path == fallback
    back = gguf.quants.dequantize(np.frombuffer(c_path, dtype=np.uint8).reshape(64, -1), GGMLType.Q8_0)
    scale = np.abs(x).reshape(-1, 32).max(axis=1).repeat(32).reshape(x.shape) / 127
    # half a step of rounding, plus the fp16 rounding of the scale (relative 2^-11) on |q| <= 127
    assert np.all(np.abs(back - x) <= scale * (0.5 + 127 * 2.0**-11) * 1.0001 + 1e-30)


# ----------------------------------------------------------------------------- float encodings


def test_bf16_encoding_rounds_to_nearest_even_and_matches_ggml():
    ties = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 1.0 + 2**-9], dtype=np.float32)
    out = b"".join(bytes(p) for p in encode(torch.from_numpy(ties), GGMLType.BF16))
    got = np.frombuffer(out, dtype=np.uint16)
    # 1+2^-8 is halfway between 1 and 1+2^-7: ties go to the even mantissa (1.0 = 0x3F80).
    assert got.tolist() == [0x3F80, 0x3F82, 0xBF80, 0x3F80]
    x = np.random.default_rng(1).standard_normal(4096).astype(np.float32)
    ours = b"".join(bytes(p) for p in encode(torch.from_numpy(x), GGMLType.BF16))
    assert ours == gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).tobytes()


def test_f16_from_bf16_is_round_to_nearest_even_of_the_exact_value():
    x = torch.randn(8, 64).to(torch.bfloat16)
    ours = b"".join(bytes(p) for p in encode(x, GGMLType.F16))
    assert ours == x.float().numpy().astype(np.float16).tobytes()


def test_tensor_type_keeps_norms_vectors_and_biases_in_f32():
    assert tensor_type("blk.0.attn_norm.weight", (256,), GGMLType.Q8_0) == GGMLType.F32
    assert tensor_type("blk.0.attn_q_norm.weight", (64,), GGMLType.F16) == GGMLType.F32
    assert tensor_type("blk.0.attn_q.bias", (256,), GGMLType.BF16) == GGMLType.F32
    assert tensor_type("token_embd.weight", (1000, 256), GGMLType.Q8_0) == GGMLType.Q8_0
    assert tensor_type("blk.0.ffn_down.weight", (256, 100), GGMLType.Q8_0) == GGMLType.F16  # 100 % 32 != 0


# ----------------------------------------------------------------------------- rotary permutation


def test_permute_rotary_interleaves_each_heads_halves():
    n_heads, head, cols = 3, 8, 5
    w = torch.arange(n_heads * head * cols, dtype=torch.float32).reshape(n_heads * head, cols)
    out = permute_rotary(w, n_heads)
    for h in range(n_heads):
        for i in range(head // 2):
            assert torch.equal(out[h * head + 2 * i], w[h * head + i])
            assert torch.equal(out[h * head + 2 * i + 1], w[h * head + head // 2 + i])
    bias = torch.arange(n_heads * head, dtype=torch.float32)
    assert permute_rotary(bias, n_heads).tolist() == [h * head + (j // 2) + (j % 2) * head // 2 for h in range(n_heads) for j in range(head)]


# ----------------------------------------------------------------------------- writer


def test_writer_output_reads_back_with_the_gguf_package(tmp_path: Path):
    path = tmp_path / "t.gguf"
    w = StreamingWriter(path, "llama")
    w.add_value("llama.block_count", 2, GGUFValueType.UINT32)
    w.add_value("llama.attention.layer_norm_rms_epsilon", 1e-5, GGUFValueType.FLOAT32)
    w.add_value("tokenizer.ggml.add_bos_token", True, GGUFValueType.BOOL)
    w.add_value("tokenizer.ggml.tokens", ["<s>", "你好", "🙂"], GGUFValueType.ARRAY, GGUFValueType.STRING)
    w.add_value("tokenizer.ggml.token_type", [3, 1, 1], GGUFValueType.ARRAY, GGUFValueType.INT32)
    w.add_value("cvlocal.ratio", 0.1)
    w.add_value("cvlocal.vectors", ["a", "b"])
    a = torch.randn(40, 64)
    b = torch.randn(7)
    w.add_tensor("a", a.shape, GGMLType.F16)
    w.add_tensor("b", b.shape, GGMLType.F32)
    w.add_tensor("c", a.shape, GGMLType.Q8_0)
    w.write_header()
    w.write_tensor("a", encode(a, GGMLType.F16))
    w.write_tensor("b", encode(b, GGMLType.F32))
    w.write_tensor("c", encode(a, GGMLType.Q8_0))
    w.close()

    r = gguf.GGUFReader(path)
    f = r.fields
    assert f["llama.block_count"].types == [gguf.GGUFValueType.UINT32] and f["llama.block_count"].contents() == 2
    assert f["tokenizer.ggml.tokens"].contents() == ["<s>", "你好", "🙂"]
    assert f["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert f["cvlocal.ratio"].contents() == 0.1
    assert f["cvlocal.vectors"].contents() == ["a", "b"]
    assert f["tokenizer.ggml.add_bos_token"].contents() is True
    t = {x.name: x for x in r.tensors}
    assert list(t["a"].shape) == [64, 40] and t["a"].tensor_type == gguf.GGMLQuantizationType.F16
    assert np.array_equal(np.asarray(t["a"].data), a.numpy().astype(np.float16))
    assert np.array_equal(np.asarray(t["b"].data), b.numpy())
    assert all(x.data_offset % 32 == 0 for x in r.tensors)


def test_writer_refuses_out_of_order_and_short_tensors(tmp_path: Path):
    w = StreamingWriter(tmp_path / "t.gguf", "llama")
    w.add_tensor("a", (4, 32), GGMLType.F32)
    w.add_tensor("b", (4, 32), GGMLType.F32)
    w.write_header()
    with pytest.raises(RuntimeError, match="expected tensor 'a'"):
        w.write_tensor("b", [b"\0" * 512])
    with pytest.raises(RuntimeError, match="need 512"):
        w.write_tensor("a", [b"\0" * 100])
    with pytest.raises(RuntimeError, match="more than the 512 bytes"):
        w.write_tensor("a", [b"\0" * 500, b"\0" * 100])
    w.abort()


# ----------------------------------------------------------------------------- output types


LLAMA_H = next(iter(sorted(Path(__file__).resolve().parents[1].glob(".build/sdist/llama_cpp_python-*/vendor/llama.cpp/include/llama.h"))), None)


@pytest.mark.skipif(LLAMA_H is None, reason="llama.cpp source (.build/sdist) not present")
def test_ftype_numbers_match_llama_h():
    """Every offered type's file type is llama.h's LLAMA_FTYPE_* (the C library we hand it to)."""
    import re

    ftypes = {m[1]: int(m[2]) for m in re.finditer(r"LLAMA_FTYPE_(?:MOSTLY|ALL)_(\w+)\s*=\s*(\d+)", LLAMA_H.read_text())}
    for t in OUTTYPES.values():
        assert ftypes[t.label] == t.ftype, t.name


def test_outtype_names_aliases_and_refusals():
    assert outtype("Q4_K").name == "q4_k_m"
    assert [t.name for t in parse_outtypes("f16, q8_0,f16")] == ["f16", "q8_0"]
    for name in NEEDS_IMATRIX:  # offered, but refused before any work when no matrix is given
        assert outtype(name).needs_imatrix
        with pytest.raises(ConvertError, match="importance matrix"):
            require_imatrix([outtype(name)], have_imatrix=False)
        require_imatrix([outtype(name)], have_imatrix=True)
    assert set(NEEDS_IMATRIX) == {"iq2_xxs", "iq2_xs", "q2_k_s", "iq3_xs", "iq3_xxs", "iq1_s", "iq2_s", "iq2_m", "iq1_m"}
    with pytest.raises(ConvertError, match="unknown output type 'q9'.*q4_k_m"):
        outtype("q9")


# ----------------------------------------------------------------------------- pre-tokenizer


def _bpe_json(regex: str, ignore_merges: bool, normalizer=None) -> dict:
    return {
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "model": {"type": "BPE", "ignore_merges": ignore_merges},
    }


def test_pre_tokenizer_is_named_from_the_declared_regex():
    from tests.factory import LLAMA3_REGEX, QWEN2_REGEX

    assert detect_pre_tokenizer(_bpe_json(LLAMA3_REGEX, True), Path("t.json")) == "llama-bpe"
    assert detect_pre_tokenizer(_bpe_json(LLAMA3_REGEX, False), Path("t.json")) == "smaug-bpe"
    assert detect_pre_tokenizer(_bpe_json(QWEN2_REGEX, False, {"type": "NFC"}), Path("t.json")) == "qwen2"
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "model": {"type": "BPE"}}
    assert detect_pre_tokenizer(gpt2, Path("t.json")) == "gpt-2"


def test_unknown_pre_tokenizer_error_shows_it_and_lists_known_ones():
    with pytest.raises(ConvertError) as err:
        detect_pre_tokenizer(_bpe_json(r"\p{L}+|\p{N}{1,5}", True), Path("tokenizer.json"))
    text = str(err.value)
    assert r"\\p{N}{1,5}" in text or r"\p{N}{1,5}" in text
    assert "llama-bpe" in text and "qwen2" in text and "\n" not in text


# ----------------------------------------------------------------------------- naming


@pytest.mark.parametrize("params,label", [(1_100_048_384, "1.1B"), (494_032_768, "494M"), (1_700_000, "1.7M"), (8_030_261_248, "8.0B"), (70_553_706_496, "71B"), (135_000, "135K")])
def test_size_label_has_two_significant_digits(params, label):
    assert size_label(params) == label


def test_file_names_follow_the_gguf_naming_convention():
    parts = name_parts("TinyLlama-1.1B-Chat-v1.0", 1_100_048_384)
    assert parts == {"basename": "TinyLlama", "size_label": "1.1B", "finetune": "Chat", "version": "v1.0"}
    general = {"general.name": "TinyLlama-1.1B-Chat-v1.0", **{f"general.{k}": v for k, v in parts.items()}}
    assert file_name(general, "Q4_K_M") == "TinyLlama-1.1B-Chat-v1.0-Q4_K_M.gguf"
    parts = name_parts("Meta-Llama-3.1-8B-Instruct", 8_030_261_248)
    assert (parts["basename"], parts["size_label"], parts["finetune"], parts["version"]) == ("Meta-Llama-3.1", "8B", "Instruct", None)
    parts = name_parts("my-cp-model", 1_700_000)
    assert (parts["basename"], parts["size_label"]) == ("my-cp-model", "1.7M")
    json.dumps(parts)


def test_model_card_gives_license_and_base_models(tmp_path: Path):
    from convert.metadata import general_metadata

    folder = tmp_path / "Llama-3-8B-zh-CP"
    folder.mkdir()
    (folder / "README.md").write_text(
        "---\nlicense: llama3\nbase_model:\n- meta-llama/Meta-Llama-3-8B\n- someone/zh-cp\n---\n# Model\n", encoding="utf-8"
    )
    meta = general_metadata(folder, {}, 8_030_261_248, {})
    assert meta["general.license"] == "llama3"
    assert meta["general.base_model.count"] == 2
    assert meta["general.base_model.0.name"] == "Meta-Llama-3-8B"
    assert meta["general.base_model.0.organization"] == "meta-llama"
    assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/meta-llama/Meta-Llama-3-8B"
    assert meta["general.base_model.1.name"] == "zh-cp"
    assert (meta["general.basename"], meta["general.size_label"], meta["general.finetune"]) == ("Llama-3", "8B", "zh-CP")
