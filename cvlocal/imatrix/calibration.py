"""The calibration text of an importance matrix: given files, or the held-out text of some languages.

Default languages (``--lang auto``): English, plus each other held-out language whose text the
model's tokenizer encodes in fewer than ``KNOWN_SCRIPT_TOKENS_PER_CHAR`` tokens per character. A
tokenizer trained on a script has multi-character tokens for it (Chinese at about 0.5-0.8 tokens per
character in tokenizers built for it), while one that was not falls back to bytes (1.5-3 tokens per
Han character), so the figure says which languages a model was built for without any metadata.
Between zh-Hant and zh-Hans, a tokenizer clearly better on one script (by ``SCRIPT_MARGIN``) keeps
only that one: a Traditional Chinese CP model is calibrated on Traditional Chinese.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cvlocal.errors import UsageError
from cvlocal.release.heldout import default_heldout_dir, load_heldout

KNOWN_SCRIPT_TOKENS_PER_CHAR = 0.8
SCRIPT_MARGIN = 0.9


@dataclass(frozen=True)
class CalibrationText:
    """One calibration text and the name it is recorded under (``imatrix.datasets``)."""

    label: str     # the language label or the file name
    dataset: str   # what imatrix.datasets records: the file path as given, or heldout/<lang>.txt
    text: str


def read_text_files(paths: Sequence[Path]) -> list[CalibrationText]:
    """``--text FILE ...``: each file is one text, tokenized on its own. Empty or non-UTF-8 is refused."""
    texts: list[CalibrationText] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError("calibration text not found", path, "Pass an existing UTF-8 text file with --text.") from None
        except IsADirectoryError:
            raise UsageError("calibration text is a folder", path, "Pass a UTF-8 text file with --text.") from None
        except UnicodeDecodeError:
            raise UsageError("calibration text is not UTF-8", path, "Save it as UTF-8.") from None
        except OSError as err:
            raise UsageError(f"cannot read the calibration text ({err.strerror})", path, "Pass a readable UTF-8 text file.") from None
        if not text.strip():
            raise UsageError("calibration text is empty", path, "Pass a file with text in the model's languages.")
        texts.append(CalibrationText(Path(path).name, str(path), text))
    return texts


def heldout_texts(languages: Sequence[str], folder: Path | None = None) -> list[CalibrationText]:
    """The held-out text of each language, in the order given; an unknown language is refused."""
    available = load_heldout(folder)
    missing = [lang for lang in languages if lang not in available]
    if missing:
        raise UsageError(
            f"no held-out text for {', '.join(missing)}", folder or default_heldout_dir(),
            f"Choose --lang from {', '.join(available)}, or pass --text FILE.",
        )
    return [CalibrationText(lang, f"heldout/{lang}.txt", available[lang]) for lang in languages]


def parse_languages(spec: str | None) -> list[str] | None:
    """``"zh-Hant,en"`` to a list; None or ``auto`` means: choose from the tokenizer."""
    if spec is None or spec.strip().lower() == "auto":
        return None
    langs = [s.strip() for s in spec.split(",") if s.strip()]
    if not langs:
        raise UsageError("--lang is empty", fix="Pass languages such as zh-Hant,en, or auto.")
    return list(dict.fromkeys(langs))


def default_languages(encode: Callable[[str], list[int]], folder: Path | None = None) -> list[str]:
    """English plus the held-out languages the tokenizer was built for (see the module docstring)."""
    available = load_heldout(folder)
    rate: dict[str, float] = {}
    for lang, text in available.items():
        if lang == "en":
            continue
        chars = len("".join(text.split()))
        if chars:
            rate[lang] = len(encode(text)) / chars
    known = {lang for lang, r in rate.items() if r < KNOWN_SCRIPT_TOKENS_PER_CHAR}
    if {"zh-Hant", "zh-Hans"} <= known:
        if rate["zh-Hant"] <= SCRIPT_MARGIN * rate["zh-Hans"]:
            known.discard("zh-Hans")
        elif rate["zh-Hans"] <= SCRIPT_MARGIN * rate["zh-Hant"]:
            known.discard("zh-Hant")
    chosen = [lang for lang in available if lang in known]
    return chosen + (["en"] if "en" in available else [])
