"""Which of the five suite languages a text is written in, and for Chinese, which script.

A CP model that learned Traditional Chinese can drift into Simplified characters (or into English)
once a chat vector is added, so "is the reply in the user's language and script" is a metric in its
own right. Telling Traditional from Simplified is not guessed from a character list: each Han
character is converted with OpenCC (``t2s`` and ``s2t``, character by character) and a character
that one conversion changes is evidence for the other script. A character that ``s2t`` rewrites
only into a variant that Taiwan and Hong Kong standards write back as the character itself (群 ->
羣 -> 群, checked with OpenCC's ``t2tw`` and ``t2hk``) is not evidence.

OpenCC's ``s2t`` also rewrites some characters that Traditional (Taiwan) text uses every day, such
as 台 (臺), 里 (裡) or 后 (後): in OpenCC's own table (STCharacters) these simplified characters are
listed among their own traditional forms. Those that are common in Taiwan usage are neutral here
(``assets/eval/patterns/shared_han.txt``); the rest of that table's list (广, 种, 万, ...) stays evidence for Simplified.

The decision is by counts of letters per script: Hangul -> ko; Han and kana with at least 5% kana
-> ja; Han -> zh-Hant / zh-Hans / zh (no script evidence either way) / zh-mixed; Latin -> en.
Latin letters are weighted 1/3 (about one syllable) so that a Korean or Chinese reply with a few
English terms is still Korean or Chinese. Quoted material (in 「」, 『』, “”, ‘’ or "") is left
out of the counts when text remains outside the quotes: a Chinese reply that explains
「おはようございます」 is Chinese, not Japanese. The detector tells the five suite languages apart;
any Latin-script text counts as ``en``.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache

from cvlocal.assets import asset_path
from cvlocal.errors import UsageError

LANGS: tuple[str, ...] = ("en", "zh-Hant", "zh-Hans", "ko", "ja")
LANG_NAMES: dict[str, str] = {
    "en": "English",
    "zh-Hant": "Traditional Chinese",
    "zh-Hans": "Simplified Chinese",
    "ko": "Korean",
    "ja": "Japanese",
}

SHARED_HAN_PATH = asset_path("eval", "patterns", "shared_han.txt")

LANG_ALIASES: dict[str, str] = {
    "en": "en", "english": "en",
    "zh-hant": "zh-Hant", "zh-tw": "zh-Hant", "zh-hk": "zh-Hant", "zh-mo": "zh-Hant", "traditional": "zh-Hant",
    "zh-hans": "zh-Hans", "zh-cn": "zh-Hans", "zh-sg": "zh-Hans", "simplified": "zh-Hans",
    "ko": "ko", "ko-kr": "ko", "korean": "ko",
    "ja": "ja", "ja-jp": "ja", "japanese": "ja",
}

KANA_SHARE_FOR_JA = 0.05
SCRIPT_MAJORITY = 0.8
LATIN_WEIGHT = 1.0 / 3.0
QUOTED = re.compile(r'「[^」\n]*」|『[^』\n]*』|“[^”\n]*”|‘[^’\n]*’|"[^"\n]*"')


@dataclass(frozen=True)
class Detection:
    """The detected language and the counts it was decided from."""

    lang: str  # one of LANGS, or "zh" (Chinese, no script evidence), "zh-mixed", "other", "unknown"
    latin: int
    han: int
    kana: int
    hangul: int
    other: int
    traditional: int  # Han characters that only Traditional text uses
    simplified: int  # Han characters that only Simplified text uses

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def is_han(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2EBEF
            or 0xF900 <= cp <= 0xFAFF or 0x30000 <= cp <= 0x3134F)


def is_kana(ch: str) -> bool:
    cp = ord(ch)
    # 0x30FC (prolonged sound mark) is Japanese-only as well; 0x30FB (middle dot) is punctuation.
    return (0x3041 <= cp <= 0x309F or 0x30A0 <= cp <= 0x30FA or 0x30FC <= cp <= 0x30FF
            or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9D)


def is_hangul(ch: str) -> bool:
    cp = ord(ch)
    return 0xAC00 <= cp <= 0xD7A3 or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F or 0xA960 <= cp <= 0xA97F


def is_latin(ch: str) -> bool:
    if not ch.isalpha():
        return False
    cp = ord(ch)
    return cp < 0x250 or 0x1E00 <= cp <= 0x1EFF or 0xFF21 <= cp <= 0xFF5A


@lru_cache(maxsize=1)
def shared_han() -> frozenset[str]:
    """Simplified characters that Taiwan text uses as they are (the asset file, comments skipped)."""
    try:
        lines = SHARED_HAN_PATH.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise UsageError("shared Han character list missing", SHARED_HAN_PATH,
                         "restore assets/eval/patterns from the repository") from err
    return frozenset(ch for line in lines if not line.startswith("#") for ch in line.strip())


@lru_cache(maxsize=4)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def script_evidence(han_chars: str) -> tuple[int, int]:
    """(traditional-only, simplified-only) counts over the Han characters given, via OpenCC."""
    if not han_chars:
        return 0, 0
    unique = sorted(set(han_chars))
    joined = "\n".join(unique)
    to_simp = _converter("t2s").convert(joined).split("\n")
    to_trad = _converter("s2t").convert(joined).split("\n")
    # OpenCC's s2t writes some characters in a form that Taiwan and Hong Kong standards do not use
    # (群 -> 羣, 峰 -> 峯); mapped back through t2tw / t2hk they return to the character itself.
    to_tw = _converter("t2tw").convert("\n".join(to_trad)).split("\n")
    to_hk = _converter("t2hk").convert("\n".join(to_trad)).split("\n")
    if len(to_simp) != len(unique) or len(to_trad) != len(unique) or len(to_tw) != len(unique) or len(to_hk) != len(unique):
        raise RuntimeError("OpenCC changed the number of characters converted one per line")
    trad_only = {c for c, s in zip(unique, to_simp) if s != c}
    shared = shared_han()
    simp_only = {c for c, t, tw, hk in zip(unique, to_trad, to_tw, to_hk)
                 if t != c and tw != c and hk != c and c not in shared and c not in trad_only}
    trad = sum(1 for c in han_chars if c in trad_only)
    simp = sum(1 for c in han_chars if c in simp_only)
    return trad, simp


def detect(text: str) -> Detection:
    """Detect the language (and Chinese script) of ``text``; see the module docstring for the rules."""
    latin = han = kana = hangul = other = 0
    han_chars: list[str] = []
    text = unicodedata.normalize("NFC", text)
    unquoted = QUOTED.sub(" ", text)
    if any(ch.isalpha() for ch in unquoted):
        text = unquoted
    for ch in text:
        if is_han(ch):
            han += 1
            han_chars.append(ch)
        elif is_kana(ch):
            kana += 1
        elif is_hangul(ch):
            hangul += 1
        elif is_latin(ch):
            latin += 1
        elif ch.isalpha():
            other += 1
    trad, simp = script_evidence("".join(han_chars))
    weights = {"latin": latin * LATIN_WEIGHT, "cjk": float(han + kana), "hangul": float(hangul), "other": float(other)}
    lang = "unknown"
    if any(weights.values()):
        top = max(weights, key=lambda k: weights[k])
        if top == "hangul":
            lang = "ko"
        elif top == "latin":
            lang = "en"
        elif top == "other":
            lang = "other"
        elif kana >= KANA_SHARE_FOR_JA * (han + kana):
            lang = "ja"
        else:
            lang = chinese_script(trad, simp)
    return Detection(lang, latin, han, kana, hangul, other, trad, simp)


def chinese_script(trad: int, simp: int) -> str:
    """zh-Hant / zh-Hans when at least 80% of the script-specific characters agree."""
    total = trad + simp
    if total == 0:
        return "zh"
    if trad >= SCRIPT_MAJORITY * total:
        return "zh-Hant"
    if simp >= SCRIPT_MAJORITY * total:
        return "zh-Hans"
    return "zh-mixed"


def matches_lang(detected: str, expected: str) -> bool:
    """Whether a reply detected as ``detected`` is in the ``expected`` suite language.

    Chinese without any script-specific character (e.g. 你好) is accepted for either script: it
    is not evidence of the wrong one. Mixed-script Chinese is not accepted.
    """
    if detected == expected:
        return True
    return expected in ("zh-Hant", "zh-Hans") and detected == "zh"


def normalise_lang(code: str | None) -> str | None:
    """A suite language code from what a person may type (zh-TW, ZH-HANT, ko-KR ...); None if unknown."""
    if not code:
        return None
    return LANG_ALIASES.get(code.strip().lower().replace("_", "-"))


def to_simplified(text: str) -> str:
    """OpenCC t2s, used to compare Chinese strings across scripts (e.g. 臺北 vs 台北 vs 台北)."""
    return _converter("t2s").convert(text)
