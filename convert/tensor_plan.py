"""Decide, before any data is read, which GGUF tensors a checkpoint becomes: name, shape, type.

The plan is complete before writing starts (the GGUF header lists every tensor with its offset),
and it is where bad input is caught: an HF tensor the architecture does not know, a missing
embedding, an embedding whose row count disagrees with config.json.

Tensor types follow llama.cpp's converter: 1-D tensors, norms and anything that is not a
``.weight`` (biases, rope factors) stay float32; other weights get the output type; a Q8_0
weight whose rows are not a multiple of 32 falls back to F16.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as GGMLType

from convert.architectures import Architecture, supported
from convert.errors import ConvertError
from convert.transforms import TENSOR_TRANSFORMS, permute_rotary, rotary_heads

__all__ = ["PlannedTensor", "permute_rotary", "plan_tensors", "rotary_heads", "tensor_type"]


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its name, where its data comes from, its shape (HF order) and type."""

    gguf_name: str
    hf_name: str | None            # None for a generated tensor (rope_freqs, rope_factors_*)
    shape: tuple[int, ...]
    ggml_type: GGMLType
    transforms: tuple[str, ...] = ()  # named transforms (convert.transforms) before encoding
    source_nbytes: int = 0         # bytes of the HF tensor (for progress)

    @property
    def permute(self) -> str | None:
        """"q" / "k" when the rows are permuted to GGML's rotary layout."""
        return "q" if "permute_q" in self.transforms else "k" if "permute_k" in self.transforms else None


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
    generated: list[tuple[str, torch.Tensor]] | None = None,
    notices: list[str] | None = None,
) -> list[PlannedTensor]:
    """The GGUF tensors for HF tensors ``source`` (name -> dtype, shape), in data order.

    ``where`` names the checkpoint in error messages. Generated tensors (``rope_freqs``,
    ``rope_factors_*``) come first, then the HF tensors in the order given (which is the order
    they will be streamed). Tensors of another tower (a vision encoder) are left out and counted
    in one line appended to ``notices``.
    """
    plan: list[PlannedTensor] = [PlannedTensor(name, None, tuple(t.shape), GGMLType.F32) for name, t in generated or []]
    unknown: list[str] = []
    skipped = 0
    for hf_name, (dtype, shape) in source.items():
        gguf_name = arch.gguf_name(hf_name)
        if gguf_name == "":
            skipped += arch.is_skipped(hf_name)
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
            arch.transforms_of(hf_name), n * _element_size(dtype),
        ))
    if unknown:
        raise ConvertError(
            f"{len(unknown)} tensors are not part of a {arch.family} model (first: {unknown[0]!r})", where,
            f"Convert a plain causal-LM checkpoint of a supported architecture ({supported()}).",
        )
    if skipped and notices is not None:
        notices.append(f"{where}: {skipped} tensors of the vision tower and projector skipped (the GGUF is the text model)")
    _check_shapes(plan, arch, config, where)
    return plan


def _check_shapes(plan: list[PlannedTensor], arch: Architecture, config: Mapping[str, object], where: Path) -> None:
    by_name = {t.gguf_name: t for t in plan}
    embd = by_name.get("token_embd.weight")
    if embd is None:
        raise ConvertError(f"no {arch.embedding}", where, "The checkpoint is incomplete; re-download it.")
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and embd.shape[0] != vocab:
        raise ConvertError(
            f"config.json says vocab_size {vocab} but {arch.embedding} has {embd.shape[0]} rows", where,
            "Set vocab_size in config.json to the embedding's row count.",
        )
    out = by_name.get("output.weight")
    if out is not None and out.shape != embd.shape:
        raise ConvertError(f"{arch.output} is {list(out.shape)} but {arch.embedding} is {list(embd.shape)}", where, "Resize both to the same vocabulary.")
    layers = config.get("num_hidden_layers")
    last = f"blk.{layers - 1 if isinstance(layers, int) else 0}."
    if isinstance(layers, int) and not any(name.startswith(last) and "attn_" in name for name in by_name):
        raise ConvertError(f"config.json says {layers} layers but the weights of layer {layers - 1} are missing", where, "Re-download the checkpoint.")
    for t in plan:
        if t.permute:
            heads = rotary_heads(t.permute, config, where)
            if t.shape[0] % (2 * heads):
                raise ConvertError(
                    f"{t.hf_name} has {t.shape[0]} rows, which {heads} heads cannot split into rotary halves", where,
                    "Fix num_attention_heads / num_key_value_heads in config.json.",
                )
    assert all(n in TENSOR_TRANSFORMS for t in plan for n in t.transforms)
