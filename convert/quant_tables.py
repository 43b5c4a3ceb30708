"""Quantization tables: GGML block layouts, llama.cpp file types and the output types we offer.

``OUTTYPES`` maps each output-type name a user can type (``f16``, ``q8_0``, ``q4_k_m`` ...) to an
``OutType``: its ``llama_ftype`` number (the ``general.file_type`` value and the argument of
``llama_model_quantize``), the label used in file names, and whether our own writer produces it
(``direct``) or llama.cpp's quantizer does. The numbers come from ``include/llama.h`` and the
names from ``tools/quantize/quantize.cpp``.

Types whose low-bit tensors llama.cpp refuses to make without an importance matrix (its
``tensor_requires_imatrix``: IQ1/IQ2/IQ3_XXS tensors and the Q2_K tensors of a Q2_K_S file, so also
IQ3_XS and IQ2_M whose mixes use them) carry ``needs_imatrix``; ``require_imatrix`` refuses them
with a clear message before any work when no matrix is given. ``TENSOR_TYPES`` are the GGML tensor
types a per-tensor override (llama-quantize's ``--tensor-type PATTERN=TYPE``) may name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from convert.errors import ConvertError
from convert.gguf_constants import GGMLType

QK_K = 256

# (elements per block, bytes per block) for each GGML type (ggml.c type_traits).
BLOCK_LAYOUT: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.F64: (1, 8),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 4 + 4 + 32),
    GGMLType.Q2_K: (QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType.Q4_K: (QK_K, 2 + 2 + QK_K // 2 + 12),
    GGMLType.Q5_K: (QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    GGMLType.Q6_K: (QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    GGMLType.Q8_K: (QK_K, 4 + QK_K + QK_K // 8),
    GGMLType.IQ2_XXS: (QK_K, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (QK_K, 2 + QK_K // 4 + QK_K // 8),
    GGMLType.IQ1_S: (QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    GGMLType.IQ1_M: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.TQ1_0: (QK_K, 2 + 4 * 13),
    GGMLType.TQ2_0: (QK_K, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
}


def tensor_nbytes(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with GGML type and HF-order shape (last dimension is the row)."""
    block, size = BLOCK_LAYOUT[ggml_type]
    row = shape[-1] if shape else 1
    if row % block:
        raise ValueError(f"row of {row} elements is not a multiple of the {ggml_type.name} block ({block})")
    n = 1
    for d in shape:
        n *= d
    return n // block * size


@dataclass(frozen=True)
class OutType:
    """One output type: what the user types, what llama.cpp calls it, and who makes it."""

    name: str            # lower-case name users type: "q4_k_m"
    ftype: int           # llama_ftype (general.file_type and llama_model_quantize's ftype)
    label: str           # encoding in file names and messages: "Q4_K_M"
    direct: bool         # written by convert's own writer (f32/f16/bf16/q8_0)
    ggml_type: GGMLType | None = None  # the tensor type of 2-D weights, for direct types
    needs_imatrix: bool = False  # llama.cpp refuses to make it without an importance matrix


_DIRECT = [
    OutType("f32", 0, "F32", True, GGMLType.F32),
    OutType("f16", 1, "F16", True, GGMLType.F16),
    OutType("bf16", 32, "BF16", True, GGMLType.BF16),
    OutType("q8_0", 7, "Q8_0", True, GGMLType.Q8_0),
]
_VIA_LLAMA_CPP = [
    OutType("q4_0", 2, "Q4_0", False),
    OutType("q4_1", 3, "Q4_1", False),
    OutType("q5_0", 8, "Q5_0", False),
    OutType("q5_1", 9, "Q5_1", False),
    OutType("q2_k", 10, "Q2_K", False),
    OutType("q3_k_s", 11, "Q3_K_S", False),
    OutType("q3_k_m", 12, "Q3_K_M", False),
    OutType("q3_k_l", 13, "Q3_K_L", False),
    OutType("q4_k_s", 14, "Q4_K_S", False),
    OutType("q4_k_m", 15, "Q4_K_M", False),
    OutType("q5_k_s", 16, "Q5_K_S", False),
    OutType("q5_k_m", 17, "Q5_K_M", False),
    OutType("q6_k", 18, "Q6_K", False),
    OutType("iq4_nl", 25, "IQ4_NL", False),
    OutType("iq3_s", 26, "IQ3_S", False),
    OutType("iq3_m", 27, "IQ3_M", False),
    OutType("iq4_xs", 30, "IQ4_XS", False),
    OutType("iq2_xxs", 19, "IQ2_XXS", False, needs_imatrix=True),
    OutType("iq2_xs", 20, "IQ2_XS", False, needs_imatrix=True),
    OutType("q2_k_s", 21, "Q2_K_S", False, needs_imatrix=True),
    OutType("iq3_xs", 22, "IQ3_XS", False, needs_imatrix=True),
    OutType("iq3_xxs", 23, "IQ3_XXS", False, needs_imatrix=True),
    OutType("iq1_s", 24, "IQ1_S", False, needs_imatrix=True),
    OutType("iq2_s", 28, "IQ2_S", False, needs_imatrix=True),
    OutType("iq2_m", 29, "IQ2_M", False, needs_imatrix=True),
    OutType("iq1_m", 31, "IQ1_M", False, needs_imatrix=True),
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
