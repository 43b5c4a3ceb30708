"""Outputs appear under their final name only when complete, and nothing else is ever removed.

Everything cvlocal writes (a merged folder, a chat-vector folder, a GGUF file) is built under a
hidden temporary name beside the target and renamed at the end, so a crash, Ctrl-C or ``kill``
never leaves something at the output path that looks finished.

The rule for removing and replacing (every command, ``--force`` or not):

- A command removes only paths it created: its own temporary names (``.NAME.partial-PID-XXXXXXXX``,
  optionally with a ``-TAG`` suffix) and the outputs it just wrote.
- An existing output path is replaced only with ``force``, and only by its own kind: a file by a
  file, a folder by a folder that is empty or that the command recognises as its own previous
  output (``own``: a chat-vector folder has ``chat_vector.json``, a merged folder
  ``cvlocal_recipe.json``, ...). Anything else there (a folder where a file goes, a folder of
  other things) is refused whatever ``force`` says.
- No output may be, contain or lie inside one of the command's inputs (``cvlocal.outputs.overlap``).
- A SIGKILL or power loss leaves the temporary names behind; the next run at the same output
  removes those whose owner process (the PID in the name) is gone, and logs that it did.

An ``OSError`` from writing (disk full, read-only folder) that names a temporary path, or no path,
is re-raised naming the user's output instead, so the one-line error means something to them.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cvlocal.errors import UsageError

log = logging.getLogger("cvlocal.outputs")
_PARTIAL = re.compile(r"\.partial-(\d+)-[0-9a-f]{8}(?:-[\w.-]+)?$")
# errnos that are about where an output goes, whatever file object raised them
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def partial_path(target: Path, tag: str = "") -> Path:
    """A hidden sibling of ``target`` that is obviously unfinished: ``.NAME.partial-PID-XXXXXXXX[-TAG]``.

    The PID says which process owns it, so that a later run can tell a stale partial (its owner
    was killed) from one that another run is writing right now.
    """
    suffix = f"-{tag}" if tag else ""
    return target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def partial_owner(path: Path, target_name: str | None = None) -> int | None:
    """The PID in a partial's name (for ``target_name``'s partials only, if given); None if not a partial."""
    name = path.name
    if target_name is not None and not name.startswith(f".{target_name}.partial-"):
        return None
    match = _PARTIAL.search(name)
    return int(match.group(1)) if match and name.startswith(".") else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_partials(folder: Path, target_name: str | None = None) -> list[Path]:
    """Remove the partials in ``folder`` (of ``target_name``, or all) whose owner process is gone.

    Returns what was removed; each removal is logged on the ``convert`` logger.
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        pid = partial_owner(path, target_name)
        if pid is None or pid == os.getpid() or process_alive(pid):
            continue
        remove_path(path)
        removed.append(path)
        log.warning("removed %s, left by process %d, which was stopped before it finished", path, pid)
    return removed


def remove_path(path: Path) -> None:
    """Remove a file or folder if it exists; never raises for a missing path.

    Callers pass only paths the command itself created (partials, its own outputs).
    """
    if not _exists(path):  # checked first: on a read-only file system unlink says EROFS, not ENOENT
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _discard(path: Path) -> None:
    """Remove a temporary path while another error is on its way: a second error must not hide it
    (what cannot be removed now is a stale partial the next run removes)."""
    try:
        remove_path(path)
    except OSError:
        pass


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def check_output_path(target: str | Path, force: bool = False, *, directory: bool = False,
                      own: Callable[[Path], bool] | None = None) -> Path:
    """Refuse an output that may not be written (the rule in this module's docstring); return it as a Path.

    Checked before any work starts, so a refused run costs nothing.
    """
    target = Path(target)
    if _exists(target):
        if not force:
            raise UsageError("output already exists", target, "Choose another path or pass --force to replace it.")
        is_folder = target.is_dir()
        if directory and not is_folder:
            raise UsageError("output exists and is not a folder, --force or not", target, "Choose another path.")
        if not directory and is_folder and not target.is_symlink():
            raise UsageError("output is an existing folder; a file is never written in place of a folder, --force or not", target, "Choose a file path.")
        if directory and is_folder and any(target.iterdir()) and not (own is not None and own(target)):
            raise UsageError(
                "output folder exists and is not an output of this command; it is never replaced, --force or not", target,
                "Choose another path, or remove the folder yourself.",
            )
    if not target.parent.exists():
        raise UsageError("the folder for the output does not exist", target.parent, "Create it first.")
    return target


class _Terminated(BaseException):
    """Raised from SIGTERM so that cleanup runs as it does for Ctrl-C."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises in the main thread while the body runs (elsewhere it is left as it is)."""
    def _on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise _Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    except _Terminated:
        raise SystemExit(143) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _name_user_path(err: OSError, tmp: Path, target: Path, keep_tail: bool = True) -> None:
    """Make an OSError name ``target`` rather than the temporary path (or nothing).

    ``keep_tail``: a file inside a temporary folder becomes the same file inside ``target``;
    otherwise (side files that never become an output) the error names ``target`` itself.
    """
    name = err.filename
    if name is None:
        if err.errno in _WRITE_ERRNOS:
            err.filename = str(target)
        return
    text, prefix = os.fsdecode(name) if isinstance(name, (str, bytes)) else str(name), str(tmp)
    if text == prefix or text.startswith(prefix + os.sep):
        err.filename = str(target) + (text[len(prefix):] if keep_tail else "")


@contextmanager
def scratch(target: Path, tag: str, *, directory: bool = False) -> Iterator[Path]:
    """A temporary path named after ``target`` (a partial with ``tag``), removed on any exit.

    For side files and intermediates that never become an output; Ctrl-C and SIGTERM clean up too.
    """
    remove_stale_partials(target.parent, target.name)
    tmp = partial_path(target, tag)
    try:
        if directory:
            tmp.mkdir()
        with _sigterm_raises():
            yield tmp
    except OSError as err:
        _name_user_path(err, tmp, target, keep_tail=False)
        raise
    finally:
        _discard(tmp)


@contextmanager
def atomic_output(target: str | Path, *, directory: bool = False, force: bool = False,
                  own: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``target`` (replacing it only as the module rule allows).

    On any exception (Ctrl-C and SIGTERM included) the temporary path is removed and the target is
    left as it was. Stale partials of ``target`` from killed runs are removed first.
    """
    target = check_output_path(target, force, directory=directory, own=own)
    remove_stale_partials(target.parent, target.name)
    tmp = partial_path(target)
    try:
        if directory:
            tmp.mkdir()
        with _sigterm_raises():
            yield tmp
            _replace(tmp, target, force, directory, own)
    except OSError as err:
        _discard(tmp)
        _name_user_path(err, tmp, target)
        raise
    except BaseException:
        _discard(tmp)
        raise


def _replace(tmp: Path, target: Path, force: bool, directory: bool, own: Callable[[Path], bool] | None) -> None:
    """Rename ``tmp`` to ``target``; a previous output is moved aside first, removed only after."""
    if not _exists(target):
        os.replace(tmp, target)
        return
    check_output_path(target, force, directory=directory, own=own)  # it may have appeared meanwhile
    if not directory:
        os.replace(tmp, target)  # a file (or a link) replaced by a file in one step
        return
    if target.is_symlink():  # the link goes, never what it points to
        target.unlink()
        os.replace(tmp, target)
        return
    old = partial_path(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove_path(old)
