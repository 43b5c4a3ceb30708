"""Hyper-parameter metadata from config.json: the table's keys, then its named rules.

A family's table lists plain keys (``HParam``: a GGUF key, the config.json keys tried in order,
the value type llama.cpp reads) and, by name, the derived ones from ``RULES`` below (rope
scaling, the local rope base, the sliding-window layer pattern, LongRoPE...). This module knows
no family: which rules apply is the table's business. Keys, types and when they are written
follow llama.cpp's converter and what its loader reads.

RoPE settings come from ``rope_parameters`` (transformers 5) or ``rope_scaling`` plus
``rope_theta`` (the Hub layout). ``linear`` and ``yarn`` scaling become ``rope.scaling.*`` keys;
``llama3`` scaling has no key in llama.cpp: it is the generated ``rope_freqs`` tensor
(``convert.transforms.llama3_rope_freqs``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf

from convert.architectures import Architecture
from convert.errors import ConvertError
from convert.transforms import (
    head_dim,
    llama3_rope_freqs,
    rope_dimensions,
    rope_parameters,
)

V = gguf.GGUFValueType
KV = tuple[str, Any, gguf.GGUFValueType, "gguf.GGUFValueType | None"]
Config = Mapping[str, Any]

__all__ = ["RULES", "gguf_hparams", "head_dim", "llama3_rope_freqs", "rope_parameters"]


def _number(config: Config, keys: tuple[str, ...], required: bool, config_path: Path) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConvertError(f"{key} is {value!r}, not a number", config_path, "Fix config.json.")
            return value
    if required:
        raise ConvertError(f"missing {keys[0]}", config_path, "Add it to config.json (see the model's original config).")
    return None


class _Out:
    """Keys being collected for one file: ``put`` formats the ``{arch}`` template and fixes the type."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch
        self.kv: dict[str, KV] = {}

    def put(self, template: str, value: Any, vtype: gguf.GGUFValueType, elem: gguf.GGUFValueType | None = None) -> None:
        key = template.format(arch=self.arch.gguf_arch)
        if vtype == V.FLOAT32:
            value = float(value)
        elif vtype in (V.UINT32, V.INT32, V.UINT64):
            value = int(value)
        self.kv[key] = (key, value, vtype, elem)


Rule = Callable[[_Out, Config, Path, list[str]], None]
R = gguf.Keys.Rope


def _rope_scaling(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """linear / yarn scaling as keys; llama3 and LongRoPE are tensors (see the table's generated)."""
    rope = rope_parameters(config)
    rope_type = str(rope.get("rope_type") or "").lower()
    factor = rope.get("factor")
    if rope_type not in out.arch.rope_types:
        supported = ", ".join(t for t in out.arch.rope_types if t not in ("", "default"))
        raise ConvertError(f"rope scaling type {rope_type!r} is not supported for {out.arch.family}", path,
                           f"Supported: {supported or 'none'}.")
    if rope_type == "linear" and factor is not None:
        out.put(R.SCALING_TYPE, "linear", V.STRING)
        out.put(R.SCALING_FACTOR, factor, V.FLOAT32)
    elif rope_type == "yarn" and factor is not None:
        out.put(R.SCALING_TYPE, "yarn", V.STRING)
        out.put(R.SCALING_FACTOR, factor, V.FLOAT32)
        orig = rope.get("original_max_position_embeddings")
        if orig is None:
            raise ConvertError("yarn rope scaling without original_max_position_embeddings", path, "Add it to the rope settings in config.json.")
        out.put(R.SCALING_ORIG_CTX_LEN, orig, V.UINT32)
        for name, key in (("extrapolation_factor", R.SCALING_YARN_EXT_FACTOR), ("beta_fast", R.SCALING_YARN_BETA_FAST), ("beta_slow", R.SCALING_YARN_BETA_SLOW)):
            if rope.get(name) is not None:
                out.put(key, rope[name], V.FLOAT32)
        attn = rope.get("attention_factor", rope.get("attn_factor"))
        if attn is not None:
            out.put(R.SCALING_YARN_ATTN_FACTOR, attn, V.FLOAT32)
    elif rope_type == "dynamic":
        warnings.append(f"{path}: dynamic rope scaling has no llama.cpp equivalent; contexts beyond max_position_embeddings will differ")


def _rope_freq_base(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """The rope base (of the full-attention layers, where there are two)."""
    theta = rope_parameters(config).get("rope_theta")
    if theta is not None:
        out.put(R.FREQ_BASE, theta, V.FLOAT32)


def _rope_freq_base_swa(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """The local (sliding-window) layers' rope base, when it differs by layer type."""
    raw = config.get("rope_parameters")
    local = raw.get("sliding_attention") if isinstance(raw, Mapping) else None
    theta = local.get("rope_theta") if isinstance(local, Mapping) else config.get("rope_local_base_freq")
    if theta is not None:
        out.put(R.FREQ_BASE_SWA, theta, V.FLOAT32)


def _sliding_window_notice(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """Families whose llama.cpp loader has no sliding window: say so when it matters."""
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", True)
    if isinstance(window, int) and uses_window and window < int(config.get("max_position_embeddings") or 0):
        warnings.append(f"{path}: llama.cpp runs {out.arch.family} without its {window}-token sliding window; prompts longer than that attend to all tokens")


def _layer_pattern(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """The sliding window and which layers use it (``layer_types``), as a per-layer bool array."""
    window = _number(config, ("sliding_window",), False, path)
    types = config.get("layer_types")
    if window is None or config.get("sliding_window_pattern") == 1:
        return
    out.put(gguf.Keys.Attention.SLIDING_WINDOW, window, V.UINT32)
    if isinstance(types, list) and types:
        out.put(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN, [t == "sliding_attention" for t in types], V.ARRAY, V.BOOL)
    elif isinstance(config.get("sliding_window_pattern"), int):
        out.put(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN, config["sliding_window_pattern"], V.UINT32)


def _head_dim_lengths(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    if config.get("head_dim") is not None:
        out.put(gguf.Keys.Attention.KEY_LENGTH, config["head_dim"], V.UINT32)
        out.put(gguf.Keys.Attention.VALUE_LENGTH, config["head_dim"], V.UINT32)


def _vocab_size(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    out.put(gguf.Keys.LLM.VOCAB_SIZE, _number(config, ("vocab_size",), True, path), V.UINT32)


def _rope_dimension_count(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """Rotated dimensions per head: the head size, or its ``partial_rotary_factor`` share."""
    partial = config.get("partial_rotary_factor") or rope_parameters(config).get("partial_rotary_factor")
    out.put(R.DIMENSION_COUNT, rope_dimensions(config) if partial else head_dim(config), V.UINT32)


def _longrope(out: _Out, config: Config, path: Path, warnings: list[str]) -> None:
    """LongRoPE (Phi-3 128k): the original context, and the attention factor llama.cpp's converter
    derives from the context ratio (sqrt(1 + ln s / ln n_orig), s = context / original)."""
    rope = rope_parameters(config)
    orig = rope.get("original_max_position_embeddings")
    if orig is None:
        return
    out.put(R.SCALING_ORIG_CTX_LEN, orig, V.UINT32)
    if not rope.get("long_factor"):
        return
    scale = int(config["max_position_embeddings"]) / int(orig)
    rope_type = str(rope.get("rope_type") or "").lower()
    if rope_type == "yarn":
        attn = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        attn = math.sqrt(1 + math.log(scale) / math.log(int(orig))) if scale > 1.0 else 1.0
    out.put(R.SCALING_ATTN_FACTOR, attn, V.FLOAT32)


RULES: dict[str, Rule] = {
    "rope_scaling": _rope_scaling,
    "rope_freq_base": _rope_freq_base,
    "rope_freq_base_swa": _rope_freq_base_swa,
    "sliding_window_notice": _sliding_window_notice,
    "sliding_window_layers": _layer_pattern,
    "head_dim_lengths": _head_dim_lengths,
    "vocab_size": _vocab_size,
    "rope_dimension_count": _rope_dimension_count,
    "longrope": _longrope,
}


def gguf_hparams(arch: Architecture, config: Config, config_path: Path, warnings: list[str] | None = None) -> list[KV]:
    """The ``{arch}.*`` metadata for ``config``: (key, value, value type, element type) in order.

    Settings llama.cpp cannot represent but that only matter beyond the trained context (dynamic
    NTK rope scaling, a sliding window the loader ignores) are appended to ``warnings``.
    """
    warnings = warnings if warnings is not None else []
    out = _Out(arch)
    for spec in arch.hparams:
        value = _number(config, spec.sources, spec.required, config_path)
        if value is None:
            value = spec.default
        if value is not None:
            out.put(spec.key, value, spec.vtype)
    for name in arch.rules:
        RULES[name](out, config, config_path, warnings)
    return list(out.kv.values())
