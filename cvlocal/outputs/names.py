"""Where output files go: GGUF naming-convention names and the ``-o`` rule for several types.

- ``out`` containing ``{type}`` (or ``{TYPE}``/``{outtype}``/``{ftype}``): the placeholder becomes
  the type (``q4_k_m``; ``Q4_K_M`` for the upper-case forms);
- ``out`` an existing folder (or ending in ``/``): naming-convention names inside it;
- otherwise ``out`` is the file, which allows only one type.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from gguf import GGMLQuantizationType as GGMLType

from convert.checkpoint import open_checkpoint
from convert.conversion import SourcePlan, general_keys, planned
from cvlocal.errors import UsageError
from convert.hub_cache import model_folder
from convert.metadata import file_name
from convert.quant_tables import OutType, outtype as lookup_outtype
from cvlocal.outputs.types import parse_outtypes

TYPE_PLACEHOLDERS = ("{type}", "{TYPE}", "{outtype}", "{OUTTYPE}", "{ftype}", "{FTYPE}")


def fill_type(name: str, out_type: OutType) -> str:
    """Replace the type placeholders of a file name (lower-case name or upper-case label)."""
    for p in TYPE_PLACEHOLDERS:
        name = name.replace(p, out_type.label if p[1].isupper() else out_type.name)
    return name


def has_placeholder(path: str | Path) -> bool:
    return any(p in Path(path).name for p in TYPE_PLACEHOLDERS)


def is_folder_target(path: str | Path) -> bool:
    return Path(path).is_dir() or str(path).endswith(("/", "\\"))


def _source_of(source_dir: Path, plan: SourcePlan | None) -> SourcePlan:
    if plan is not None:
        return plan
    with open_checkpoint(source_dir) as ckpt:
        return {n: (ckpt.dtype(n), ckpt.shape(n)) for n in ckpt.names()}


def gguf_file_name(source_dir: str | Path, outtype_name: str, *, plan: SourcePlan | None = None, metadata: Mapping[str, Any] | None = None) -> str:
    """The naming-convention file name for converting ``source_dir`` to ``outtype_name``.

    ``plan`` (HF name -> dtype, shape) replaces reading the checkpoint's weight index, for a
    model that exists only as a tensor stream. Example: ``TinyLlama-1.1B-Chat-v1.0-Q4_K_M.gguf``.
    """
    folder = model_folder(source_dir)
    config, _arch, tensors, _rope = planned(folder, _source_of(folder, plan), GGMLType.F16)
    return file_name(general_keys(folder, config, tensors, metadata), lookup_outtype(outtype_name).label)


def output_paths(out: str | Path, outtypes: str | Sequence[str], source_dir: str | Path, *, plan: SourcePlan | None = None, metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Where each output type goes (type name -> path), by the rule in this module's docstring."""
    types = parse_outtypes(outtypes)
    target = Path(out)
    if has_placeholder(out):
        return {t.name: target.with_name(fill_type(target.name, t)) for t in types}
    if is_folder_target(out):
        if not target.is_dir():
            raise UsageError("output folder does not exist", target, "Create it first.")
        folder = model_folder(source_dir)
        config, _arch, tensors, _rope = planned(folder, _source_of(folder, plan), GGMLType.F16)
        general = general_keys(folder, config, tensors, metadata)
        return {t.name: target / file_name(general, t.label) for t in types}
    if len(types) > 1:
        raise UsageError(
            f"{len(types)} output types need one file each", target,
            "Pass -o a folder (names by the GGUF convention) or a name with {type}, e.g. model-{TYPE}.gguf.",
        )
    return {types[0].name: target}
