"""Append-only JSONL caches that make an evaluation resumable.

Every generated item (and every score and judge verdict) is appended as one JSON line and flushed
to disk as soon as it exists, so an interrupted run (Ctrl-C, a crash, a closed laptop) loses at
most the item in progress. The file name carries the key (model fingerprint and settings), so a
different model or different settings never reuse stale results; inside a file, each record keeps
the hash of the suite item it answers, so editing one item re-runs only that item.

A last line cut off by a crash is dropped when the file is opened again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of a settings dictionary."""
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def safe_name(name: str) -> str:
    """A file-name-safe version of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "model"


class JsonlCache:
    """Records keyed by ``record["key"]``; the newest record for a key wins."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._handle = None
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        complete = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a line cut off mid-write: drop it so appends stay valid
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                self.records[record["key"]] = record

    def get(self, key: str, item_hash: str | None = None) -> dict[str, Any] | None:
        """The record for ``key`` if it answers the same item content."""
        record = self.records.get(key)
        if record is None or (item_hash is not None and record.get("item_hash") != item_hash):
            return None
        return record

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and push it to the disk before returning."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records[record["key"]] = record

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def __enter__(self) -> "JsonlCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
