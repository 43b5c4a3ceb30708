"""The record that makes a release resumable: ``RELEASE_DIR/.release-state.json``.

It says which source the folder was built from and, per type, the file, its SHA-256, whether
it was verified, and its quality row. A second run trusts a file only when the source is the same
and the file's bytes still hash to the recorded value; quality rows are kept only while the
reference, the held-out text and the window settings are unchanged. The record is rewritten
atomically after every step, so an interruption loses at most the step in progress.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvlocal.outputs.atomic import atomic_output

STATE_NAME = ".release-state.json"
FORMAT_VERSION = 1


@dataclass
class TypeRecord:
    """What is known about one requested type."""

    file: str | None = None
    sha256: str | None = None
    size: int | None = None
    verified: bool = False
    quality: dict[str, Any] | None = None     # QualitySummary.as_dict() plus "languages"
    quality_key: str | None = None            # the measurement settings the row belongs to
    bits_per_weight: float | None = None
    error: str | None = None                  # why the type failed in the last run

    @property
    def built(self) -> bool:
        return bool(self.file and self.sha256 and self.verified)


@dataclass
class ReleaseState:
    """The whole record; ``source_id`` ties it to one source."""

    source_id: str
    types: dict[str, TypeRecord] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)   # {file, sha256, encoding, hidden}
    format_version: int = FORMAT_VERSION

    def record(self, qtype: str) -> TypeRecord:
        return self.types.setdefault(qtype, TypeRecord())

    def save(self, directory: Path) -> None:
        data = {"format_version": self.format_version, "source_id": self.source_id,
                "reference": self.reference, "types": {k: asdict(v) for k, v in self.types.items()}}
        with atomic_output(directory / STATE_NAME, force=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @staticmethod
    def load(directory: Path) -> "ReleaseState | None":
        """The recorded state, or None when there is none or it cannot be read (then nothing is trusted)."""
        path = directory / STATE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format_version") != FORMAT_VERSION:
                return None
            known = set(TypeRecord.__dataclass_fields__)
            types = {str(k): TypeRecord(**{f: v for f, v in rec.items() if f in known}) for k, rec in data["types"].items()}
            return ReleaseState(source_id=str(data["source_id"]), types=types, reference=dict(data.get("reference") or {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
