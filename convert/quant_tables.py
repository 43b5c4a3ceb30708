"""The output types we offer, on gguf-py's file and tensor types.

``OUTTYPES`` maps each output-type name a user can type (``f16``, ``q8_0``, ``q4_k_m`` ...) to an
``OutType``: its ``llama_ftype`` number (``gguf.LlamaFileType``: the ``general.file_type`` value
and the argument of ``llama_model_quantize``), the label used in file names, and whether our own
writer produces it (``direct``, with its ``gguf.GGMLQuantizationType``) or llama.cpp's quantizer
does. Which types are offered, and which need an importance matrix, is ours; every number is
gguf-py's (block layouts are ``gguf.GGML_QUANT_SIZES``, used by ``convert.gguf_stream``).

Types whose low-bit tensors llama.cpp refuses to make without an importance matrix (its
``tensor_requires_imatrix``: IQ1/IQ2/IQ3_XXS tensors and the Q2_K tensors of a Q2_K_S file, so also
IQ3_XS and IQ2_M whose mixes use them) carry ``needs_imatrix``; ``require_imatrix`` refuses them
with a clear message before any work when no matrix is given. ``TENSOR_TYPES`` are the GGML tensor
types a per-tensor override (llama-quantize's ``--tensor-type PATTERN=TYPE``) may name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gguf import GGMLQuantizationType as GGMLType
from gguf import LlamaFileType

from convert.errors import ConvertError


@dataclass(frozen=True)
class OutType:
    """One output type: what the user types, what llama.cpp calls it, and who makes it."""

    name: str            # lower-case name users type: "q4_k_m"
    ftype: int           # llama_ftype (general.file_type and llama_model_quantize's ftype)
    label: str           # encoding in file names and messages: "Q4_K_M"
    direct: bool         # written by convert's own writer (f32/f16/bf16/q8_0)
    ggml_type: GGMLType | None = None  # the tensor type of 2-D weights, for direct types
    needs_imatrix: bool = False  # llama.cpp refuses to make it without an importance matrix


def _offer(name: str, direct: bool = False, needs_imatrix: bool = False) -> OutType:
    """The OutType ``name`` with gguf-py's file type (``ALL_F32``, ``MOSTLY_<NAME>``) and tensor type."""
    label = name.upper()
    ftype = LlamaFileType.ALL_F32 if label == "F32" else LlamaFileType[f"MOSTLY_{label}"]
    return OutType(name, int(ftype), label, direct, GGMLType[label] if direct else None, needs_imatrix)


_DIRECT = [_offer(name, direct=True) for name in ("f32", "f16", "bf16", "q8_0")]
_VIA_LLAMA_CPP = [
    *(_offer(name) for name in ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                                "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq3_s", "iq3_m", "iq4_xs")),
    *(_offer(name, needs_imatrix=True) for name in ("iq2_xxs", "iq2_xs", "q2_k_s", "iq3_xs", "iq3_xxs", "iq1_s", "iq2_s", "iq2_m", "iq1_m")),
]

OUTTYPES: dict[str, OutType] = {t.name: t for t in _DIRECT + _VIA_LLAMA_CPP}
"""Every output type we can produce, by name (f32, f16, bf16, q8_0, then llama.cpp's)."""

# llama.cpp's short aliases (quantize.cpp): Q3_K is Q3_K_M, Q4_K is Q4_K_M, Q5_K is Q5_K_M.
ALIASES: dict[str, str] = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}

NEEDS_IMATRIX: dict[str, int] = {t.name: t.ftype for t in _VIA_LLAMA_CPP if t.needs_imatrix}
"""Types llama.cpp only makes with an importance matrix, by name (their llama_ftype)."""

# Types that exist in llama.cpp but make no sense for the dense models we convert.
NOT_OFFERED: dict[str, str] = {
    "tq1_0": "a ternary format for models trained with ternary weights (BitNet)",
    "tq2_0": "a ternary format for models trained with ternary weights (BitNet)",
    "mxfp4_moe": "a format for mixture-of-experts weights",
}

FTYPE_LABELS: dict[int, str] = {t.ftype: t.label for t in OUTTYPES.values()}


def outtype(name: str) -> OutType:
    """Look up an output type by name (case-insensitive, aliases allowed) or raise ConvertError."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in OUTTYPES:
        return OUTTYPES[key]
    known = ", ".join(OUTTYPES)
    if key in NOT_OFFERED:
        raise ConvertError(f"output type {name!r} is {NOT_OFFERED[key]}", fix=f"Choose one of: {known}.")
    raise ConvertError(f"unknown output type {name!r}", fix=f"Choose one of: {known}.")


class ImatrixRequired(ConvertError):
    """A type that needs an importance matrix was asked for without one (``needing`` names them)."""

    def __init__(self, needing: list[str], fix: str) -> None:
        self.needing = needing
        super().__init__(f"{', '.join(needing)} needs an importance matrix (imatrix): without one llama.cpp's result is garbage", fix=fix)


def require_imatrix(types: Sequence[OutType], have_imatrix: bool, tensor_types: Sequence[tuple[str, GGMLType]] = ()) -> None:
    """Refuse, before any work, types (or per-tensor overrides) llama.cpp only makes with an importance matrix."""
    if have_imatrix:
        return
    needing = [t.name for t in types if t.needs_imatrix]
    needing += [f"{pattern}={ggml.name.lower()}" for pattern, ggml in tensor_types if ggml in IMATRIX_TENSOR_TYPES]
    if needing:
        plain = ", ".join(t.name for t in OUTTYPES.values() if not t.needs_imatrix)
        raise ImatrixRequired(needing, f"Give the quantizer an imatrix GGUF, or choose a type that does not need one: {plain}.")


# Tensor types llama.cpp's tensor_requires_imatrix names (Q2_K only inside a Q2_K_S file).
IMATRIX_TENSOR_TYPES = frozenset({GGMLType.IQ3_XXS, GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ2_S, GGMLType.IQ1_M, GGMLType.IQ1_S})

# GGML tensor types a per-tensor override may name: the float types and every quantized type
# llama.cpp can produce from floats (not the activation-only Q8_1/Q8_K, nor integer types).
TENSOR_TYPES: dict[str, GGMLType] = {
    t.name.lower(): t
    for t in GGMLType
    if t not in (GGMLType.Q8_1, GGMLType.Q8_K, GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64, GGMLType.F64)
}
