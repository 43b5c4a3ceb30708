"""Outputs appear under their final name only when complete.

Everything cvlocal writes (a merged folder, a chat-vector folder, a GGUF file) is built under a
hidden temporary name beside the target and renamed at the end, so a crash, Ctrl-C or ``kill``
never leaves something at the output path that looks finished.
"""
from __future__ import annotations

import os
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from convert.errors import ConvertError


def partial_path(target: Path) -> Path:
    """A hidden sibling of ``target`` that is obviously unfinished (``.NAME.partial-XXXXXXXX``)."""
    return target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"


def remove_path(path: Path) -> None:
    """Remove a file or folder if it exists; never raises for a missing path."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def check_output_path(target: str | Path, force: bool = False) -> Path:
    """Refuse an existing output unless ``force``; return the target as a Path.

    Checked before any work starts, so a refused run costs nothing.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not force:
        raise ConvertError("output already exists", target, "Choose another path or pass --force to replace it.")
    if not target.parent.exists():
        raise ConvertError("the folder for the output does not exist", target.parent, "Create it first.")
    return target


class _Terminated(BaseException):
    """Raised from SIGTERM so that cleanup runs as it does for Ctrl-C."""


@contextmanager
def atomic_output(target: str | Path, *, directory: bool = False, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``target`` (replacing it only with ``force``).

    On any exception (Ctrl-C and SIGTERM included) the temporary path is removed and the target is
    left as it was.
    """
    target = check_output_path(target, force)
    tmp = partial_path(target)
    if directory:
        tmp.mkdir()
    previous = None
    try:
        def _on_term(signum, frame):  # noqa: ARG001 - signal handler signature
            raise _Terminated()
        try:
            previous = signal.signal(signal.SIGTERM, _on_term)
        except ValueError:  # not the main thread
            previous = None
        yield tmp
        if target.exists() or target.is_symlink():
            remove_path(target)
        os.replace(tmp, target)
    except _Terminated:
        remove_path(tmp)
        raise SystemExit(143)
    except BaseException:
        remove_path(tmp)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
