"""``--outtype`` lists and ``--tensor-type PATTERN=TYPE`` overrides, parsed into the converter's types.

The types themselves (names, labels, which need an importance matrix) are the converter's
(``convert.quant_tables``); how a user spells a list of them on the command line is cvlocal's.
"""
from __future__ import annotations

import re

from gguf import GGMLQuantizationType as GGMLType
from convert.quant_tables import OUTTYPES, TENSOR_TYPES, OutType, outtype
from cvlocal.errors import UsageError


def parse_outtypes(spec: str | list[str] | tuple[str, ...]) -> list[OutType]:
    """``"f16,q4_k_m"`` (or a list) to OutTypes, in order, without duplicates."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    result: list[OutType] = []
    for n in names:
        if not n.strip():
            continue
        t = outtype(n)
        if t not in result:
            result.append(t)
    if not result:
        raise UsageError("no output type given", fix=f"Pass --outtype with one or more of: {', '.join(OUTTYPES)}.")
    return result


def parse_tensor_type(spec: str) -> tuple[str, GGMLType]:
    """``"attn_v=q6_k"`` to (pattern, GGML type), as llama-quantize's ``--tensor-type`` reads it.

    The pattern is lower-cased and used by llama.cpp as a regular expression searched in each
    tensor name (``token_embd``, ``blk\\.[0-3]\\.ffn_down``); the first matching override wins.
    """
    pattern, sep, type_name = spec.partition("=")
    pattern = pattern.strip().lower()
    type_name = type_name.strip().lower()
    if not sep or not pattern or not type_name:
        raise UsageError(f"malformed tensor type {spec!r}", fix="Write PATTERN=TYPE, e.g. attn_v=q6_k or token_embd=q8_0.")
    if type_name not in TENSOR_TYPES:
        raise UsageError(f"unknown tensor type {type_name!r} in {spec!r}", fix=f"Choose one of: {', '.join(TENSOR_TYPES)}.")
    try:
        re.compile(pattern)
    except re.error as err:
        raise UsageError(f"tensor pattern {pattern!r} is not a regular expression ({err})", fix="Escape special characters, e.g. blk\\.0\\.attn_v.") from None
    return pattern, TENSOR_TYPES[type_name]
