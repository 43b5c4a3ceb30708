"""From the command's options to the list of point tasks, checked before any work.

Ratios are parsed and checked here (empty, non-numeric or non-finite: one line, exit 2); the CP
model and the vectors (or base and chat) are opened once to check that they share one
architecture, and fingerprinted by content (each file's size, mtime and first megabyte, as the
eval cache does), so that the cache keys name what the points are made of, not where they live.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from cvlocal.errors import UsageError
from cvlocal.sweep.point import PointTask


def parse_ratios(text: str | None, option: str) -> tuple[float, ...]:
    """``0,0.5,1`` -> (0.0, 0.5, 1.0): sorted, duplicates dropped; anything else is a usage error."""
    fix = f"Give comma-separated finite numbers, e.g. {option} 0,0.5,1."
    parts = [p.strip() for p in (text or "").split(",")]
    if not any(parts):
        raise UsageError(f"{option} is empty", fix=fix)
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not a number", fix=fix) from None
        if not math.isfinite(value):
            raise UsageError(f"{option}: {part} is not a finite number", fix=fix)
        values.append(value + 0.0)  # -0.0 and 0.0 are one ratio
    return tuple(sorted(set(values)))


def fingerprint_folder(path: Path, what: str) -> str:
    """A content fingerprint of a model or vector folder (every file's fingerprint, by name)."""
    from cvlocal.evaluation.files import file_fingerprint

    if not path.is_dir() or not (path / "config.json").is_file() and not (path / "chat_vector.json").is_file():
        raise UsageError(f"the {what} is not a model or chat-vector folder", path,
                         f"Pass the {what}'s HF folder (config.json and safetensors).")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(f"{file.name}:{file_fingerprint(file)};".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """What the user asked for, after checking."""

    cp: Path
    base: Path | None
    chat: Path | None
    vectors: tuple[Path, ...]
    ratios: tuple[tuple[float, ...], ...]   # one tuple of ratios per vector (one-shot pair: one)
    template: PointTask                      # every field but kind and ratios


def check_inputs(cp: Path, base: Path | None, chat: Path | None, vectors: Sequence[Path]) -> None:
    """The vectors (or base and chat) must fit the CP model's architecture: one line otherwise."""
    from convert.checkpoint import open_checkpoint
    from cvlocal.vector.compat import check_compatible
    from cvlocal.vector.sources import DeltaSource

    sources = [DeltaSource.from_vector(v, 1.0) for v in vectors] if vectors else [DeltaSource.from_pair(base, chat, 1.0)]
    checkpoint = open_checkpoint(cp)
    try:
        check_compatible(checkpoint, sources)
    finally:
        checkpoint.close()
        for source in sources:
            source.close()


def grid(spec: SweepSpec) -> list[tuple[float, ...]]:
    """Every combination of the vectors' ratios, in order."""
    return [tuple(c) for c in itertools.product(*spec.ratios)]


def tasks_for(spec: SweepSpec) -> list[PointTask]:
    """The references (CP; the chat model when it is given) then the ratio points."""
    tasks = [replace(spec.template, kind="cp", ratios=())]
    if spec.chat is not None and len(spec.ratios) == 1:
        tasks.append(replace(spec.template, kind="chat", ratios=()))
    tasks += [replace(spec.template, kind="point", ratios=r) for r in grid(spec)]
    return tasks


def sweep_identity(task: PointTask) -> dict[str, Any]:
    """What makes two sweeps the same sweep: the inputs and how points are built (ratios and what the
    models are asked left out: adding a ratio, a suite or items continues a sweep)."""
    identity = task.model_identity()
    for name in ("kind", "ratios", "version"):
        identity.pop(name, None)
    return identity
