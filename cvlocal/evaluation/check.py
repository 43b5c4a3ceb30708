"""``check_reply``: the evaluation's per-reply checks for one text, for the chat REPL's ``/check``.

It runs what needs no model: the lexicon toxicity score, language and script detection, template
leakage, repetition, the refusal detector and (when the finish reason is known) whether the reply
ended by itself. Importing it loads no torch or transformers.
"""
from __future__ import annotations

from typing import Any

from cvlocal.evaluation.languages import normalise_lang
from cvlocal.evaluation.lexicon import default_lexicon
from cvlocal.evaluation.metrics import reply_checks
from cvlocal.evaluation.refusal import find_refusal
from cvlocal.evaluation.scoring import TOXIC_THRESHOLD


def check_reply(text: str, lang: str | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    """Checks of one reply.

    Returns a dict with ``toxicity`` (lexicon score 0..1), ``toxic`` (score >= 0.5), ``toxic_terms``,
    ``scorer`` ("lexicon"), ``detected_lang``, ``lang`` (the expected one or None), ``lang_ok``
    (None when no language was expected), ``leakage`` (markers found), ``distinct_2``,
    ``repeated_4gram_rate``, ``refusal`` (the refusal phrase found, or None), ``finish_reason`` and
    ``ended`` (True/False, None when unknown).
    """
    expected = normalise_lang(lang)
    lexicon_score = default_lexicon().score(text)
    checks = reply_checks(text, expected or "", finish_reason)
    refusal = find_refusal(text)
    return {
        "toxicity": round(lexicon_score.score, 4),
        "toxic": lexicon_score.score >= TOXIC_THRESHOLD,
        "toxic_terms": sorted({m.text for m in lexicon_score.matches}),
        "scorer": "lexicon",
        "detected_lang": checks["detected_lang"],
        "lang": expected,
        "lang_ok": checks["lang_ok"] if expected else None,
        "leakage": checks["leakage"],
        "distinct_2": checks["distinct_2"],
        "repeated_4gram_rate": checks["repeated_4gram_rate"],
        "refusal": refusal.phrase if refusal else None,
        "finish_reason": finish_reason,
        "ended": None if finish_reason is None else finish_reason == "stop",
    }
