"""The converter's entry points with cvlocal's output policy around them.

``convert`` writes to the paths it is given. Here each output is checked before any work
(``check_output_path``: ``--force`` rules; ``refuse_overlap``: never over or into an input), the
``-o`` target becomes one path per type (``cvlocal.outputs.names``), and every output is opened
through ``atomic_output`` (it appears under its final name only when complete; Ctrl-C, SIGTERM
and failures leave nothing there) and the intermediate through ``scratch``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from convert import convert_model
from cvlocal.errors import UsageError
from cvlocal.outputs.atomic import atomic_output, check_output_path, scratch
from cvlocal.outputs.names import fill_type, has_placeholder, is_folder_target, output_paths
from cvlocal.outputs.overlap import refuse_overlap


def _opener(force: bool) -> convert_model.OpenOutput:
    def open_output(target: Path) -> AbstractContextManager[Path]:
        return atomic_output(target, force=force)

    return open_output


def _scratch(near: Path, tag: str) -> AbstractContextManager[Path]:
    return scratch(near, tag)


def check_outputs(outputs: Mapping[str, str | Path], force: bool, inputs: Iterable[str | Path | None]) -> dict[str, Path]:
    """Refuse, before any work, outputs that may not be written; return them as Paths."""
    checked = {name: check_output_path(Path(path), force) for name, path in outputs.items()}
    if len({p.resolve() for p in checked.values()}) != len(checked):
        raise UsageError("two output types would write the same file", fix="Use a folder or a name with {type}.")
    refuse_overlap(checked.values(), inputs)
    return checked


def write_ggufs(source_dir: str | Path, outputs: Mapping[str, str | Path], *, force: bool = False,
                inputs: Sequence[str | Path | None] = (), **options: Any) -> dict[str, Path]:
    """``convert.convert_model.write_ggufs``, each output atomic; ``inputs`` are further paths no output may touch."""
    from convert.hub_cache import model_folder

    targets = check_outputs(outputs, force, [model_folder(source_dir), *inputs])
    return convert_model.write_ggufs(source_dir, targets, open_output=_opener(force), open_scratch=_scratch, **options)


def write_gguf(source_dir: str | Path, out: str | Path, outtype: str, *, force: bool = False, **options: Any) -> Path:
    """One type; ``out`` may be a file, a folder (naming-convention name inside) or a name with ``{type}``."""
    targets = output_paths(out, [outtype], source_dir, plan=options.get("plan"), metadata=options.get("metadata"))
    return next(iter(write_ggufs(source_dir, targets, force=force, **options).values()))


def convert_checkpoint(model_dir: str | Path, out: str | Path, outtype: str = "f16", *, force: bool = False, **options: Any) -> Path:
    """Convert an HF folder to one GGUF of ``outtype`` (atomic); returns its path."""
    return write_gguf(model_dir, out, outtype, force=force, **options)


def quantized_target(inp: Path, out: str | Path, qtype: str) -> Path:
    """Where ``quantize`` writes: ``out``, with ``{type}`` filled, or a naming-convention name in a folder."""
    from convert.gguf_reader import read_gguf
    from convert.metadata import file_name
    from convert.quant_tables import outtype

    out_type = outtype(qtype)
    target = Path(out)
    if has_placeholder(target):
        return target.with_name(fill_type(target.name, out_type))
    if is_folder_target(out):
        with read_gguf(inp) as src:
            general = {k: v for k, v in src.metadata.items() if k.startswith("general.")}
        return target / file_name(general, out_type.label)
    return target


def quantize_gguf(inp: str | Path, out: str | Path, qtype: str, *, force: bool = False, **options: Any) -> Path:
    """``convert.convert_model.quantize_gguf`` into the target ``out`` names (atomic, never over the input)."""
    inp = Path(inp)
    target = quantized_target(inp, out, qtype)
    refuse_overlap([target], [inp])
    check_output_path(target, force)
    return convert_model.quantize_gguf(inp, target, qtype, open_output=_opener(force), **options)
