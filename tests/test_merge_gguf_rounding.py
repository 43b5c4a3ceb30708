"""A one-pass merge to GGUF is rounded once, to the output type, against exact arithmetic.

``merge CP -o x.gguf --outtype f32|f16``: every GGUF weight must be ``W_cp + r*(W_chat - W_base)``
computed from the bf16 checkpoints in float32 (the merge's arithmetic, to the bit: the plain torch
expression) and rounded once to f32 / f16, and within half an f16 step of the float64 value. A
merge that first rounds to the CP's bf16 and then converts is off by up to a bf16 step (2^-9
relative) on most weights. The merge's chunks are made small so that every tensor (the
embedding, the rotary-permuted Q/K projections) reaches the converter in several row pieces.
"""
from __future__ import annotations

import functools

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cvlocal.vector import merge as merge_module
from cvlocal.vector.merge import merge_models
from cvlocal.vector.pipeline import plan_chunks
from tests.factory import HEADS, KV_HEADS

RATIO = 0.7
# HF name -> GGUF name of tensors stored as they are (Q/K are permuted: checked through the inverse).
DIRECT = {
    "model.embed_tokens.weight": "token_embd.weight",
    "lm_head.weight": "output.weight",
    "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
    "model.layers.1.self_attn.v_proj.weight": "blk.1.attn_v.weight",
    "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
}
PERMUTED = {"model.layers.0.self_attn.q_proj.weight": ("blk.0.attn_q.weight", HEADS),
            "model.layers.1.self_attn.k_proj.weight": ("blk.1.attn_k.weight", KV_HEADS)}


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _unpermute(values: np.ndarray, heads: int) -> np.ndarray:
    """GGML's interleaved rotary pairs back to HF's halves: rows (x0, y0, x1, y1, ...) -> (x0, x1, ..., y0, y1, ...)."""
    rows, cols = values.shape
    return values.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


@pytest.fixture(scope="module")
def merged(tiny_family, tmp_path_factory):
    family = tiny_family("llama3")
    out = tmp_path_factory.mktemp("merge-gguf-rounding")
    small_chunks = functools.partial(plan_chunks, chunk_elements=5000)  # ~20 rows of 256: many pieces per tensor
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(merge_module, "plan_chunks", small_chunks)
        paths = {t: out / f"merged-{t}.gguf" for t in ("f32", "f16")}
        for outtype, path in paths.items():
            merge_models(family.cp, path, base=family.base, chat=family.chat, ratio=RATIO, outtype=outtype, quiet=True,
                             special_tokens="none")  # the arithmetic alone (no rows copied from the chat model)
    cp, chat, base = (_weights(f) for f in (family.cp, family.chat, family.base))
    exact32 = {n: cp[n].float() + RATIO * (chat[n].float() - base[n].float()) for n in [*DIRECT, *PERMUTED] if n in cp}
    exact64 = {n: (cp[n].double() + RATIO * (chat[n].double() - base[n].double()),
                   cp[n].double().abs() + (RATIO * (chat[n].double() - base[n].double())).abs()) for n in exact32}
    return paths, exact32, exact64


def _float32_error(magnitude: torch.Tensor) -> np.ndarray:
    """Bound of the float32 arithmetic's own error (two roundings, of r*d and of the sum)."""
    return (magnitude * 2.0**-23).numpy() + 1e-30


def _tensors(path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}


def _stored(tensors: dict[str, np.ndarray], hf_name: str) -> np.ndarray:
    if hf_name in PERMUTED:
        gguf_name, heads = PERMUTED[hf_name]
        return _unpermute(tensors[gguf_name], heads)
    return tensors[DIRECT[hf_name]]


def test_f32_gguf_of_a_merge_is_the_float32_result(merged):
    paths, exact32, exact64 = merged
    tensors = _tensors(paths["f32"])
    for name, expected in exact32.items():
        got = _stored(tensors, name)
        assert got.dtype == np.float32, name
        assert np.array_equal(got, expected.numpy()), name
        exact, magnitude = exact64[name]  # and the float32 arithmetic is the float64 value to float32 precision
        assert np.all(np.abs(got.astype(np.float64) - exact.numpy()) <= _float32_error(magnitude)), name


def test_f16_gguf_of_a_merge_is_rounded_once_to_f16(merged):
    paths, exact32, exact64 = merged
    tensors = _tensors(paths["f16"])
    for name, expected in exact32.items():
        got = _stored(tensors, name)
        want = expected.numpy().astype(np.float32 if got.dtype == np.float32 else np.float16)
        assert got.dtype == want.dtype, name
        assert np.array_equal(got, want), name
        if got.dtype == np.float16:  # within half an f16 step (plus the float32 step) of the exact value
            exact, magnitude = exact64[name]
            step = np.spacing(np.abs(got)).astype(np.float64)  # the f16 step at the stored value
            assert np.all(np.abs(got.astype(np.float64) - exact.numpy()) <= 0.5 * step + _float32_error(magnitude)), name
