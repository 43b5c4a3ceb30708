"""The merge arithmetic against plain torch on the tiny families (independent truth: torch + safetensors)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.merge_helpers import cli, load_folder


def expected(fam, terms, dtype=None):
    """cp + sum(r * (chat - base)) in float32, as a user would write it with torch."""
    cp, out = load_folder(fam.cp), {}
    vectors = [(load_folder(fam.base), load_folder(fam.chat), r) for r in terms]
    for name, t in cp.items():
        acc = t.float()
        for base, chat, r in vectors:
            acc = acc + r * (chat[name].float() - base[name].float())
        out[name] = acc if dtype is None else acc.to(dtype)
    return out


@pytest.mark.parametrize("kind,ratio", [("llama3", 1.0), ("qwen2", 0.7), ("mistral", -0.5)])
def test_one_shot_float32_is_bit_exact(tiny_family, tmp_path, kind, ratio):
    fam = tiny_family(kind)
    out = tmp_path / "merged"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", ratio, "--dtype", "float32", "--special-tokens", "none", "-o", out, "--quiet")
    got, want = load_folder(out), expected(fam, [ratio])
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], want[name]), name


def test_bf16_output_is_float32_result_rounded_once(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    out = tmp_path / "merged"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", "0.9", "--special-tokens", "none", "-o", out, "--quiet")
    got, want = load_folder(out), expected(fam, [0.9], torch.bfloat16)
    for name in want:
        assert got[name].dtype == torch.bfloat16
        assert torch.equal(got[name], want[name]), name
    assert json.loads((out / "config.json").read_text()).get("torch_dtype", json.loads((out / "config.json").read_text()).get("dtype")) == "bfloat16"


def test_vector_path_equals_one_shot_and_several_vectors_add_up(tiny_family, tmp_path):
    fam = tiny_family("llama3")
    vec = tmp_path / "vector"
    cli("extract", fam.base, fam.chat, "-o", vec, "--dtype", "float32", "--quiet")
    stored = load_folder(vec)
    base, chat = load_folder(fam.base), load_folder(fam.chat)
    for name, v in stored.items():  # the vector itself: chat - base, exact in float32
        assert torch.equal(v, chat[name].float() - base[name].float()), name
    manifest = json.loads((vec / "chat_vector.json").read_text())
    assert manifest["architecture"] == "LlamaForCausalLM" and "<|eot_id|>" in manifest["chat_template"]

    one_shot, via_vector = tmp_path / "one", tmp_path / "two"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", "0.8", "--dtype", "float32", "--special-tokens", "none", "-o", one_shot, "--quiet")
    cli("merge", fam.cp, "--vector", f"{vec}:0.8", "--dtype", "float32", "--special-tokens", "none", "-o", via_vector, "--quiet")
    a, b = load_folder(one_shot), load_folder(via_vector)
    assert all(torch.equal(a[n], b[n]) for n in a)

    several = tmp_path / "several"
    cli("merge", fam.cp, "--vector", f"{vec}:0.5", "--vector", f"{vec}:-1.25", "--dtype", "float32", "--special-tokens", "none", "-o", several, "--quiet")
    got, want = load_folder(several), expected(fam, [0.5, -1.25])
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_bf16_vector_is_rounded_once(tiny_family, tmp_path):
    fam = tiny_family("qwen3")
    vec = tmp_path / "vector"
    cli("extract", fam.base, fam.chat, "-o", vec, "--quiet")
    base, chat, stored = load_folder(fam.base), load_folder(fam.chat), load_folder(vec)
    for name, v in stored.items():
        assert v.dtype == torch.bfloat16
        assert torch.equal(v, (chat[name].float() - base[name].float()).to(torch.bfloat16)), name


def test_tied_embeddings_have_no_lm_head(tiny_family, tmp_path):
    fam = tiny_family("qwen2")
    out = tmp_path / "merged"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "-o", out, "--quiet")
    got = load_folder(out)
    assert "lm_head.weight" not in got and "model.embed_tokens.weight" in got
    assert any(n.endswith("q_proj.bias") for n in got)


def test_extended_vocabulary_overlap_and_skip(tiny_family, tmp_path):
    fam, ext = tiny_family("llama3"), tiny_family("llama3", extended=True)
    base, chat, cp = load_folder(fam.base), load_folder(fam.chat), load_folder(ext.cp)
    rows = base["model.embed_tokens.weight"].shape[0]
    assert cp["model.embed_tokens.weight"].shape[0] > rows

    out = tmp_path / "overlap"
    proc = cli("merge", ext.cp, "--base", fam.base, "--chat", fam.chat, "--special-tokens", "none", "--dtype", "float32", "-o", out)
    assert "overlap" in proc.stderr
    got = load_folder(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        want_shared = cp[name][:rows].float() + (chat[name].float() - base[name].float())
        assert torch.equal(got[name][:rows], want_shared)
        assert torch.equal(got[name][rows:], cp[name][rows:].float())

    skipped = tmp_path / "skip"
    cli("merge", ext.cp, "--base", fam.base, "--chat", fam.chat, "--embeddings", "skip", "--special-tokens", "none", "-o", skipped, "--quiet")
    got = load_folder(skipped)
    assert torch.equal(got["model.embed_tokens.weight"], cp["model.embed_tokens.weight"])
    layer = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(got[layer], (cp[layer].float() + chat[layer].float() - base[layer].float()).to(torch.bfloat16))


def test_overlap_refuses_a_vocabulary_that_is_not_an_extension(tiny_family, tmp_path):
    fam = tiny_family("llama3")
    ext = tiny_family("llama3", extended=True)
    cp = tmp_path / "cp"
    shutil.copytree(ext.cp, cp)
    tok = json.loads((cp / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    a, b = by_id[300], by_id[301]
    vocab[a], vocab[b] = 301, 300  # two ids now name other tokens
    (cp / "tokenizer.json").write_text(json.dumps(tok))
    proc = cli("merge", cp, "--base", fam.base, "--chat", fam.chat, "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "id 300" in proc.stderr and "--embeddings skip" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_special_tokens_take_the_chat_rows(tiny_family, tmp_path):
    fam = tiny_family("llama3")
    out = tmp_path / "merged"
    proc = cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", "0.5", "-o", out, "--json")
    summary = json.loads(proc.stdout)
    texts = {t["text"] for t in summary["special_tokens"]}
    assert {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= texts
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fam.chat))
    got, chat = load_folder(out), load_folder(fam.chat)
    for text in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        i = tok.convert_tokens_to_ids(text)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(got[name][i], chat[name][i]), (text, name)

    manual = tmp_path / "manual"
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    hdr = tok.convert_tokens_to_ids("<|start_header_id|>")
    proc = cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", "0.5", "--special-tokens", f"{eot}={eot}", "-o", manual, "--json")
    assert [t["cp_id"] for t in json.loads(proc.stdout)["special_tokens"]] == [eot]
    got = load_folder(manual)
    assert torch.equal(got["model.embed_tokens.weight"][eot], chat["model.embed_tokens.weight"][eot])
    assert not torch.equal(got["model.embed_tokens.weight"][hdr], chat["model.embed_tokens.weight"][hdr])


def test_special_rows_from_a_vector_folder(tiny_family, tmp_path):
    fam = tiny_family("qwen2")
    vec = tmp_path / "vector"
    cli("extract", fam.base, fam.chat, "-o", vec, "--quiet")
    out = tmp_path / "merged"
    cli("merge", fam.cp, "--vector", f"{vec}:0.3", "-o", out, "--quiet")
    from transformers import AutoTokenizer

    i = AutoTokenizer.from_pretrained(str(fam.chat)).convert_tokens_to_ids("<|im_end|>")
    got, chat = load_folder(out), load_folder(fam.chat)
    assert torch.equal(got["model.embed_tokens.weight"][i], chat["model.embed_tokens.weight"][i])


def test_sharded_output_then_sharded_input(tiny_family, tmp_path):
    fam = tiny_family("mistral")
    sharded = tmp_path / "sharded"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--shard-size", "600KB", "--special-tokens", "none", "-o", sharded, "--quiet")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) >= 3 and all((sharded / f).is_file() for f in files)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in load_folder(sharded).values())
    # the sharded folder as the CP input of a second merge (ratio 0: the CP passes through)
    again = tmp_path / "again"
    cli("merge", sharded, "--base", fam.base, "--chat", fam.chat, "--ratio", "0", "--special-tokens", "none", "-o", again, "--quiet")
    a, b = load_folder(sharded), load_folder(again)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_bin_input_gives_the_same_result(tiny_family, tmp_path):
    fam = tiny_family("llama2")
    cp_bin = tmp_path / "cp-bin"
    shutil.copytree(fam.cp, cp_bin)
    torch.save(load_folder(fam.cp), cp_bin / "pytorch_model.bin")
    (cp_bin / "model.safetensors").unlink()
    a, b = tmp_path / "a", tmp_path / "b"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--special-tokens", "none", "-o", a, "--quiet")
    cli("merge", cp_bin, "--base", fam.base, "--chat", fam.chat, "--special-tokens", "none", "-o", b, "--quiet")
    x, y = load_folder(a), load_folder(b)
    assert all(torch.equal(x[n], y[n]) for n in x)


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_merged_folder_loads_and_chats_in_transformers(tiny_family, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fam = tiny_family(kind)
    out = tmp_path / "merged"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "-o", out, "--quiet")
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    chat_tok = AutoTokenizer.from_pretrained(str(fam.chat))
    conversation = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "Hello, 今天好嗎?"}]
    ids = tok.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == chat_tok.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"]
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 5 or generated[0, -1].item() in model.generation_config.eos_token_id
    chat_gen = json.loads((fam.chat / "generation_config.json").read_text())
    assert model.generation_config.eos_token_id == chat_gen["eos_token_id"]
    card = (out / "README.md").read_text()
    assert str(fam.cp) in card and "fingerprint" in card
    recipe = json.loads((out / "cvlocal_recipe.json").read_text())
    assert recipe["vectors"][0]["ratio"] == 1.0 and len(recipe["cp"]["fingerprint"]) == 16


@pytest.mark.parametrize("kind,outtype", [("llama3", "q8_0"), ("qwen2", "f16")])
def test_one_pass_gguf_equals_converting_the_merged_folder(tiny_family, tmp_path, kind, outtype):
    """merge -o x.gguf streams into the converter; its tensors must be those of merge-then-convert.

    The one pass rounds the float32 result once, to the output type, so the two-step route that
    gives the same bytes keeps the merged folder in float32 (--dtype float32)."""
    from gguf import GGUFReader

    fam = tiny_family(kind)
    folder, one_pass, two_step = tmp_path / "merged", tmp_path / "one.gguf", tmp_path / "two.gguf"
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", "0.6", "-o", folder, "--dtype", "float32", "--quiet")
    cli("convert", folder, "-o", two_step, "--outtype", outtype, "--quiet")
    cli("merge", fam.cp, "--base", fam.base, "--chat", fam.chat, "--ratio", "0.6", "-o", one_pass, "--outtype", outtype, "--quiet")
    a, b = GGUFReader(str(one_pass)), GGUFReader(str(two_step))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(ta) == set(tb) and len(ta) > 10
    for name in ta:
        assert ta[name].tensor_type == tb[name].tensor_type, name
        assert bytes(ta[name].data.tobytes()) == bytes(tb[name].data.tobytes()), name
    recipe = json.loads(bytes(a.fields["cvlocal.recipe"].parts[-1]).decode())
    assert recipe["vectors"][0]["ratio"] == 0.6
    assert "chat_template" in "".join(a.fields) or "tokenizer.chat_template" in a.fields
