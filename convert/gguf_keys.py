"""The value type of each GGUF metadata key, as gguf-py's ``GGUFWriter`` writes it.

llama.cpp rejects (or misreads) a key written with another type than the one it expects, and
gguf-py knows that type only implicitly: ``GGUFWriter.add_block_count`` writes
``{arch}.block_count`` as a uint32, ``add_rope_freq_base`` writes a float32, and so on. Rather
than copy those choices into a table of ours, ``key_types`` asks the writer itself: every
one-argument ``add_*`` method whose argument is an int, float, bool or str is called once on a
file-less writer whose architecture is the literal ``{arch}``, and the key and type it records are
kept. A key gguf-py does not know (``cvlocal.*``, free-form metadata) gets ``free_form_type``.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from gguf import GGUFValueType, GGUFWriter

_PROBES: dict[str, Any] = {"int": 1, "float": 1.0, "bool": True, "str": "x"}


@lru_cache(maxsize=1)
def key_types() -> dict[str, GGUFValueType]:
    """Key template (``{arch}`` unresolved) -> the scalar type gguf-py writes it with."""
    writer = GGUFWriter(None, "{arch}")
    table: dict[str, GGUFValueType] = {}
    for name, method in inspect.getmembers(GGUFWriter, inspect.isfunction):
        params = list(inspect.signature(method).parameters.values())[1:]
        if not name.startswith("add_") or len(params) != 1:
            continue
        kind = str(params[0].annotation).split("|")[0].strip()  # "int | Sequence[int]": the scalar form
        if kind not in _PROBES:
            continue
        writer.kv_data[0].clear()
        try:
            getattr(writer, name)(_PROBES[kind])
        except Exception:  # a method that validates its argument further is not a plain key setter
            continue
        for key, value in writer.kv_data[0].items():
            if value.type != GGUFValueType.ARRAY:
                table[key] = value.type
    return table


def key_type(key: str, arch: str) -> GGUFValueType | None:
    """The type gguf-py (so llama.cpp) expects for ``key`` in a file of ``arch``, or None if free-form."""
    prefix = arch + "."
    if key.startswith(prefix):
        found = key_types().get("{arch}." + key[len(prefix):])
        if found is not None:
            return found
    return key_types().get(key)


def free_form_type(value: object) -> tuple[GGUFValueType, GGUFValueType | None]:
    """The type of a value for a key gguf-py does not know: (type, element type for arrays).

    ints become INT32 when they fit and INT64 otherwise; floats become FLOAT64 so that a recorded
    number (a merge ratio, say) reads back exactly; lists need elements of one scalar type.
    """
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING, None
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None
    if isinstance(value, int):
        return (GGUFValueType.INT32 if -(2**31) <= value < 2**31 else GGUFValueType.INT64), None
    if isinstance(value, float):
        return GGUFValueType.FLOAT64, None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("a GGUF array cannot be empty")
        kinds = {free_form_type(v)[0] for v in value}
        if kinds <= {GGUFValueType.INT32, GGUFValueType.INT64}:
            kinds = {max(kinds)}
        if len(kinds) != 1 or GGUFValueType.ARRAY in kinds:
            raise ValueError("a GGUF array needs elements of one scalar type")
        return GGUFValueType.ARRAY, kinds.pop()
    raise ValueError(f"cannot store a {type(value).__name__} in GGUF metadata")
