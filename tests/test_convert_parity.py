"""Converted GGUF files against independent truth: transformers' logits, HF tokenizers' ids, HF chat templates.

Every architecture (llama2, llama3 with llama3 rope scaling, mistral, qwen2, qwen3) and both
tokenizer kinds, plus extended-vocabulary CP models and models whose embeddings have more rows
than the tokenizer has tokens. The GGUF files are read by llama-cpp-python (llama.cpp's own
loader, tokenizer and kernels); the reference is transformers in float32.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tests.corpus import EXTENSION_WORDS
from tests.factory import KINDS

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = (
    "The capital of Taiwan is Taipei. 臺灣的首都是臺北，今天天氣很好。这是简体中文。"
    "안녕하세요, 서울은 큰 도시입니다. こんにちは、東京はとても大きな都市です。"
    "🙂🚀 def add(a, b):\n    return a + b\n\n  two  spaces"
)
TEXTS = [
    "Hello world, this is a test of the tokenizer.",
    "這是一段繁體中文的測試句子，臺灣的首都是臺北。",
    "这是一个简体中文的测试句子，北京是中国的首都。",
    "안녕하세요. 한국어 문장을 시험합니다. 서울특별시",
    "日本語の文章です。カタカナとひらがな、漢字。",
    "Emoji: 🙂🚀👍🏽 and ❤️ and 🇹🇼",
    "def add(a, b):\n    return a + b  # comment\n\tprint(add(1, 2))\n",
    "spaces:   three, tabs:\t\tand newlines\n\n\n end\n",
    "   leading spaces and trailing   ",
    "mixed 中文 English 한국어 日本語 123456 3.14159 x=y+z",
    " ".join(EXTENSION_WORDS[:12]) + "，" + "".join(EXTENSION_WORDS[40:48]),
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant. 請用繁體中文回答。"},
    {"role": "user", "content": "臺灣的首都是哪裡？"},
    {"role": "assistant", "content": "臺灣的首都是臺北。"},
    {"role": "user", "content": "한국의 수도는?  And Japan's?"},
    {"role": "assistant", "content": "서울입니다. 東京です。"},
    {"role": "user", "content": "Thanks! 🙂"},
]
SPM_KINDS = ("llama2", "mistral")

# Bounds (max |logit difference|, as a fraction of the largest |logit| at that position):
# f32 holds the checkpoint's values exactly; with a float32 K/V cache only summation order
# differs (float32 rounding, measured ~3e-5 on logits of magnitude ~7).
F32_ABS = 1e-3
# bf16 checkpoints are exact in f16 and bf16 GGUFs, but llama.cpp (default settings: float16
# K/V cache) rounds the cached keys/values to f16 and, in the CPU matmul, the activations to the
# weight type (bf16: 8-bit mantissa, relative 2^-9; f16: 2^-11) before the dot products. These
# random tiny models amplify such rounding about tenfold from the embeddings to the logits (the
# measured error of bf16 is ~2% of the logit scale for 0.2% activation rounding). Q8_0 adds the
# weights' own rounding (up to 1/254 of each block's maximum) and 8-bit activations: ~10%
# measured. Whether the Q8_0 weights themselves are right is checked exactly, tensor by tensor,
# in test_q8_0_weights_are_the_f32_weights_rounded.
RELATIVE = {"f16": 0.01, "bf16": 0.05, "q8_0": 0.15}


def _llama(path: Path, **kw):
    return llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=2, **kw)


def _hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


_HF_LOGITS: dict[Path, tuple[list[int], np.ndarray]] = {}


def _hf_logits(folder: Path) -> tuple[list[int], np.ndarray]:
    """Prompt ids (with special tokens, as HF adds them) and transformers' float32 logits."""
    if folder not in _HF_LOGITS:
        from transformers import AutoModelForCausalLM

        ids = _hf_tokenizer(folder)(PROMPT).input_ids
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].numpy()
        _HF_LOGITS[folder] = (ids, logits)
    return _HF_LOGITS[folder]


def _gguf_logits(path: Path, ids: list[int], f32_cache: bool = False) -> np.ndarray:
    """llama.cpp's logits for ``ids``; ``f32_cache`` keeps the attention K/V cache in float32
    (llama.cpp's default is float16, which alone moves logits by ~1e-2 on these models)."""
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = _llama(path, n_ctx=512, n_batch=512, logits_all=True, **cache)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def _padded_copy(src: Path, dst: Path, multiple: int) -> Path:
    """A copy of ``src`` whose embeddings (and lm_head) have extra random rows up to a multiple of ``multiple``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    rows = config["vocab_size"]
    padded = -(-(rows + 1) // multiple) * multiple
    tensors = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            extra = (0.1 * torch.randn((padded - rows, tensors[name].shape[1]), generator=gen)).to(tensors[name].dtype)
            tensors[name] = torch.cat([tensors[name], extra])
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config["vocab_size"] = padded
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


@pytest.fixture(scope="module")
def padded_family(tiny_family, tmp_path_factory):
    """CP models with vocab_size above the tokenizer's size (embedding rows padded to a multiple of 64)."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            src = tiny_family(kind, True).cp
            cache[kind] = _padded_copy(src, tmp_path_factory.mktemp(f"padded-{kind}") / f"{kind}-cp-padded", 64)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from convert import write_gguf

    cache: dict[tuple[Path, str], Path] = {}

    def get(folder: Path, outtype: str) -> Path:
        key = (folder, outtype)
        if key not in cache:
            out = tmp_path_factory.mktemp("parity") / f"{folder.name}-{outtype}.gguf"
            cache[key] = write_gguf(folder, out, outtype)
        return cache[key]

    return get


def _compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, np.ndarray]:
    diff = np.abs(ref - got)
    scale = np.abs(ref).max(axis=1)
    return float(diff.max()), float((diff.max(axis=1) / scale).max()), ref.argmax(axis=1) == got.argmax(axis=1)


# ----------------------------------------------------------------------------- logits


@pytest.mark.parametrize("extended", [False, True], ids=["vocab", "extended"])
@pytest.mark.parametrize("kind", KINDS)
def test_f32_logits_match_transformers(kind, extended, tiny_family, converted):
    folder = tiny_family(kind, extended).cp
    ids, ref = _hf_logits(folder)
    got = _gguf_logits(converted(folder, "f32"), ids, f32_cache=True)
    assert got.shape == ref.shape
    max_abs, rel, same_top = _compare(ref, got)
    print(f"PARITY {kind}{'-ext' if extended else ''} f32: max|dlogit| {max_abs:.2e} (relative {rel:.2e})")
    assert same_top.all(), f"top-1 differs at positions {np.flatnonzero(~same_top).tolist()}"
    assert max_abs < F32_ABS, max_abs


@pytest.mark.parametrize("kind", ["llama2", "qwen2"])
def test_padded_vocabulary_logits_match_transformers(kind, padded_family, converted):
    folder = padded_family(kind)
    ids, ref = _hf_logits(folder)
    path = converted(folder, "f32")
    got = _gguf_logits(path, ids, f32_cache=True)
    max_abs, rel, same_top = _compare(ref, got)
    print(f"PARITY {kind}-padded f32: max|dlogit| {max_abs:.2e} (relative {rel:.2e})")
    assert same_top.all() and max_abs < F32_ABS, max_abs
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    n_tok = len(_hf_tokenizer(folder))
    assert len(tokens) == ref.shape[1] > n_tok
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, len(tokens))]
    assert set(types[n_tok:]) == {gguf.TokenType.UNUSED}


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", KINDS)
def test_16_bit_and_q8_0_logits_stay_within_bounds(kind, outtype, tiny_family, converted):
    folder = tiny_family(kind).chat
    ids, ref = _hf_logits(folder)
    got = _gguf_logits(converted(folder, outtype), ids)
    max_abs, rel, same_top = _compare(ref, got)
    print(f"PARITY {kind} {outtype}: max|dlogit| {max_abs:.2e} (relative {rel:.2e}), top-1 agreement {same_top.mean():.3f}")
    assert rel < RELATIVE[outtype], rel
    # top-1 must agree wherever transformers' winner leads by more than the error bound
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * RELATIVE[outtype] * np.abs(ref).max(axis=1)
    assert same_top[clear].all()


@pytest.mark.parametrize("kind,qtypes", [("llama3", ("q4_k_m", "q6_k")), ("qwen2", ("q4_k_m", "q5_k_m")), ("mistral", ("q4_k_m",))])
def test_k_quants_load_and_generate(kind, qtypes, tiny_family, tmp_path):
    from cvlocal.outputs.gguf import write_ggufs
    from cvlocal.outputs.names import output_paths

    folder = tiny_family(kind).chat
    outputs = output_paths(tmp_path, list(qtypes), folder)
    written = write_ggufs(folder, outputs)
    ids, ref = _hf_logits(folder)
    for qtype, path in written.items():
        reader = gguf.GGUFReader(path)
        assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType[f"MOSTLY_{qtype.upper()}"]
        kinds = {t.tensor_type.name for t in reader.tensors}
        assert kinds & {"Q4_K", "Q5_K", "Q6_K"}, kinds
        llm = _llama(path, n_ctx=256)
        out = llm.create_completion("The capital of Taiwan is", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] > 0
        llm.close()
        got = _gguf_logits(path, ids)
        # 4-6 bit weights on a random tiny model: far from exact (the tenfold amplification above),
        # but still clearly the same function (a wrong layout would give a correlation near 0).
        corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
        print(f"PARITY {kind} {qtype}: correlation {corr:.4f}, top-1 agreement {(ref.argmax(1) == got.argmax(1)).mean():.3f}")
        assert corr > 0.8, corr
    assert not list(tmp_path.glob(".*partial*"))


# ----------------------------------------------------------------------------- tokenizer


def _vocab_model(path: Path):
    return _llama(path, vocab_only=True)


@pytest.mark.parametrize("extended", [False, True], ids=["vocab", "extended"])
@pytest.mark.parametrize("kind", KINDS)
def test_tokenization_matches_hf(kind, extended, tiny_family, tiny_gguf):
    """Same ids as the HF tokenizer; for SentencePiece models also as the sentencepiece library.

    transformers' tokenizer.json for a SentencePiece model is a conversion that splits a run of
    leading spaces differently from sentencepiece itself (``▁▁ ▁l...`` against ``▁▁▁▁ lea...``);
    llama.cpp follows sentencepiece, the tokenizer the model was trained with, so for that one
    text the reference is sentencepiece.
    """
    folder = tiny_family(kind, extended).cp
    hf = _hf_tokenizer(folder)
    llm = _vocab_model(tiny_gguf(kind, "f16", extended=extended, which="cp"))
    sp = None
    if kind in SPM_KINDS:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in TEXTS:
        got = llm.tokenize(text.encode(), add_bos=False, special=False)
        want = hf(text, add_special_tokens=False).input_ids
        if sp is not None:
            assert got == sp.encode(text), text
            if text.startswith("  "):
                continue
        assert got == want, text
        # with the model's own special tokens (bos for Llama and SentencePiece, none for Qwen)
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == hf(text).input_ids, text
        # llama.cpp keeps SentencePiece's leading space when detokenizing; transformers drops it
        text_back = llm.detokenize(want).decode("utf-8", errors="replace")
        assert (text_back.removeprefix(" ") if sp is not None else text_back) == hf.decode(want), text


@pytest.mark.parametrize("kind", ["llama3", "qwen2", "qwen3"])
def test_chat_prompt_special_tokens_tokenize_like_hf(kind, tiny_family, tiny_gguf):
    folder = tiny_family(kind).chat
    hf = _hf_tokenizer(folder)
    prompt = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    llm = _vocab_model(tiny_gguf(kind, "f16"))
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == hf(prompt, add_special_tokens=False).input_ids


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_sentencepiece_chat_prompt_tokenizes_like_sentencepiece(kind, tiny_family, tiny_gguf):
    """SentencePiece models: llama.cpp follows sentencepiece itself (a ``▁`` prefix on every text
    segment, also after a special token), which is what ``legacy`` HF tokenizers and the original
    Llama-2/Mistral code do. The reference is the sentencepiece library on each text segment."""
    import re

    import sentencepiece as spm

    folder = tiny_family(kind).chat
    hf = _hf_tokenizer(folder)
    prompt = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    specials = sorted((t for t in hf.all_special_tokens + list(hf.added_tokens_encoder) if t), key=len, reverse=True)
    want: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, specials)) + ")", prompt):
        if piece in specials:
            want.append(hf.convert_tokens_to_ids(piece))
        elif piece:
            want += sp.encode(piece)
    llm = _vocab_model(tiny_gguf(kind, "f16"))
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == want


# ----------------------------------------------------------------------------- chat template


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_renders_like_transformers(kind, tiny_family, tiny_gguf):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    folder = tiny_family(kind).chat
    hf = _hf_tokenizer(folder)
    want = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    llm = _vocab_model(tiny_gguf(kind, "f16"))
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(
        template=template,
        bos_token=llm._model.token_get_text(llm.token_bos()),
        eos_token=llm._model.token_get_text(llm.token_eos()),
    )
    assert formatter(messages=CHAT).prompt == want


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_is_what_llama_cpp_reads(kind, tiny_family, tiny_gguf):
    folder = tiny_family(kind).chat
    config = json.loads((folder / "config.json").read_text())
    hf = _hf_tokenizer(folder)
    path = tiny_gguf(kind, "q8_0")
    arch = {"llama2": "llama", "llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[kind]
    meta = _vocab_model(path).metadata  # llama.cpp's own parse, values as strings
    assert meta["general.architecture"] == arch
    assert int(meta[f"{arch}.block_count"]) == config["num_hidden_layers"]
    assert int(meta[f"{arch}.context_length"]) == config["max_position_embeddings"]
    assert int(meta[f"{arch}.embedding_length"]) == config["hidden_size"]
    assert int(meta[f"{arch}.feed_forward_length"]) == config["intermediate_size"]
    assert int(meta[f"{arch}.attention.head_count"]) == config["num_attention_heads"]
    assert int(meta[f"{arch}.attention.head_count_kv"]) == config["num_key_value_heads"]
    assert float(meta[f"{arch}.rope.freq_base"]) == pytest.approx(config["rope_theta"])
    assert float(meta[f"{arch}.attention.layer_norm_rms_epsilon"]) == pytest.approx(config["rms_norm_eps"])
    assert int(meta["general.file_type"]) == 7 and int(meta["general.quantization_version"]) == 2
    assert int(meta["tokenizer.ggml.eos_token_id"]) == hf.eos_token_id
    if hf.bos_token_id is not None:
        assert int(meta["tokenizer.ggml.bos_token_id"]) == hf.bos_token_id
    assert meta["tokenizer.ggml.model"] == ("llama" if kind in SPM_KINDS else "gpt2")
    assert meta["tokenizer.ggml.pre"] == {"llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}.get(kind, "default")
    eot = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}.get(kind)
    if eot:
        assert int(meta["tokenizer.ggml.eot_token_id"]) == hf.convert_tokens_to_ids(eot)
    if arch == "llama":
        assert int(meta["llama.vocab_size"]) == config["vocab_size"]
    assert meta["general.name"] == folder.name and meta["general.quantized_by"] == "cvlocal"
    # The size label counts the GGUF's parameters, the file name follows the convention.
    reader = gguf.GGUFReader(path)
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    from cvlocal.outputs.names import gguf_file_name
    from convert.metadata import size_label

    assert meta["general.size_label"] == size_label(n_params)
    assert folder.name == f"{kind}-chat"
    assert gguf_file_name(folder, "q8_0") == f"{kind}-{size_label(n_params)}-chat-Q8_0.gguf"
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not config.get("tie_word_embeddings", False))
    assert ("rope_freqs.weight" in names) == (kind == "llama3")
    assert ("blk.0.attn_q_norm.weight" in names) == (kind == "qwen3")
    assert ("blk.0.attn_q.bias" in names) == (kind in ("qwen2",))


def test_llama3_rope_freqs_are_transformers_scaling_factors(tiny_family, tiny_gguf):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    folder = tiny_family("llama3").chat
    config = AutoConfig.from_pretrained(folder)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    raw = json.loads((folder / "config.json").read_text())
    dim = raw["head_dim"]
    plain = 1.0 / (raw["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    reader = gguf.GGUFReader(tiny_gguf("llama3", "f16"))
    factors = np.asarray(next(t for t in reader.tensors if t.name == "rope_freqs.weight").data)
    # llama.cpp divides each rotary frequency by its factor; transformers stores the divided frequency.
    np.testing.assert_allclose(plain.numpy() / factors, scaled.numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0 and ((factors > 1) & (factors < 8)).any()


@pytest.mark.parametrize("kind", ["llama3", "qwen3"])
def test_q8_0_weights_are_the_f32_weights_rounded(kind, tiny_gguf):
    """Each Q8_0 weight is within half a quantization step (plus the fp16 rounding of the block
    scale) of the exact value in the f32 file, whose logits match transformers. (Llama-3's
    "untrained" special-token rows, ~1e-4, have scales below fp16's normal range.)"""
    q8 = {t.name: t for t in gguf.GGUFReader(tiny_gguf(kind, "q8_0")).tensors}
    f32 = {t.name: t for t in gguf.GGUFReader(tiny_gguf(kind, "f32")).tensors}
    assert q8.keys() == f32.keys()
    for name, t in q8.items():
        exact = np.asarray(f32[name].data, dtype=np.float32)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            assert np.array_equal(np.asarray(t.data), exact), name
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, name
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(exact.shape)
        step = np.abs(exact).reshape(-1, 32).max(axis=1, keepdims=True) / 127
        err = np.abs(got - exact).reshape(-1, 32)
        # fp16 rounds the scale by at most 2^-11 relative, or 2^-25 absolute below fp16's normal range
        scale_err = np.maximum(step * 2.0**-11, 2.0**-25)
        assert np.all(err <= (step * 0.5 + 127 * scale_err) * 1.0001), name
