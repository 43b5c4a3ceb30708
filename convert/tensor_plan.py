"""Decide, before any data is read, which GGUF tensors a checkpoint becomes: name, shape, type.

The plan is complete before writing starts (the GGUF header lists every tensor with its offset),
and it is where bad input is caught: an HF tensor the architecture does not know, a missing
embedding, an embedding whose row count disagrees with config.json.

Tensor types follow llama.cpp's converter: 1-D tensors, norms and anything that is not a
``.weight`` (biases, rope factors) stay float32; other weights get the output type; a Q8_0
weight whose rows are not a multiple of 32 falls back to F16.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from gguf import GGML_QUANT_SIZES, MODEL_TENSOR, TENSOR_NAMES
from gguf import GGMLQuantizationType as GGMLType

from convert.architectures import Architecture, supported
from convert.errors import ConvertError

ROPE_FREQS = TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
EMBEDDING = "model.embed_tokens.weight"


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its name, where its data comes from, its shape (HF order) and type."""

    gguf_name: str
    hf_name: str | None            # None for a generated tensor (rope_freqs)
    shape: tuple[int, ...]
    ggml_type: GGMLType
    permute: str | None = None     # "q" / "k": rotary row permutation before encoding
    source_nbytes: int = 0         # bytes of the HF tensor (for progress)


def tensor_type(gguf_name: str, shape: tuple[int, ...], weight_type: GGMLType) -> GGMLType:
    """llama.cpp's choice: float32 for 1-D, norms and non-weights; the output type otherwise."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return GGMLType.F32
    if weight_type == GGMLType.Q8_0 and shape[-1] % GGML_QUANT_SIZES[GGMLType.Q8_0][0]:
        return GGMLType.F16
    return weight_type


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def plan_tensors(
    arch: Architecture,
    config: Mapping[str, object],
    source: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    weight_type: GGMLType,
    *,
    where: Path,
    rope_freqs: torch.Tensor | None = None,
) -> list[PlannedTensor]:
    """The GGUF tensors for HF tensors ``source`` (name -> dtype, shape), in data order.

    ``where`` names the checkpoint in error messages. A generated ``rope_freqs`` comes first,
    then the HF tensors in the order given (which is the order they will be streamed).
    """
    plan: list[PlannedTensor] = []
    if rope_freqs is not None:
        plan.append(PlannedTensor(ROPE_FREQS, None, tuple(rope_freqs.shape), GGMLType.F32))
    unknown: list[str] = []
    for hf_name, (dtype, shape) in source.items():
        gguf_name = arch.gguf_name(hf_name)
        if gguf_name == "":
            continue
        if gguf_name is None:
            unknown.append(hf_name)
            continue
        if not (dtype.is_floating_point):
            raise ConvertError(f"tensor {hf_name!r} is {dtype}, not a floating-point weight", where, "Convert a plain (unquantized) checkpoint.")
        shape = tuple(int(d) for d in shape)
        n = 1
        for d in shape:
            n *= d
        plan.append(PlannedTensor(
            gguf_name, hf_name, shape, tensor_type(gguf_name, shape, weight_type),
            arch.permutation(hf_name), n * _element_size(dtype),
        ))
    if unknown:
        raise ConvertError(
            f"{len(unknown)} tensors are not part of a {arch.family} model (first: {unknown[0]!r})", where,
            f"Convert a plain causal-LM checkpoint of a supported architecture ({supported()}).",
        )
    _check_shapes(plan, config, where)
    return plan


def _check_shapes(plan: list[PlannedTensor], config: Mapping[str, object], where: Path) -> None:
    by_name = {t.gguf_name: t for t in plan}
    embd = by_name.get("token_embd.weight")
    if embd is None:
        raise ConvertError(f"no {EMBEDDING}", where, "The checkpoint is incomplete; re-download it.")
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and embd.shape[0] != vocab:
        raise ConvertError(
            f"config.json says vocab_size {vocab} but {EMBEDDING} has {embd.shape[0]} rows", where,
            "Set vocab_size in config.json to the embedding's row count.",
        )
    out = by_name.get("output.weight")
    if out is not None and out.shape != embd.shape:
        raise ConvertError(f"lm_head.weight is {list(out.shape)} but {EMBEDDING} is {list(embd.shape)}", where, "Resize both to the same vocabulary.")
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and f"blk.{layers - 1}.attn_q.weight" not in by_name:
        raise ConvertError(f"config.json says {layers} layers but the weights of layer {layers - 1} are missing", where, "Re-download the checkpoint.")
    for t in plan:
        if t.permute:
            heads = rotary_heads(t.permute, config, where)
            if t.shape[0] % (2 * heads):
                raise ConvertError(
                    f"{t.hf_name} has {t.shape[0]} rows, which {heads} heads cannot split into rotary halves", where,
                    "Fix num_attention_heads / num_key_value_heads in config.json.",
                )


def rotary_heads(which: str, config: Mapping[str, object], where: Path) -> int:
    """Heads of a permuted tensor: num_attention_heads for Q, num_key_value_heads for K."""
    n_head = config.get("num_attention_heads")
    n_kv = config.get("num_key_value_heads") or n_head
    heads = n_head if which == "q" else n_kv
    if not isinstance(heads, int) or heads <= 0:
        raise ConvertError("missing num_attention_heads", where / "config.json", "Add it to config.json.")
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
