"""Is the reply a copy or a close paraphrase of an earlier turn? The echo flag of dialogue metrics.

A model that repeats the user's message back scores well on every surface measure (distinct-2,
no repeated 4-grams, right language, ended by itself), and if the message held the fact a recall
check looks for, on recall too. So a reply is compared with each of the user's messages so far
(the one it answers and the earlier ones) and flagged as an echo when almost all of what it says
is already in one of them. The model's own earlier replies are not compared: a correct answer
often repeats what the model said before ("you live in Taipei"), and repetition within a reply
is measured separately.

Units are what :func:`cvlocal.evaluation.textstats.tokens` counts (a CJK character, a Latin word),
with Hangul split into syllables (Korean endings change in a paraphrase: 있어서 -> 있으셔서), after
NFKC, lower case and OpenCC t2s, and with the words of ``assets/eval/patterns/echo_equivalents.tsv``
folded together (a reply that says "you're allergic" to "I'm allergic" still copies it). The
overlap is measured on sets of units and of adjacent unit pairs, so a reply that repeats the
message twice is as much an echo as one copy; the reply must also repeat most of the turn, so a
short answer that restates one fact from it ("Of course, your name is Priya") is not an echo. Thresholds are in ``echo.json`` beside it (tuned on
the dev split of the labelled set).
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from cvlocal.assets import asset_path
from cvlocal.errors import UsageError
from cvlocal.evaluation.languages import is_hangul, to_simplified
from cvlocal.evaluation.textstats import tokens

PATTERNS_DIR = asset_path("eval", "patterns")


@dataclass(frozen=True)
class EchoSettings:
    """When a reply counts as an echo of a turn (see ``assets/eval/patterns/echo.json``)."""

    min_units: int  # replies shorter than this (in distinct units) are never echoes
    unigram: float  # share of the reply's distinct units found in the turn
    bigram: float  # share of the reply's distinct unit pairs found in the turn
    max_new_units: int  # at most this many distinct units of the reply may be new
    coverage: float  # share of the turn's distinct units the reply repeats (a short answer that
    # restates one fact, "your name is Priya", does not copy the turn)


@dataclass(frozen=True)
class Echo:
    """The most similar earlier turn and the overlap measured against it."""

    is_echo: bool
    turn: int | None  # index into the turns compared, or None when there were none
    unigram: float
    bigram: float
    new_units: int


@lru_cache(maxsize=2)
def load_settings(directory: Path = PATTERNS_DIR) -> tuple[EchoSettings, dict[str, str]]:
    """Thresholds and word equivalences from the assets (read once per process)."""
    settings_path = Path(directory) / "echo.json"
    table_path = Path(directory) / "echo_equivalents.tsv"
    fix = "restore assets/eval/patterns from the repository"
    try:
        raw = json.loads(settings_path.read_text(encoding="utf-8"))
        settings = EchoSettings(int(raw["min_units"]), float(raw["unigram"]), float(raw["bigram"]),
                                int(raw["max_new_units"]), float(raw["coverage"]))
    except FileNotFoundError as err:
        raise UsageError("echo settings missing", settings_path, fix) from err
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"echo settings unreadable ({err})", settings_path, fix) from err
    table: dict[str, str] = {}
    for number, line in enumerate(table_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        word, sep, unit = line.partition("\t")
        if not sep or not word or not unit:
            raise UsageError(f"line {number}: expected word<TAB>class", table_path, fix)
        table[word.strip()] = unit.strip()
    return settings, table


def units(text: str) -> list[str]:
    """The comparison units of a text (see the module docstring)."""
    _, table = load_settings()
    text = to_simplified(unicodedata.normalize("NFKC", text).lower()).replace("’", "'")
    out: list[str] = []
    for token in tokens(text):
        if any(is_hangul(ch) for ch in token):
            out.extend(token)
        else:
            out.append(table.get(token, token))
    return out


def _pairs(seq: Sequence[str]) -> set[tuple[str, str]]:
    return {(seq[i], seq[i + 1]) for i in range(len(seq) - 1)}


def find_echo(reply: str, turns: Sequence[str]) -> Echo:
    """Compare a reply with each earlier turn; an echo when one turn contains nearly all of it."""
    settings, _ = load_settings()
    reply_units = units(reply)
    reply_set, reply_pairs = set(reply_units), _pairs(reply_units)
    best = Echo(False, None, 0.0, 0.0, len(reply_set))
    if not reply_set:
        return best
    for index, turn in enumerate(turns):
        turn_units = units(turn)
        turn_set = set(turn_units)
        unigram = len(reply_set & turn_set) / len(reply_set)
        bigram = len(reply_pairs & _pairs(turn_units)) / len(reply_pairs) if reply_pairs else unigram
        new = len(reply_set - turn_set)
        coverage = len(reply_set & turn_set) / len(turn_set) if turn_set else 0.0
        flagged = (len(reply_set) >= settings.min_units and unigram >= settings.unigram
                   and bigram >= settings.bigram and new <= settings.max_new_units
                   and coverage >= settings.coverage)
        if flagged and not best.is_echo or (flagged == best.is_echo and unigram + bigram > best.unigram + best.bigram):
            best = Echo(flagged, index, unigram, bigram, new)
    return best


def is_echo(reply: str, turns: Sequence[str]) -> bool:
    """Whether the reply copies or closely paraphrases one of ``turns``."""
    return find_echo(reply, turns).is_echo
