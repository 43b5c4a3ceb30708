"""Hyper-parameter metadata from config.json, and the llama3 ``rope_freqs`` tensor.

The keys, their types and when they are written follow llama.cpp's converter and loader:
block count, context length, embedding and feed-forward lengths, head counts, RMS epsilon, key
and value lengths when config.json names ``head_dim``, rope base and scaling; for llama.cpp's
``llama`` architecture also ``vocab_size`` and ``rope.dimension_count``.

RoPE settings come from ``rope_parameters`` (transformers 5) or ``rope_scaling`` plus
``rope_theta`` (the Hub layout). ``linear`` and ``yarn`` scaling become ``rope.scaling.*`` keys;
``llama3`` scaling has no key in llama.cpp: it is a per-frequency factor table stored as the
``rope_freqs.weight`` tensor, computed here exactly as llama.cpp's converter does (float32 torch
arithmetic, same expressions) so that the bytes match.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
from gguf import Keys

from convert.architectures import Architecture
from convert.errors import ConvertError
from convert.gguf_keys import key_type


def rope_parameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE settings merged from either config layout: rope_theta, rope_type and scaling fields."""
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


def head_dim(config: Mapping[str, Any]) -> int:
    """Per-head size: ``head_dim`` when given, else hidden_size / num_attention_heads."""
    if config.get("head_dim") is not None:
        return int(config["head_dim"])
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def _number(config: Mapping[str, Any], keys: tuple[str, ...], required: bool, config_path: Path) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConvertError(f"{key} is {value!r}, not a number", config_path, "Fix config.json.")
            return value
    if required:
        raise ConvertError(f"missing {keys[0]}", config_path, "Add it to config.json (see the model's original config).")
    return None


def gguf_hparams(arch: Architecture, config: Mapping[str, Any], config_path: Path, warnings: list[str] | None = None) -> dict[str, Any]:
    """The ``{arch}.*`` metadata for ``config``: GGUF key -> value (types from KEY_TYPES).

    Settings llama.cpp cannot represent but that only matter beyond the trained context (dynamic
    NTK rope scaling, Mistral's sliding window) are appended to ``warnings`` instead of failing.
    """
    warnings = warnings if warnings is not None else []
    name = arch.gguf_arch
    out: dict[str, Any] = {}
    for key, sources, required in arch.hparams:
        value = _number(config, sources, required, config_path)
        if value is not None:
            vtype = key_type(key.format(arch=name), name)
            out[key.format(arch=name)] = float(value) if vtype is not None and vtype.name.startswith("FLOAT") else int(value)

    rope = rope_parameters(config)
    rope_type = str(rope.get("rope_type") or "").lower()
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        out[Keys.Rope.SCALING_TYPE.format(arch=name)] = "linear"
        out[Keys.Rope.SCALING_FACTOR.format(arch=name)] = float(factor)
    elif rope_type == "yarn" and factor is not None:
        out[Keys.Rope.SCALING_TYPE.format(arch=name)] = "yarn"
        out[Keys.Rope.SCALING_FACTOR.format(arch=name)] = float(factor)
        orig = rope.get("original_max_position_embeddings")
        if orig is None:
            raise ConvertError("yarn rope scaling without original_max_position_embeddings", config_path, "Add it to the rope settings in config.json.")
        out[Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=name)] = int(orig)
        for field, key in (("extrapolation_factor", Keys.Rope.SCALING_YARN_EXT_FACTOR), ("beta_fast", Keys.Rope.SCALING_YARN_BETA_FAST), ("beta_slow", Keys.Rope.SCALING_YARN_BETA_SLOW)):
            if rope.get(field) is not None:
                out[key.format(arch=name)] = float(rope[field])
        attn = rope.get("attention_factor", rope.get("attn_factor"))
        if attn is not None:
            out[Keys.Rope.SCALING_YARN_ATTN_FACTOR.format(arch=name)] = float(attn)
    elif rope_type == "llama3" and not arch.llama3_rope_freqs:
        raise ConvertError(f"llama3 rope scaling is not supported for {arch.family}", config_path, "Remove it from config.json or use a supported model.")
    elif rope_type == "dynamic":
        warnings.append(f"{config_path}: dynamic rope scaling has no llama.cpp equivalent; contexts beyond max_position_embeddings will differ")
    elif rope_type not in ("", "default", "llama3"):
        raise ConvertError(f"rope scaling type {rope_type!r} is not supported", config_path, "Supported: linear, yarn, llama3 (and dynamic, ignored).")
    if rope.get("rope_theta") is not None:
        out[Keys.Rope.FREQ_BASE.format(arch=name)] = float(rope["rope_theta"])
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", True)
    if isinstance(window, int) and uses_window and window < int(config.get("max_position_embeddings") or 0):
        warnings.append(f"{config_path}: llama.cpp runs {arch.family} without its {window}-token sliding window; prompts longer than that attend to all tokens")

    if config.get("head_dim") is not None:
        out[Keys.Attention.KEY_LENGTH.format(arch=name)] = int(config["head_dim"])
        out[Keys.Attention.VALUE_LENGTH.format(arch=name)] = int(config["head_dim"])
    if arch.writes_vocab_size:
        out[Keys.LLM.VOCAB_SIZE.format(arch=name)] = int(_number(config, ("vocab_size",), True, config_path))
    if arch.writes_rope_dimension:
        out[Keys.Rope.DIMENSION_COUNT.format(arch=name)] = head_dim(config)
    return out


def llama3_rope_freqs(config: Mapping[str, Any]) -> torch.Tensor | None:
    """The ``rope_freqs.weight`` factors for llama3 rope scaling, or None when not used.

    For each rotary frequency: wavelengths shorter than ``original / high_freq_factor`` keep
    factor 1, longer than ``original / low_freq_factor`` get ``factor``, and those between are
    smoothly interpolated. Computed in float32 with the same expressions as llama.cpp.
    """
    rope = rope_parameters(config)
    if str(rope.get("rope_type") or "").lower() != "llama3":
        return None
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
    return torch.where(wavelen < old_context_len / high_freq_factor, torch.ones_like(wavelen), factors).to(torch.float32)
