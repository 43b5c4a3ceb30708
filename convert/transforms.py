"""The one catalogue of named transforms an architecture table may list.

Why a catalogue: what makes a family different from Llama on the way to GGUF is a handful of
small, well-defined changes (a row permutation, a ``+1`` on norm weights, a generated rope
table). Naming them here, each a small tested function, keeps the converter's main loop free of
family names: a table lists ``("norm.weight", "norm_plus_one")`` and the loop applies whatever
the catalogue maps that name to.

Two kinds:

- ``TENSOR_TRANSFORMS``: applied to one source tensor, just before it is encoded. Each takes the
  tensor and config.json and returns the tensor llama.cpp expects. ``linear`` says whether the
  transform commutes with a difference (``f(a) - f(b) == f(a - b)``), which is what lets a chat
  vector be applied in GGUF layout (``permute_q``: yes; ``norm_plus_one``: no, its delta is the
  plain difference, see ``delta_transform``).
- ``GENERATED``: tensors with no source in the checkpoint, computed from config.json (llama3's
  ``rope_freqs``, LongRoPE's ``rope_factors_long``/``rope_factors_short``). Each returns a list of
  (GGUF name, float32 tensor), empty when the config does not use the feature.

Formulas follow llama.cpp's converter (convert_hf_to_gguf.py and its conversion/ modules) and
what its loader reads (src/llama-model.cpp, src/models/*.cpp); no code is copied.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch

from convert.errors import ConvertError

Config = Mapping[str, Any]


@dataclass(frozen=True)
class TensorTransform:
    """A named change to one source tensor."""

    name: str
    apply: Callable[[torch.Tensor, Config], torch.Tensor]
    linear: bool  # f(a) - f(b) == f(a - b): a weight difference is transformed alike


@dataclass(frozen=True)
class Generated:
    """A named producer of tensors that the checkpoint does not hold."""

    name: str
    tensors: Callable[[Config], list[tuple[str, torch.Tensor]]]


# --------------------------------------------------------------------------- rotary permutation


def rotary_heads(which: str, config: Config, where: object) -> int:
    """Heads of a permuted tensor: num_attention_heads for Q, num_key_value_heads for K."""
    n_head = config.get("num_attention_heads")
    n_kv = config.get("num_key_value_heads") or n_head
    heads = n_head if which == "q" else n_kv
    if not isinstance(heads, int) or heads <= 0:
        raise ConvertError("missing num_attention_heads", Path(str(where)) / "config.json" if where else None, "Add it to config.json.")
    return heads


def permute_rotary(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q/K rows from HF's rotary halves to GGML's interleaved pairs.

    Within each head HF keeps the rotated dimensions as [x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}];
    llama.cpp's ``llama`` rope expects [x_0, y_0, x_1, y_1, ...]. Viewing the head's rows as a
    (2, d/2) grid and transposing it does exactly that.
    """
    rows = tensor.shape[0]
    head = rows // n_heads
    rest = tensor.shape[1:]
    return tensor.reshape(n_heads, 2, head // 2, *rest).transpose(1, 2).reshape(rows, *rest).contiguous()


def permute_q(tensor: torch.Tensor, config: Config) -> torch.Tensor:
    """Q projection (weight or bias) to GGML's rotary layout, with num_attention_heads."""
    return permute_rotary(tensor, rotary_heads("q", config, None))


def permute_k(tensor: torch.Tensor, config: Config) -> torch.Tensor:
    """K projection (weight or bias) to GGML's rotary layout, with num_key_value_heads."""
    return permute_rotary(tensor, rotary_heads("k", config, None))


# --------------------------------------------------------------------------- values


def norm_plus_one(tensor: torch.Tensor, config: Config) -> torch.Tensor:
    """Gemma's RMSNorm multiplies by ``1 + w``; llama.cpp multiplies by its stored weight, so it
    stores ``w + 1``. Added in float32 (then rounded once, to the output type), as llama.cpp's
    converter does on its float32 copy of the tensor."""
    return tensor.to(torch.float32) + 1


def keep_fused(tensor: torch.Tensor, config: Config) -> torch.Tensor:
    """A fused projection (Phi-3's ``qkv_proj`` [q; k; v] rows, ``gate_up_proj`` [gate; up] rows)
    is what llama.cpp's ``phi3`` loader reads as ``attn_qkv`` / ``ffn_up``: kept as it is."""
    return tensor


TENSOR_TRANSFORMS: dict[str, TensorTransform] = {
    t.name: t
    for t in (
        TensorTransform("permute_q", permute_q, linear=True),
        TensorTransform("permute_k", permute_k, linear=True),
        TensorTransform("norm_plus_one", norm_plus_one, linear=False),
        TensorTransform("keep_fused", keep_fused, linear=True),
    )
}


def apply_transforms(names: tuple[str, ...], tensor: torch.Tensor, config: Config) -> torch.Tensor:
    """``tensor`` through the named transforms, in order."""
    for name in names:
        tensor = TENSOR_TRANSFORMS[name].apply(tensor, config)
    return tensor


def delta_transform(names: tuple[str, ...], delta: torch.Tensor, config: Config) -> torch.Tensor:
    """A weight *difference* in GGUF layout: the linear transforms applied, affine ones dropped
    (``(w_a + 1) - (w_b + 1) == w_a - w_b``)."""
    return apply_transforms(tuple(n for n in names if TENSOR_TRANSFORMS[n].linear), delta, config)


# --------------------------------------------------------------------------- generated tensors


def rope_parameters(config: Config) -> dict[str, Any]:
    """RoPE settings of the full-attention layers, from either config layout.

    transformers 5 writes ``rope_parameters`` (per layer type for Gemma 3: ``full_attention`` and
    ``sliding_attention``); Hub checkpoints write ``rope_scaling`` plus ``rope_theta``.
    """
    raw = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(raw, Mapping):
        raw = {}
    if "full_attention" in raw and isinstance(raw["full_attention"], Mapping):
        raw = raw["full_attention"]
    params = dict(raw)
    if "rope_theta" not in params and config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    if "rope_type" not in params and params.get("type") is not None:
        params["rope_type"] = params["type"]
    if "original_max_position_embeddings" not in params and config.get("original_max_position_embeddings") is not None:
        params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
    return params


def head_dim(config: Config) -> int:
    """Per-head size: ``head_dim`` when given, else hidden_size / num_attention_heads."""
    if config.get("head_dim") is not None:
        return int(config["head_dim"])
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def rope_dimensions(config: Config) -> int:
    """Rotated dimensions per head (``partial_rotary_factor`` of the head, all by default)."""
    factor = config.get("partial_rotary_factor") or rope_parameters(config).get("partial_rotary_factor") or 1.0
    return int(float(factor) * int(config["hidden_size"])) // int(config["num_attention_heads"])


def llama3_rope_freqs(config: Config) -> list[tuple[str, torch.Tensor]]:
    """The ``rope_freqs.weight`` factors for llama3 rope scaling (none when not used).

    For each rotary frequency: wavelengths shorter than ``original / high_freq_factor`` keep
    factor 1, longer than ``original / low_freq_factor`` get ``factor``, and those between are
    smoothly interpolated. Computed in float32 with the same expressions as llama.cpp, so that
    the bytes match.
    """
    rope = rope_parameters(config)
    if str(rope.get("rope_type") or "").lower() != "llama3":
        return []
    base = rope.get("rope_theta", 10000.0)
    dim = head_dim(config)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    between = 1 / ((1 - smooth) / factor + smooth)
    longer = torch.full_like(wavelen, float(factor))
    factors = torch.where(wavelen > old_context_len / low_freq_factor, longer, between)
    table = torch.where(wavelen < old_context_len / high_freq_factor, torch.ones_like(wavelen), factors).to(torch.float32)
    return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", table)]


def rope_factors(config: Config) -> list[tuple[str, torch.Tensor]]:
    """LongRoPE's per-frequency factors (Phi-3 128k): ``rope_factors_long`` / ``rope_factors_short``.

    None for a model without ``long_factor`` (the 4k variants). Each list must hold one factor per
    rotated pair, which llama.cpp's loader checks (``n_rot / 2``); a wrong length is refused here.
    """
    rope = rope_parameters(config)
    long, short = rope.get("long_factor"), rope.get("short_factor")
    if not long:
        return []
    pairs = rope_dimensions(config) // 2
    if not short or len(long) != pairs or len(short) != pairs:
        raise ConvertError(
            f"LongRoPE needs long_factor and short_factor of {pairs} values each "
            f"(got {len(long)} and {len(short or [])})", "config.json", "Fix rope_scaling in config.json.",
        )
    return [
        (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", torch.tensor(long, dtype=torch.float32)),
        (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", torch.tensor(short, dtype=torch.float32)),
    ]


GENERATED: dict[str, Generated] = {
    g.name: g for g in (Generated("llama3_rope_freqs", llama3_rope_freqs), Generated("rope_factors", rope_factors))
}
