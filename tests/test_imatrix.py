"""``cvlocal imatrix``: the matrix equals its definition, and the file is llama.cpp's format.

Independent truth: a plain-torch Llama forward written here from the state dict (RMSNorm, rotary,
grouped-query causal attention, SiLU MLP), itself checked against transformers' logits, gives the
input of every matrix product; its sums of squares per input channel are the definition. The file
is read back with gguf-py's reader (not our reader) and its names checked against the tensors of
the model's GGUF and against the keys common/imatrix-loader.cpp looks up.
"""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
import torch

from convert.imatrix_file import read_imatrix, write_imatrix_dat
from cvlocal.imatrix.collect import compute_imatrix
from tests.imatrix_fixtures import CALIBRATION_TEXT as TEXT, CTX
from tests.merge_helpers import assert_one_line_error, cli, leftovers

CHUNKS = 3


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """HF's rotary layout: the first half of each head pairs with the second half."""
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


def manual_llama(sd: dict[str, torch.Tensor], cfg, ids: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the input of every block matrix product (GGUF names) for one window."""
    heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps, theta = cfg.rms_norm_eps, cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"]
    h = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    t = h.shape[0]
    inputs: dict[str, torch.Tensor] = {}
    mask = torch.full((t, t), float("-inf")).triu(1)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        x = _rms(h, sd[p + "input_layernorm.weight"], eps)
        for n in ("q", "k", "v"):
            inputs[f"blk.{i}.attn_{n}.weight"] = x
        q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(t, heads, hd).transpose(0, 1)
        k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(t, kv, hd).transpose(0, 1)
        v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(t, kv, hd).transpose(0, 1)
        q, k = _rotate(q, theta), _rotate(k, theta)
        k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, -1) @ v
        o = att.transpose(0, 1).reshape(t, heads * hd)
        inputs[f"blk.{i}.attn_output.weight"] = o
        h = h + o @ sd[p + "self_attn.o_proj.weight"].T
        x = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        inputs[f"blk.{i}.ffn_gate.weight"] = inputs[f"blk.{i}.ffn_up.weight"] = x
        a = torch.nn.functional.silu(x @ sd[p + "mlp.gate_proj.weight"].T) * (x @ sd[p + "mlp.up_proj.weight"].T)
        inputs[f"blk.{i}.ffn_down.weight"] = a
        h = h + a @ sd[p + "mlp.down_proj.weight"].T
    logits = _rms(h, sd["model.norm.weight"], eps) @ sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).T
    return logits, inputs


@pytest.fixture(scope="module")
def computed(tiny_family, tmp_path_factory):
    folder = tiny_family("llama2").chat
    text = tmp_path_factory.mktemp("calib") / "story.txt"
    text.write_text(TEXT, encoding="utf-8")
    result = compute_imatrix(folder, text_files=[text], ctx=CTX, chunks=CHUNKS)
    return folder, text, result


def test_matrix_equals_the_definition_on_a_real_model(computed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _, result = computed
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    sd = {k: v.float() for k, v in model.state_dict().items()}
    ids = tok(TEXT)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) >= CHUNKS * CTX
    # llama-imatrix's windows: consecutive ctx tokens, the first replaced by BOS
    windows = [[tok.bos_token_id] + ids[i * CTX + 1:(i + 1) * CTX] for i in range(CHUNKS)]
    assert result.windows.windows == windows
    want: dict[str, torch.Tensor] = {}
    for w in windows:
        logits, inputs = manual_llama(sd, model.config, w)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([w])).logits[0]
        assert torch.allclose(logits, ref, atol=1e-4, rtol=1e-4)  # the manual forward is transformers' model
        for name, x in inputs.items():
            want[name] = want.get(name, 0) + (x.double() ** 2).sum(0)
    matrix = result.matrix
    assert sorted(matrix.sums) == sorted(want)  # every block matrix, not the embedding or the head
    assert len(want) == 7 * model.config.num_hidden_layers
    for name, expected in want.items():
        got = matrix.sums[name].reshape(-1).astype(np.float64)
        np.testing.assert_allclose(got, expected.numpy(), rtol=2e-5, atol=1e-6)
        assert matrix.counts[name].tolist() == [CHUNKS * CTX]
    assert (matrix.chunk_count, matrix.chunk_size) == (CHUNKS, CTX)


def test_file_is_llama_cpp_format_with_the_model_tensor_names(computed, tiny_gguf, tmp_path):
    folder, text, result = computed
    out = tmp_path / "imatrix.gguf"
    proc = cli("imatrix", folder, "-o", out, "--text", text, "--ctx", CTX, "--chunks", CHUNKS, "--device", "cpu", "--json")
    assert out.is_file() and '"tokens_per_second"' in proc.stdout
    reader = gguf.GGUFReader(out)
    f = reader.fields
    # the keys common/imatrix-loader.cpp and tools/imatrix/imatrix.cpp use
    assert bytes(f["general.type"].parts[-1]).decode() == "imatrix"
    assert f["imatrix.datasets"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert [bytes(f["imatrix.datasets"].parts[i]).decode() for i in f["imatrix.datasets"].data] == [str(text)]
    assert f["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32] and int(f["imatrix.chunk_count"].parts[-1][0]) == CHUNKS
    assert f["imatrix.chunk_size"].types == [gguf.GGUFValueType.UINT32] and int(f["imatrix.chunk_size"].parts[-1][0]) == CTX
    model = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(tiny_gguf("llama2", "f16")).tensors}
    tensors = {t.name: t for t in reader.tensors}
    weights = {n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2")}
    assert weights == {n for n, s in model.items() if n.startswith("blk.") and len(s) == 2}
    for name in weights:
        sums, counts = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        assert sums.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(d) for d in sums.shape] == [model[name][0], 1] and [int(d) for d in counts.shape] == [1, 1]
        np.testing.assert_array_equal(np.asarray(sums.data).reshape(-1), result.matrix.sums[name].reshape(-1))
        assert float(np.asarray(counts.data).reshape(-1)[0]) == CHUNKS * CTX


def test_legacy_dat_layout(computed, tmp_path):
    """save_imatrix_legacy: n, then per entry len, name, ncall, nval, (sum/count)*ncall; chunks, dataset."""
    _, _, result = computed
    m = result.matrix
    out = tmp_path / "imatrix.dat"
    write_imatrix_dat(m, out)
    data, pos = out.read_bytes(), 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    (n,) = take("<i")
    assert n == len(m.sums)
    for _ in range(n):
        (length,) = take("<i")
        name = take(f"<{length}s")[0].decode()
        ncall, nval = take("<ii")
        assert ncall == CHUNKS and nval == m.sums[name].size
        values = np.array(take(f"<{nval}f"))
        np.testing.assert_allclose(values, m.sums[name].reshape(-1) / (CHUNKS * CTX) * CHUNKS, rtol=1e-6)
    assert take("<i") == (CHUNKS,)
    assert take("<i")[0] == len(m.datasets[-1].encode())
    back = read_imatrix(out)
    for name, v in m.quantizer_data().items():
        np.testing.assert_allclose(back.quantizer_data()[name], v, rtol=1e-6)


def test_default_calibration_is_heldout_text_of_the_model_languages(tiny_family, monkeypatch):
    from cvlocal.imatrix import calibration

    heldout = calibration.load_heldout()
    # a tokenizer with multi-character tokens for Han script (Traditional better than Simplified)
    def encode(text: str) -> list[int]:
        han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
        trad = "zh-Hant" if text == heldout["zh-Hant"] else None
        return [0] * int(len(text) - han + han * (0.4 if trad else 0.6 if han else 2.0))
    langs = calibration.default_languages(encode)
    assert langs[0] == "zh-Hant" and langs[-1] == "en" and "zh-Hans" not in langs
    # a byte-level tokenizer that never saw the script: English only
    assert calibration.default_languages(lambda t: [0] * len(t.encode("utf-8"))) == ["en"]
    texts = calibration.heldout_texts(["zh-Hant", "en"])
    assert [t.dataset for t in texts] == ["heldout/zh-Hant.txt", "heldout/en.txt"] and texts[0].text == heldout["zh-Hant"]


def test_windows_interleave_texts_and_drop_remainders():
    from cvlocal.imatrix.collect import cut_windows

    w = cut_windows({"a": list(range(10)), "b": list(range(100, 107))}, 3, None, bos=-1)
    assert w.windows == [[-1, 1, 2], [-1, 101, 102], [-1, 4, 5], [-1, 104, 105], [-1, 7, 8]]
    assert cut_windows({"a": list(range(10))}, 3, 2, bos=None).windows == [[0, 1, 2], [3, 4, 5]]


def test_bad_calibration_input_is_one_line(tiny_family, tmp_path):
    folder = tiny_family("llama2").chat
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("a few words", encoding="utf-8")
    cases = {
        "empty text": ([folder, "--text", empty], ("empty.txt", "empty")),
        "text too short": ([folder, "--text", short, "--ctx", "512"], ("too short",)),
        "unknown language": ([folder, "--lang", "xx"], ("xx",)),
        "ctx too small": ([folder, "--text", short, "--ctx", "4"], ("--ctx",)),
        "missing model": ([tmp_path / "nope", "--text", short], ("nope", "not found")),
    }
    proc = cli("imatrix", folder, "--text", short, "-o", short, "--force", check=False)  # never over an input
    assert_one_line_error(proc, "input")
    assert short.read_text(encoding="utf-8") == "a few words"
    proc = cli("imatrix", folder, "-o", folder / "imatrix.gguf", check=False)
    assert_one_line_error(proc, "input")
    assert not (folder / "imatrix.gguf").exists()
    for label, (args, needles) in cases.items():
        out = tmp_path / f"{label.replace(' ', '-')}.gguf"
        proc = cli("imatrix", *args, "-o", out, check=False)  # in-process: no interpreter start per case
        assert_one_line_error(proc, *needles)
        assert not leftovers(tmp_path, out.name), label



def test_gguf_model_gives_the_matrix_of_its_hf_folder(computed, tiny_gguf, tmp_path):
    """A GGUF MODEL (transformers' GGUF loader): f32 gives the HF folder's matrix; q8_0 is handled too.

    Truth for f32: the folder's own matrix, itself checked against the definition above. A q8_0 file
    is de-quantized, so its activations (and matrix) differ slightly: close, not equal. The run is
    silent under --quiet (transformers' loader draws its own tqdm bar, which must not leak).
    """
    _, text, result = computed
    f32 = tiny_gguf("llama2", "f32")
    q8 = tmp_path / "chat-q8_0.gguf"
    cli("quantize", f32, "-o", q8, "--type", "q8_0", "--quiet")
    for source, exact in ((f32, True), (q8, False)):
        out = tmp_path / f"{source.stem}.imatrix.gguf"
        proc = cli("imatrix", source, "--text", text, "--ctx", CTX, "--chunks", CHUNKS, "-o", out, "--quiet")
        assert proc.stderr == "", proc.stderr
        got = read_imatrix(out)
        assert sorted(got.sums) == sorted(result.matrix.sums)
        for name, want in result.matrix.sums.items():
            g, w = got.sums[name].reshape(-1).astype(np.float64), want.reshape(-1).astype(np.float64)
            if exact:
                np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=name)
            else:  # q8_0 weights: same channels weigh most, within a few percent
                assert np.corrcoef(g, w)[0, 1] > 0.99 and np.median(np.abs(g - w) / w) < 0.05, name
            assert got.counts[name].tolist() == [CHUNKS * CTX]
