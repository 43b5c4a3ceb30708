"""No output may be, contain or lie inside one of the command's inputs, ``--force`` or not.

Replacing an output is a rename over it (``cvlocal.outputs.atomic``); when the output is an input, or a
folder holding one, or a file inside an input folder, that rename destroys the input. Paths are
compared after resolving symlinks and also by device and inode, so a hard link, a bind mount or a
second symlink to the same file or folder counts as the same thing. A folder input also brings the
entries directly inside it, followed through symlinks (the hub cache's ``snapshots/HASH/*`` links
into ``blobs/``) and matched by inode (a hard link of a weight file), since replacing those
destroys the model just as well.

Every command calls :func:`refuse_overlap` with the paths it will create or replace and the paths
it reads, before any work starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from cvlocal.errors import UsageError

_Identity = tuple[int, int]


def _identity(path: str) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _chain(path: str) -> list[tuple[str, _Identity | None]]:
    """The resolved path and each of its ancestors, with their (device, inode) where they exist."""
    real = os.path.realpath(path)
    out = []
    while True:
        out.append((real, _identity(real)))
        parent = os.path.dirname(real)
        if parent == real:
            return out
        real = parent


def _input_parts(path: Path) -> list[Path]:
    """The input itself and, for a folder, the entries directly inside it (one level: HF folders are flat)."""
    parts = [path]
    if path.is_dir():
        try:
            parts += [child for child in path.iterdir() if child.exists()]
        except OSError:
            pass
    return parts


def _same(a: tuple[str, _Identity | None], b: tuple[str, _Identity | None]) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def overlap(output: str | Path, source: str | Path) -> str | None:
    """How ``output`` overlaps ``source`` ("is", "lies inside", "contains"), or None."""
    out_chain, in_chain = _chain(os.fspath(output)), _chain(os.fspath(source))
    if _same(out_chain[0], in_chain[0]):
        return "is"
    if any(_same(ancestor, in_chain[0]) for ancestor in out_chain[1:]):
        return "lies inside"
    if any(_same(ancestor, out_chain[0]) for ancestor in in_chain[1:]):
        return "contains"
    return None


def _with_snapshots(inputs: Iterable[str | Path | None]) -> list[Path]:
    """The inputs as given and, for a hub repo id or ``models--`` folder, the snapshot folder it names.

    The snapshot is where the weights are read from, so an output inside it (or inside the blobs
    it links to) destroys the model as surely as one inside a plain folder. A spec that does not
    resolve is left to the command, which reports it in its own words.
    """
    from convert.errors import ConvertError
    from convert.hub_cache import model_folder

    sources: list[Path] = []
    for spec in inputs:
        if spec is None:
            continue
        sources.append(Path(spec))
        try:
            resolved = model_folder(spec)
        except ConvertError:
            continue
        if resolved != Path(spec):
            sources.append(resolved)
    return sources


def refuse_overlap(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]) -> None:
    """Raise UsageError (exit 2) if an output is, contains or lies inside an input."""
    sources = _with_snapshots(inputs)
    for output in (Path(p) for p in outputs if p is not None):
        for source in sources:
            for part in _input_parts(source):
                how = overlap(output, part)
                if how is None:
                    continue
                what = f"the input {source}" if part == source else f"{part}, a file of the input {source}"
                raise UsageError(
                    f"the output {how} {what}; writing it would destroy that input, so it is refused, --force or not",
                    output, "Choose an output path outside every input.",
                )
