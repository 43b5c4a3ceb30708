"""Checks and fingerprints for the model files an evaluation names.

Every GGUF (models, guard, judge) is checked before any work starts, so a typo in the last path
does not cost the generation for the first ones. The fingerprint (size, modification time and a
hash of the first MiB) keys the caches: cheap for multi-GB files, and it changes when the file does.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from cvlocal.errors import UsageError

GGUF_MAGIC = b"GGUF"


def require_gguf(path: str | Path, what: str = "model") -> Path:
    """The path if it is a readable GGUF file; otherwise a one-line UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such GGUF {what} file", path, f"give the path of a .gguf {what}")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise UsageError(f"not a GGUF file (bad magic) for the {what}", path,
                             "convert it first with `cvlocal convert MODEL_DIR -o OUT.gguf`")
    return path


def file_fingerprint(path: str | Path, header_bytes: int = 1 << 20) -> str:
    """size + mtime + sha256 of the first ``header_bytes`` bytes, 16 hex digits."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(header_bytes))
    return digest.hexdigest()[:16]


def folder_fingerprint(directory: str | Path) -> str:
    """Names, sizes and mtimes of the files of a folder (a classifier's weights and config)."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def jsonl_objects(path: Path, fix: str, missing: str, missing_fix: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a UTF-8 JSONL file; a missing file,
    bad encoding or a line that is not JSON is a UsageError naming the file (and the line)."""
    if not path.is_file():
        raise UsageError(missing, path, missing_fix)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"not UTF-8 text ({err.reason} at byte {err.start})", path, fix) from err
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"line {number}: not valid JSON ({err.msg})", path, fix) from err
