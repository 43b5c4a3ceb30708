"""Architectures as tables plus named transforms, and the families they added: Gemma 2, Gemma 3, Phi-3.

Truth is independent of our converter: transformers' float32 forward of tiny real models built
with transformers' own classes (logits, top-1), the HF tokenizer and sentencepiece (ids),
transformers' chat template rendering, llama.cpp's own convert_hf_to_gguf.py (tensor bytes and
key set) and its loader (llama-cpp-python). The old families' parity lives in
test_convert_parity.py / test_convert_reference.py and is unchanged.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tests.factory import NEW_KINDS
from tests.test_convert_parity import (
    PROMPT,
    TEXTS,
    _compare,
    _gguf_logits,
    _hf_logits,
    _hf_tokenizer,
    _llama,
)

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = next(iter(sorted(ROOT.glob(".build/sdist/llama_cpp_python-*/vendor/llama.cpp"))), None)
ARCH = {"gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3"}
EOT = {"gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "phi3": "<|end|>"}
# Gemma's feed-forward is GELU, which llama.cpp's CPU backend evaluates through a float16 lookup
# table (ggml-cpu/vec.h, GGML_GELU_FP16): the input and the result are rounded to f16. That alone
# moves these logits (magnitude ~25) by ~5e-3; emulating the table in transformers' forward
# brings it down to 2.8e-3. So the bound for the GELU families is 1.5e-2 (6e-4 of the logit scale; measured 6.2e-3 converted, 9.6e-3 merged),
# for Phi-3 (SiLU) the plain 2e-3.
F32_ABS = {"gemma2": 1.5e-2, "gemma3": 1.5e-2, "phi3": 2e-3}
CHAT = [
    {"role": "user", "content": "臺灣的首都是哪裡？ 한국의 수도는?"},
    {"role": "assistant", "content": "臺灣的首都是臺北。서울입니다。東京です。"},
    {"role": "user", "content": "def add(a, b): return a + b 🙂"},
]


@pytest.fixture(scope="module")
def f32(tiny_family, tmp_path_factory):
    from convert import write_gguf

    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = write_gguf(tiny_family(kind).cp, tmp_path_factory.mktemp(f"fam-{kind}") / f"{kind}-f32.gguf", "f32")
        return cache[kind]

    return get


# ----------------------------------------------------------------------------- the catalogue


def test_norm_plus_one_is_gemmas_rms_norm():
    """llama.cpp's plain RMSNorm with the stored weight equals transformers' Gemma RMSNorm (1 + w)."""
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

    from convert.transforms import norm_plus_one

    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, generator=gen), torch.randn(3, 64, generator=gen)
    norm = Gemma2RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(w)
        want = norm(x)
    stored = norm_plus_one(w.to(torch.bfloat16), {})
    assert stored.dtype == torch.float32 and torch.equal(stored, w.to(torch.bfloat16).float() + 1)
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_plus_one(w, {})
    torch.testing.assert_close(plain, want, rtol=1e-6, atol=1e-6)


def test_delta_transform_keeps_linear_and_drops_affine_transforms():
    from convert.transforms import apply_transforms, delta_transform

    config = {"num_attention_heads": 2, "num_key_value_heads": 2}
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    for names in (("permute_q",), ("norm_plus_one",), ("keep_fused",)):
        lhs = apply_transforms(names, a, config) - apply_transforms(names, b, config)
        torch.testing.assert_close(delta_transform(names, a - b, config), lhs)


def test_rope_factors_are_the_config_lists_and_check_their_length():
    from convert.errors import ConvertError
    from convert.transforms import rope_factors

    config = {"hidden_size": 256, "num_attention_heads": 4,
              "rope_scaling": {"type": "longrope", "long_factor": [2.0] * 32, "short_factor": [1.5] * 32}}
    (long_name, long), (short_name, short) = rope_factors(config)
    assert (long_name, short_name) == ("rope_factors_long.weight", "rope_factors_short.weight")
    assert long.tolist() == [2.0] * 32 and short.tolist() == [1.5] * 32
    assert rope_factors({"hidden_size": 256, "num_attention_heads": 4}) == []
    config["rope_scaling"]["short_factor"] = [1.5] * 31
    with pytest.raises(ConvertError, match="32 values"):
        rope_factors(config)


def test_tables_name_only_catalogued_transforms_and_rules():
    from convert.architectures import FAMILIES
    from convert.hparams import RULES
    from convert.transforms import GENERATED, TENSOR_TRANSFORMS

    for arch in FAMILIES:
        assert set(arch.rules) <= set(RULES), arch.family
        assert {t for _, t in arch.transforms} <= set(TENSOR_TRANSFORMS), arch.family
        assert set(arch.generated) <= set(GENERATED), arch.family


def test_the_main_loop_knows_no_family():
    """No ``if arch == ...`` outside the tables: the loop's modules never compare a family name."""
    loop = ["conversion.py", "tensor_plan.py", "hparams.py", "transforms.py"]
    names = r"llama|mistral|qwen|gemma|phi"
    for name in loop:
        text = (ROOT / "convert" / name).read_text()
        assert not re.search(r"(\.family|gguf_arch|model_arch|architecture)\s*(==|!=|\bin\b)", text), name
        assert not re.search(rf"==\s*[\"']({names})", text, re.IGNORECASE), name


def test_readme_table_and_refusal_list_what_the_tables_hold(tmp_path):
    from convert.architectures import ARCHITECTURES, supported_table
    from convert.conversion import load_config
    from convert.errors import ConvertError

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- architectures:begin -->\n(.*?)\n<!-- architectures:end -->", readme, re.DOTALL)
    assert block, "README lacks the generated architectures table"
    assert block.group(1) == supported_table(), "README's table is stale: paste convert.architectures.supported_table()"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConvertError) as err:
        load_config(tmp_path)
    assert re.search(r"Supported: (.*)\.$", str(err.value)).group(1).split(", ") == list(ARCHITECTURES)


def test_roles_come_from_the_table():
    from cvlocal.vector.roles import is_embedding, is_lm_head

    gemma3 = {"architectures": ["Gemma3ForConditionalGeneration"]}
    assert is_embedding("model.language_model.embed_tokens.weight", gemma3)
    assert is_embedding("language_model.model.embed_tokens.weight", gemma3)
    assert not is_embedding("model.vision_tower.vision_model.embeddings.patch_embedding.weight", gemma3)
    assert is_lm_head("lm_head.weight", {"architectures": ["Phi3ForCausalLM"]})
    # a suffix guess would have taken any "...embed_tokens.weight"
    assert not is_embedding("model.layers.0.embed_tokens.weight", {"architectures": ["LlamaForCausalLM"]})


# ----------------------------------------------------------------------------- the new families


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_f32_logits_match_transformers(kind, tiny_family, f32):
    folder = tiny_family(kind).cp
    ids, ref = _hf_logits(folder)
    got = _gguf_logits(f32(kind), ids, f32_cache=True)
    max_abs, rel, same_top = _compare(ref, got)
    print(f"PARITY {kind} f32: max|dlogit| {max_abs:.2e} (relative {rel:.2e}), {len(ids)} tokens")
    assert same_top.all(), f"top-1 differs at positions {np.flatnonzero(~same_top).tolist()}"
    assert max_abs < F32_ABS[kind], max_abs


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_tokenization_matches_hf(kind, tiny_family, f32):
    """Same ids as the HF tokenizer (and sentencepiece); Phi-3's Llama-2 style run of leading spaces
    is split differently by transformers' tokenizer.json, so there sentencepiece is the reference
    (as for Llama 2 in test_convert_parity)."""
    import sentencepiece as spm

    folder = tiny_family(kind).cp
    hf = _hf_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    llm = _llama(f32(kind), vocab_only=True)
    for text in TEXTS + [PROMPT]:
        got = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert got == sp.encode(text), text
        if not (kind == "phi3" and text.startswith("  ")):
            assert got == hf(text, add_special_tokens=False).input_ids, text
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == hf(text).input_ids, text


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_chat_template_and_end_of_turn_are_carried(kind, tiny_family, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from convert import write_gguf

    folder = tiny_family(kind).chat
    hf = _hf_tokenizer(folder)
    llm = _llama(write_gguf(folder, tmp_path / "chat.gguf", "q8_0"), vocab_only=True)
    meta = llm.metadata
    assert int(meta["tokenizer.ggml.eot_token_id"]) == hf.convert_tokens_to_ids(EOT[kind])
    want = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    formatter = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"], bos_token=llm._model.token_get_text(llm.token_bos()),
                                    eos_token=llm._model.token_get_text(llm.token_eos()))
    assert formatter(messages=CHAT).prompt == want
    ids = llm.tokenize(want.encode(), add_bos=False, special=True)
    assert hf.convert_tokens_to_ids(EOT[kind]) in ids
    if kind != "phi3":  # Gemma: no dummy prefix, so HF's ids are sentencepiece's, segment by segment
        assert ids == hf(want, add_special_tokens=False).input_ids
    assert meta["general.architecture"] == ARCH[kind]


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_metadata_holds_the_family_keys(kind, tiny_family, f32):
    config = json.loads((tiny_family(kind).cp / "config.json").read_text())
    fields = gguf.GGUFReader(f32(kind)).fields
    arch = ARCH[kind]
    value = {k: f.contents() for k, f in fields.items()}
    names = {t.name for t in gguf.GGUFReader(f32(kind)).tensors}
    if kind == "gemma2":
        assert value["gemma2.attn_logit_softcapping"] == config["attn_logit_softcapping"]
        assert value["gemma2.final_logit_softcapping"] == config["final_logit_softcapping"]
        assert "blk.0.post_attention_norm.weight" in names and "blk.1.post_ffw_norm.weight" in names
    if kind.startswith("gemma"):
        assert value[f"{arch}.attention.sliding_window"] == config["sliding_window"]
        assert "output.weight" not in names and value["tokenizer.ggml.add_space_prefix"] is False
    if kind == "gemma3":
        assert value["gemma3.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in config["layer_types"]]
        assert value["gemma3.rope.freq_base"] == config["rope_parameters"]["full_attention"]["rope_theta"]
        assert value["gemma3.rope.freq_base_swa"] == config["rope_parameters"]["sliding_attention"]["rope_theta"]
        assert "blk.0.attn_q_norm.weight" in names
    if kind == "phi3":
        assert {"blk.0.attn_qkv.weight", "rope_factors_long.weight", "rope_factors_short.weight"} <= names
        assert "blk.0.ffn_gate.weight" not in names
        assert value["phi3.rope.scaling.original_context_length"] == 4096
        assert value["phi3.attention.sliding_window"] == config["sliding_window"]


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_q4_k_m_generates(kind, tiny_family, tmp_path):
    from convert import write_gguf

    path = write_gguf(tiny_family(kind).chat, tmp_path / "q4.gguf", "q4_k_m")
    assert any(t.tensor_type.name == "Q4_K" for t in gguf.GGUFReader(path).tensors)
    llm = _llama(path, n_ctx=256)
    out = llm.create_completion("The capital of Taiwan is", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
    llm.close()


# Keys llama.cpp writes that we do not yet (issue 15 item 3, the format switch, adds it).
KNOWN_MISSING = {"tokenizer.ggml.add_sep_token"}


@pytest.mark.slow
@pytest.mark.skipif(LLAMA_CPP is None or not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(), reason="llama.cpp source (.build/sdist) not present")
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
@pytest.mark.parametrize("kind", NEW_KINDS)
def test_tensor_bytes_equal_llama_cpp_converter(kind, outtype, tiny_family, tmp_path):
    from convert import write_gguf

    folder = tiny_family(kind).cp
    reference = tmp_path / "reference.gguf"
    result = subprocess.run(
        [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype, "--outfile", str(reference)],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py")}, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ours_path = write_gguf(folder, tmp_path / "ours.gguf", outtype)
    ours = {t.name: t for t in gguf.GGUFReader(ours_path).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(reference).tensors}
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert np.asarray(ours[name].data).tobytes() == np.asarray(t.data).tobytes(), name
    our_fields, ref_fields = gguf.GGUFReader(ours_path).fields, gguf.GGUFReader(reference).fields
    missing = {k for k in ref_fields if not k.startswith("GGUF.") and k not in our_fields}
    assert missing <= KNOWN_MISSING, missing - KNOWN_MISSING
    for key, field in ref_fields.items():
        if key in our_fields and key != "general.name" and not key.startswith("GGUF."):
            assert our_fields[key].contents() == field.contents(), key


def test_gemma2_one_pass_merge_matches_transformers_on_the_merged_weights(tiny_family, tmp_path):
    """merge -o x.gguf on a Gemma 2 triple (norms +1 in the stream, tied output): the GGUF's logits
    are transformers' on CP + (chat - base), computed here with safetensors, with the template's
    turn markers taking the chat model's rows (--special-tokens auto)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.merge_helpers import cli

    fam = tiny_family("gemma2")
    out = tmp_path / "merged.gguf"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "-o", out, "--outtype", "f32", "--special-tokens", "auto", "--quiet")
    base, chat, cp = (load_file(str(f / "model.safetensors")) for f in (fam.base, fam.chat, fam.cp))
    merged = {n: cp[n].float() + (chat[n].float() - base[n].float()) for n in cp}
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    # The float32 merge, rounded once to f32 or (today: issue 15 item 2 removes it) first to the
    # CP's bf16; either way exactly, and with Gemma's +1 on the norms.
    up, norm = (np.asarray(tensors[g].data, dtype=np.float32) for g in ("blk.0.ffn_up.weight", "blk.0.attn_norm.weight"))
    exact_up = merged["model.layers.0.mlp.up_proj.weight"]
    via_bf16 = not np.array_equal(up.reshape(exact_up.shape), exact_up.numpy())
    if via_bf16:
        merged = {n: t.to(torch.bfloat16).float() for n, t in merged.items()}
    assert np.array_equal(up.reshape(exact_up.shape), merged["model.layers.0.mlp.up_proj.weight"].numpy())
    assert np.array_equal(norm, (merged["model.layers.0.input_layernorm.weight"] + 1).numpy()), "norm +1 missing in the merge stream"
    embd = tensors["token_embd.weight"]
    rows = np.asarray(embd.data, dtype=np.float32).reshape(-1, merged["model.embed_tokens.weight"].shape[1])
    hf = _hf_tokenizer(fam.chat)
    chat_rows = chat["model.embed_tokens.weight"].float().numpy()
    taken = {i for i in range(rows.shape[0]) if np.array_equal(rows[i], chat_rows[i])}
    turn = {hf.convert_tokens_to_ids("<start_of_turn>"), hf.convert_tokens_to_ids("<end_of_turn>")}
    assert turn <= taken <= turn | {hf.bos_token_id, hf.eos_token_id}, taken
    for i in taken:
        merged["model.embed_tokens.weight"][i] = chat["model.embed_tokens.weight"][i].float()
    model = AutoModelForCausalLM.from_pretrained(fam.cp, dtype=torch.float32).eval()
    model.load_state_dict(merged, strict=False)
    ids = hf(PROMPT).input_ids + hf.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = _gguf_logits(out, ids, f32_cache=True)
    max_abs, rel, same_top = _compare(ref, got)
    print(f"PARITY gemma2 merge f32 ({'via bf16' if via_bf16 else 'rounded once'}): max|dlogit| {max_abs:.2e} (relative {rel:.2e})")
    assert same_top.all() and max_abs < F32_ABS["gemma2"], max_abs


def test_gemma3_multimodal_checkpoint_converts_as_its_language_model(tiny_family, f32, tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint holding the tiny Gemma 3's weights (and a tiny
    SigLIP tower): the GGUF is the text model, tensor for tensor the Gemma3ForCausalLM's, the
    vision tensors skipped with a notice, and its logits are the multimodal model's on text."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
    )

    from convert import write_ggufs

    src = tiny_family("gemma3").cp
    text = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    config = Gemma3Config(text_config=AutoConfig.from_pretrained(src).to_dict(), mm_tokens_per_image=4,
                          vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                         "num_attention_heads": 2, "image_size": 32, "patch_size": 8})
    model = Gemma3ForConditionalGeneration(config).float().eval()
    model.model.language_model.load_state_dict(text.model.state_dict())
    folder = tmp_path / "gemma3-mm"
    model.to(torch.bfloat16).save_pretrained(folder)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    notices: list[str] = []
    path = write_ggufs(folder, {"f32": tmp_path / "mm.gguf"}, on_warning=notices.append)["f32"]
    assert any("vision tower" in n and "skipped" in n for n in notices), notices
    ours = {t.name: t for t in gguf.GGUFReader(path).tensors}
    plain = {t.name: t for t in gguf.GGUFReader(f32("gemma3")).tensors}
    assert ours.keys() == plain.keys()
    assert all(np.asarray(ours[n].data).tobytes() == np.asarray(t.data).tobytes() for n, t in plain.items())
    ids = _hf_tokenizer(src)(PROMPT).input_ids
    reloaded = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()  # what was saved
    with torch.no_grad():
        ref = reloaded(input_ids=torch.tensor([ids])).logits[0].numpy()
    max_abs, rel, same_top = _compare(ref, _gguf_logits(path, ids, f32_cache=True))
    print(f"PARITY gemma3-multimodal f32: max|dlogit| {max_abs:.2e} (relative {rel:.2e})")
    assert same_top.all() and max_abs < F32_ABS["gemma3"], max_abs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gemma2", "phi3"])
def test_release_carries_the_end_of_turn_token(kind, tiny_family, tmp_path):
    """release on a new family: the GGUF loads, and the Modelfile and card stop on the template's
    end-of-turn token as the HF tokenizer spells it."""
    from tests.merge_helpers import cli

    out = tmp_path / "release"
    cli("release", tiny_family(kind).chat, "-o", out, "--types", "q8_0", "--language", "en", "--quiet")
    modelfile = next(out.glob("*.Modelfile")).read_text()
    assert f'PARAMETER stop "{EOT[kind]}"' in modelfile
    assert f"`{EOT[kind]}`" in (out / "README.md").read_text()
    meta = _llama(next(out.glob("*.gguf")), vocab_only=True).metadata
    assert int(meta["tokenizer.ggml.eot_token_id"]) == _hf_tokenizer(tiny_family(kind).chat).convert_tokens_to_ids(EOT[kind])
