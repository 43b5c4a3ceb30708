"""The held-out multilingual text a release's quality table is measured on.

The default set lives in ``assets/heldout``: one UTF-8 file per language (``en.txt``,
``zh-Hant.txt``, ``zh-Hans.txt``, ``ko.txt``, ``ja.txt``), natural paragraphs written for cvlocal
and never used to train or merge anything, so no model has seen them. Any folder of ``*.txt``
files can stand in (``--heldout DIR``); the file stem is the language label in the card.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from cvlocal.assets import asset_path
from cvlocal.errors import UsageError

# The order languages appear in the card; other labels follow alphabetically.
LANGUAGE_ORDER = ("en", "zh-Hant", "zh-Hans", "ko", "ja")


def default_heldout_dir() -> Path:
    """``assets/heldout`` (see cvlocal.assets for where the assets folder is)."""
    return asset_path("heldout")


def load_heldout(folder: Path | None = None) -> dict[str, str]:
    """Language label -> text, in card order. Bad or empty input is a one-line UsageError."""
    folder = Path(folder) if folder is not None else default_heldout_dir()
    if not folder.is_dir():
        raise UsageError("held-out text folder not found", folder, "Pass --heldout DIR with one .txt file per language.")
    texts: dict[str, str] = {}
    for path in sorted(folder.glob("*.txt")):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError("held-out text is not UTF-8", path, "Save it as UTF-8.") from None
        if text.strip():
            texts[path.stem] = text
    if not texts:
        raise UsageError("no non-empty .txt files", folder, "Put one UTF-8 .txt file per language in the folder.")
    rank = {lang: i for i, lang in enumerate(LANGUAGE_ORDER)}
    return {lang: texts[lang] for lang in sorted(texts, key=lambda name: (rank.get(name, len(rank)), name))}


def heldout_digest(texts: dict[str, str]) -> str:
    """A short hash of the set, recorded so a resumed release knows its old scores are comparable."""
    h = hashlib.sha256()
    for lang, text in texts.items():
        h.update(lang.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]
