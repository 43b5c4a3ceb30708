"""The shared test-model factory builds checkpoints that behave like real ones.

Truth comes from outside the factory: sentencepiece's own encoder, transformers'
Auto classes, the raw safetensors files and plain torch arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.corpus import CORPUS, EXTENSION_WORDS
from tests.factory import CHAT_SCALE, CP_SCALE, KINDS, Family, make_family, make_tokenizer

MULTILINGUAL = [
    "臺灣的首都是臺北，我喜歡喝珍珠奶茶。",
    "简体中文：我们去公园散步吧。",
    "서울특별시에서 떡볶이를 먹었어요.",
    "こんにちは、東京タワーへ行きましょう。",
    "def add(a, b):\n    return a + b  # code\n\n\tTabs {x: [1, 2]}",
    "Emoji 😀👍🇹🇼 and ❤️ plus a rare CJK char 𠀀 and 鬱金香.",
    "Numbers 1234567 and 3.14159, café naïve Straße.",
]
SPM_KINDS = ("llama2", "mistral")
BPE_KINDS = ("llama3", "qwen2", "qwen3")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _word_ids(tok, word: str) -> list[int]:
    """Ids of a word, without the SentencePiece dummy-prefix piece "▁" that precedes it."""
    ids = tok(word, add_special_tokens=False).input_ids
    return ids[1:] if tok.convert_ids_to_tokens(ids[0]) == "\u2581" else ids


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_round_trips_multilingual_text(tiny_family, kind):
    fam = tiny_family(kind, extended=True)
    for folder in (fam.base, fam.cp):
        tok = _tokenizer(folder)
        size = _json(folder / "config.json")["vocab_size"]
        assert len(tok) == size
        for text in MULTILINGUAL:
            ids = tok(text).input_ids
            assert max(ids) < size
            assert tok.decode(ids, skip_special_tokens=True) == text
        # The vocabulary learned real CJK and Hangul sub-words, not only bytes.
        decoded = [tok.decode([i]) for i in range(size)]
        assert any(len(t) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in t) for t in decoded)
        assert any(len(t) >= 2 and all("\uac00" <= c <= "\ud7a3" for c in t) for t in decoded)


@pytest.mark.parametrize("kind", SPM_KINDS)
@pytest.mark.parametrize("extended", [False, True], ids=["base", "extended"])
def test_sentencepiece_and_transformers_agree(tiny_family, kind, extended):
    import sentencepiece as spm

    fam = tiny_family(kind, extended=True)
    folder = fam.cp if extended else fam.base
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = _tokenizer(folder)
    assert sp.get_piece_size() == len(tok) == _json(folder / "config.json")["vocab_size"]
    # transformers' Metaspace does not add the dummy prefix before leading whitespace (sentencepiece
    # and llama.cpp do), as with the real Llama-2 tokenizer; compare on text that starts with a letter.
    lines = [line for line in CORPUS.splitlines() + MULTILINGUAL if line and not line[0].isspace()]
    lines += list(EXTENSION_WORDS)
    for text in lines:
        assert tok(text).input_ids == [sp.bos_id(), *sp.encode(text)], text


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_sentencepiece_layout_is_llama_like(tiny_family, kind):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    folder = tiny_family(kind, extended=True).base
    proto = pb.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    spec = proto.trainer_spec
    assert spec.model_type == pb.TrainerSpec.BPE and spec.byte_fallback and spec.split_digits
    assert proto.normalizer_spec.name == "identity" and proto.normalizer_spec.add_dummy_prefix
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    first_byte = sp.piece_to_id("<0x00>")
    assert first_byte == (3 if kind == "llama2" else 10)
    assert [sp.id_to_piece(first_byte + b) for b in range(256)] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(sp.is_byte(first_byte + b) for b in range(256))
    # A character outside the vocabulary falls back to its UTF-8 bytes.
    rare = sp.encode("𠀀")
    assert [sp.id_to_piece(i) for i in rare[-4:]] == ["<0xF0>", "<0xA0>", "<0x80>", "<0x80>"]
    if kind == "mistral":
        assert sp.piece_to_id("[INST]") == 3 and sp.piece_to_id("[/INST]") == 4 and sp.is_control(3)
        tok = _tokenizer(folder)
        assert tok("[INST] hi[/INST]", add_special_tokens=False).input_ids[0] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_extended_cp_keeps_base_ids_and_appends_cjk_tokens(tiny_family, kind):
    fam = tiny_family(kind, extended=True)
    base, cp = _tokenizer(fam.base), _tokenizer(fam.cp)
    base_vocab, cp_vocab = base.get_vocab(), cp.get_vocab()
    assert all(cp_vocab.get(token) == i for token, i in base_vocab.items())
    new_ids = sorted(set(cp_vocab.values()) - set(base_vocab.values()))
    assert len(new_ids) >= 50
    assert new_ids == list(range(len(base), len(cp)))
    # Words the base splits (a few are already base tokens) are now one new token each. With
    # SentencePiece a word whose first character merges with the dummy prefix "▁" (as "▁서울")
    # cannot be reached, the same limitation real extended Llama tokenizers have.
    added = [w for w in EXTENSION_WORDS if len(_word_ids(base, w)) > 1]
    single = [w for w in added if len(_word_ids(cp, w)) == 1 and _word_ids(cp, w)[0] >= len(base)]
    assert len(single) >= 50
    if kind in BPE_KINDS:
        assert single == added
    assert all(len(_word_ids(cp, w)) <= len(_word_ids(base, w)) for w in EXTENSION_WORDS)
    # Special tokens keep their ids and their meaning.
    for token in base.all_special_tokens:
        assert cp.convert_tokens_to_ids(token) == base.convert_tokens_to_ids(token)
    w_base, w_cp = _weights(fam.base), _weights(fam.cp)
    assert w_cp["model.embed_tokens.weight"].shape == (len(cp), 256)
    assert w_base["model.embed_tokens.weight"].shape == (len(base), 256)
    if "lm_head.weight" in w_base:
        assert w_cp["lm_head.weight"].shape == (len(cp), 256)
    assert _json(fam.cp / "config.json")["vocab_size"] == len(cp)


def test_extended_cp_shares_leading_rows_with_plain_cp(tiny_family):
    plain = _weights(tiny_family("llama3").cp)
    ext = _weights(tiny_family("llama3", extended=True).cp)
    rows = plain["model.embed_tokens.weight"].shape[0]
    for name, tensor in plain.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ext[name][:rows], tensor)
            assert ext[name][rows:].float().std() > 0.05  # new rows are random, not zero
        else:
            assert torch.equal(ext[name], tensor), name


@pytest.mark.parametrize("kind", KINDS)
def test_chat_and_cp_are_base_plus_different_perturbations(tiny_family, kind):
    fam = tiny_family(kind, extended=True)
    base, chat, cp = _weights(fam.base), _weights(fam.chat), _weights(fam.cp)
    assert set(base) == set(chat) == set(cp)
    special_rows = kind == "llama3"
    for name, b in base.items():
        assert b.dtype == chat[name].dtype == cp[name].dtype == torch.bfloat16
        assert chat[name].shape == b.shape
        rows = b.shape[0]
        b32, c32, p32 = b.float(), chat[name].float(), cp[name][:rows].float()
        if special_rows and name in ("model.embed_tokens.weight", "lm_head.weight"):
            keep = b32.norm(dim=1) > 0.1  # skip the Llama-3 special rows, checked separately
            b32, c32, p32 = b32[keep], c32[keep], p32[keep]
        std = b32.std()
        for other, scale in ((c32, CHAT_SCALE), (p32, CP_SCALE)):
            relative = (other - b32).std() / std
            assert 0.7 * scale < relative < 1.3 * scale, (name, float(relative))
        # Independent noise: the two deltas are nearly uncorrelated.
        d_chat, d_cp = (c32 - b32).flatten(), (p32 - b32).flatten()
        cosine = torch.dot(d_chat, d_cp) / (d_chat.norm() * d_cp.norm())
        assert abs(float(cosine)) < 0.3, name


def test_llama3_chat_template_tokens_are_untrained_in_base_and_trained_in_chat(tiny_family):
    fam = tiny_family("llama3", extended=True)
    tok = _tokenizer(fam.chat)
    base, chat, cp = _weights(fam.base), _weights(fam.chat), _weights(fam.cp)
    template_ids = tok.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    regular = list(range(0, 200))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        typical = base[name][regular].float().norm(dim=1).mean()
        for i in template_ids:
            assert base[name][i].float().norm() < 0.01 * typical
            assert torch.equal(cp[name][i], base[name][i])
            assert chat[name][i].float().norm() > 0.5 * typical
        for token in ("<|begin_of_text|>", "<|end_of_text|>"):
            i = tok.convert_tokens_to_ids(token)
            assert base[name][i].float().norm() > 0.5 * typical


def test_chat_templates_and_end_of_turn_tokens(tiny_family):
    expected = {
        "llama2": ("<<SYS>>", "</s>", "</s>"),
        "mistral": ("[INST]", "</s>", "</s>"),
        "llama3": ("<|start_header_id|>assistant<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
        "qwen2": ("<|im_start|>assistant\n", "<|im_end|>", "<|endoftext|>"),
        "qwen3": ("<|im_start|>assistant\n", "<|im_end|>", "<|endoftext|>"),
    }
    messages = [{"role": "system", "content": "你是助理"}, {"role": "user", "content": "臺灣在哪裡？"}]
    for kind, (marker, chat_eos, base_eos) in expected.items():
        fam = tiny_family(kind, extended=True)
        chat, base, cp = _tokenizer(fam.chat), _tokenizer(fam.base), _tokenizer(fam.cp)
        prompt = chat.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert marker in prompt and "臺灣在哪裡？" in prompt and "你是助理" in prompt
        assert chat.eos_token == chat_eos and base.eos_token == base_eos and cp.eos_token == base_eos
        assert not base.chat_template and not cp.chat_template
        gen_chat = _json(fam.chat / "generation_config.json")["eos_token_id"]
        gen_base = _json(fam.base / "generation_config.json")["eos_token_id"]
        assert chat.convert_tokens_to_ids(chat_eos) in (gen_chat if isinstance(gen_chat, list) else [gen_chat])
        assert gen_base == base.convert_tokens_to_ids(base_eos)
        assert _json(fam.chat / "config.json")["eos_token_id"] == chat.convert_tokens_to_ids(chat_eos)
    llama3 = _tokenizer(tiny_family("llama3", extended=True).chat)
    ids = llama3.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    specials = llama3.convert_tokens_to_ids(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    assert ids[0] == specials[0] and ids.count(specials[1]) == 3 and ids.count(specials[3]) == 2
    gen = _json(tiny_family("llama3", extended=True).chat / "generation_config.json")["eos_token_id"]
    assert gen == llama3.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_folder_loads_and_generates_in_transformers(tiny_family, kind):
    from transformers import AutoModelForCausalLM

    fam = tiny_family(kind, extended=True)
    tok = _tokenizer(fam.chat)
    messages = [{"role": "user", "content": "請用繁體中文介紹臺灣。"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                     return_tensors="pt")
    for folder in (fam.base, fam.chat, fam.cp):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        assert type(model).__name__ == {"llama2": "LlamaForCausalLM", "llama3": "LlamaForCausalLM",
                                        "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                        "qwen3": "Qwen3ForCausalLM"}[kind]
        with torch.no_grad():
            logits = model(**prompt).logits[0, -1]
            out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        assert torch.isfinite(logits).all()
        assert logits.std() > 1.0  # well spread, so top-1 comparisons mean something
        assert out.shape[1] == prompt["input_ids"].shape[1] + 4 or int(out[0, -1]) in tok.all_special_ids
        assert int(out.max()) < model.config.vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_family_features_in_files(tiny_family, kind):
    fam = tiny_family(kind, extended=True)
    config = _json(fam.base / "config.json")
    weights = _weights(fam.base)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"]) == (256, 2, 4, 2, 512)
    assert config["torch_dtype"] == "bfloat16" and "rope_parameters" not in config
    assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (256, 256)
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (128, 256)
    theta = {"llama2": 10000.0, "llama3": 500000.0, "mistral": 1000000.0, "qwen2": 1000000.0, "qwen3": 1000000.0}
    assert config["rope_theta"] == theta[kind]
    has_bias = kind == "qwen2"
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert (f"model.layers.0.self_attn.{proj}.bias" in weights) == has_bias
    assert "model.layers.0.self_attn.o_proj.bias" not in weights
    has_qk_norm = kind == "qwen3"
    assert ("model.layers.1.self_attn.q_norm.weight" in weights) == has_qk_norm
    assert ("model.layers.1.self_attn.k_norm.weight" in weights) == has_qk_norm
    if has_qk_norm:
        assert weights["model.layers.1.self_attn.q_norm.weight"].shape == (64,)
    tied = kind in ("qwen2", "qwen3")
    assert config["tie_word_embeddings"] == tied
    assert ("lm_head.weight" in weights) != tied
    if kind == "llama3":
        assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    # No tensor is a constant (norms and biases are randomized too).
    for name, tensor in weights.items():
        assert tensor.float().std() > 0.01, name


def test_make_family_is_deterministic_and_seeded(tiny_family, tmp_path):
    first = tiny_family("qwen3", extended=True)
    again = make_family("qwen3", tmp_path / "again", extended=True, seed=0)
    other = make_family("qwen3", tmp_path / "other", extended=True, seed=4)
    for role in ("base", "chat", "cp"):
        a, b, c = (_weights(getattr(f, role)) for f in (first, again, other))
        assert all(torch.equal(a[n], b[n]) for n in a)
        assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])
    assert isinstance(first, Family) and first.kind == "qwen3"
    assert (first.base / "tokenizer.json").read_bytes() == (other.base / "tokenizer.json").read_bytes()


def test_v5_config_style_loads_the_same(tmp_path):
    from transformers import AutoConfig

    fam = make_family("llama3", tmp_path, config_style="v5")
    raw = _json(fam.base / "config.json")
    assert raw["rope_parameters"]["rope_theta"] == 500000.0 and "rope_theta" not in raw
    config = AutoConfig.from_pretrained(fam.base)
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 8.0


def test_hub_config_style_is_read_by_transformers(tiny_family):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_family("llama3", extended=True).base)
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 8.0


def test_make_tokenizer_writes_only_tokenizer_files(tmp_path):
    make_tokenizer("qwen2", tmp_path / "tok", chat=True)
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    tok = _tokenizer(tmp_path / "tok")
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    make_tokenizer("llama2", tmp_path / "spm", extended=True)
    assert (tmp_path / "spm" / "tokenizer.model").is_file()
    with pytest.raises(ValueError):
        make_tokenizer("gpt2", tmp_path / "bad")


@pytest.mark.parametrize("kind", BPE_KINDS)
def test_byte_level_tokenizer_is_built_like_the_family(tiny_family, kind):
    import inspect

    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_REGEX

    llama3_regex = inspect.signature(TikTokenConverter.__init__).parameters["pattern"].default
    fam = tiny_family(kind, extended=True)
    data = _json(fam.base / "tokenizer.json")
    split, byte_level = data["pre_tokenizer"]["pretokenizers"]
    assert split["type"] == "Split" and split["behavior"] == "Isolated" and not split["invert"]
    assert split["pattern"]["Regex"] == (llama3_regex if kind == "llama3" else QWEN2_REGEX)
    assert byte_level["type"] == "ByteLevel" and not byte_level["add_prefix_space"] and not byte_level["use_regex"]
    assert data["decoder"]["type"] == "ByteLevel"
    assert data["model"]["type"] == "BPE" and data["model"]["ignore_merges"] == (kind == "llama3")
    regular = len(data["model"]["vocab"])
    added = [(t["id"], t["content"]) for t in data["added_tokens"]]
    assert [i for i, _ in added] == list(range(regular, regular + len(added)))
    if kind == "llama3":
        names = [c for _, c in added]
        assert names[:2] == ["<|begin_of_text|>", "<|end_of_text|>"]
        assert names.index("<|start_header_id|>") + 1 == names.index("<|end_header_id|>") < names.index("<|eot_id|>")
    else:
        assert [c for _, c in added][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # transformers' classes (Qwen2Tokenizer rebuilds its pipeline) agree with the raw tokenizers file.
    for folder in (fam.base, fam.cp):
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok = _tokenizer(folder)
        for text in CORPUS.splitlines() + MULTILINGUAL + ["<|im_start|>user\nhi<|im_end|>", "<|eot_id|>x"]:
            assert tok(text).input_ids == raw.encode(text).ids, text
    tok = _tokenizer(fam.base)
    first = tok("hello").input_ids[0]
    if kind == "llama3":
        assert first == tok.convert_tokens_to_ids("<|begin_of_text|>") == regular
    else:
        assert first < regular and tok.bos_token is None
