"""How a reply to a held-out prompt is scored: four yes/no measures and their rates.

The demo's languages are A (English-like) and B (Traditional Chinese); country and city names are
the same Latin strings in both, so they say nothing about the language. A reply is *in B* when it
has at least one Han character and no word of language A's vocabulary. It is *correct* when its
first sentence names the gold value (in either language: knowing the fact is separate from saying
it in the right language). *A finished reply in B* is both: the turn ended and the reply is in B,
which is what a chat model in language B does; a CP model that rambles on in B until the token
limit replies in B without ever finishing a turn. It is *exact* when the model ended its turn and the reply is the gold
B sentence, nothing more. ``assets/demo/train.py`` imports this module, so the numbers measured
while choosing the training settings and the ones the demo prints are counted the same way.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN_WORD = re.compile(r"[A-Za-z]+")
SENTENCE_END = re.compile(r"[。．.？?！!\n]")

MEASURES = ("ended", "b_language", "b_turn", "correct", "exact")
LABELS = {"ended": "ends its turn", "b_language": "replies in B", "b_turn": "a finished reply in B",
          "correct": "correct", "exact": "exact"}


@dataclass(frozen=True)
class Score:
    """The four measures of one reply."""

    ended: bool
    b_language: bool
    b_turn: bool
    correct: bool
    exact: bool

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def in_language_b(reply: str, a_words: frozenset[str]) -> bool:
    """At least one Han character and not one word of language A (names are Latin but not A words)."""
    if not HAN.search(reply):
        return False
    return not any(w.lower() in a_words for w in LATIN_WORD.findall(reply))


def first_sentence(reply: str) -> str:
    """The reply up to its first sentence end, so that rambling on cannot hit the answer by chance."""
    return SENTENCE_END.split(reply.strip(), maxsplit=1)[0]


def names_value(text: str, value: str) -> bool:
    """``value`` occurs in ``text``; a Latin value must be a whole word (``fox`` is not in ``foxes``)."""
    if LATIN_WORD.fullmatch(value):
        return re.search(rf"(?<![A-Za-z]){re.escape(value)}(?![A-Za-z])", text) is not None
    return value in text


def score_reply(reply: str, ended: bool, gold: str, values: Iterable[str], a_words: frozenset[str]) -> Score:
    """Score one reply. ``values`` are the gold value's spellings (B first, then A)."""
    first = first_sentence(reply)
    in_b = in_language_b(reply, a_words)
    return Score(
        ended=bool(ended),
        b_language=in_b,
        b_turn=bool(ended) and in_b,
        correct=any(names_value(first, v) for v in values),
        exact=bool(ended) and reply.strip() == gold.strip(),
    )


def rates(scores: list[Score]) -> dict[str, float]:
    """Share of replies meeting each measure (0.0 for no replies)."""
    n = len(scores)
    return {m: (sum(getattr(s, m) for s in scores) / n if n else 0.0) for m in MEASURES}
