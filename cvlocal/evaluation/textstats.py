"""Counting units of text the same way in every language: tokens, words, characters, n-grams.

Chinese and Japanese have no spaces, so a Han or kana character is one token; Latin words, digit
runs and Hangul words (eojeol) are one token each. Punctuation is not a token. Every repetition
and length measure in the evaluation goes through :func:`tokens` so that "distinct-2" means the
same thing for an English and a Chinese reply.
"""
from __future__ import annotations

import re
from typing import Sequence

from cvlocal.evaluation.languages import is_han, is_kana

# One token: a CJK ideograph or kana character, or a run of other letters/digits (with ' and -
# inside English words). \w covers Hangul, Latin, digits and Han; Han/kana are split afterwards.
_WORD = re.compile(r"\w+(?:['’\-]\w+)*", re.UNICODE)
REPEAT_N = 4


def tokens(text: str) -> list[str]:
    """Lower-cased tokens: CJK characters one by one, other words whole."""
    out: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group(0)
        buf = []
        for ch in word:
            if is_han(ch) or is_kana(ch):
                if buf:
                    out.append("".join(buf).lower())
                    buf = []
                out.append(ch)
            elif ch != "_":
                buf.append(ch)
            elif buf:
                out.append("".join(buf).lower())
                buf = []
        if buf:
            out.append("".join(buf).lower())
    return out


def ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float | None:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams; None when there is no n-gram."""
    grams = ngrams(tokens(text), n)
    if not grams:
        return None
    return len(set(grams)) / len(grams)


def repeated_ngram_rate(text: str, n: int = REPEAT_N) -> float | None:
    """seq-rep-n (Welleck et al. 2020): 1 - unique n-grams / all n-grams; None when too short.

    0 means no n-gram occurs twice; a reply stuck in a loop approaches 1.
    """
    grams = ngrams(tokens(text), n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def word_count(text: str) -> int:
    """Words as IFEval counts them for spaced languages: whitespace-separated runs with a letter or digit."""
    return sum(1 for w in text.split() if re.search(r"\w", w))


def char_count(text: str) -> int:
    """Characters that carry content (letters, digits, CJK), i.e. not spaces or punctuation.

    Chinese and Japanese length limits ("不超過 50 個字", "50字以内") count these.
    """
    return sum(1 for ch in text if ch.isalnum())
