"""SHA-256 of release files and the ``SHA256SUMS`` list that ``sha256sum -c`` checks."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping

from cvlocal.outputs.atomic import atomic_output

SUMS_NAME = "SHA256SUMS"
_CHUNK = 8 << 20


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks (``on_bytes`` is told each chunk's size)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_CHUNK)
            if not block:
                break
            h.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest()


def write_sha256sums(directory: Path, digests: Mapping[str, str]) -> Path:
    """Write ``SHA256SUMS`` (``<hex>  <name>`` per line, names sorted) atomically; return its path."""
    target = directory / SUMS_NAME
    lines = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))
    with atomic_output(target, force=True) as tmp:
        tmp.write_text(lines, encoding="utf-8")
    return target
