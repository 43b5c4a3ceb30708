"""Verifiable instructions in the style of IFEval (Zhou et al. 2023), checked by code.

Each instruction in a suite item is ``{"type": NAME, ...parameters}``; :data:`CHECKS` maps the
name to a checker and the parameters it needs. IFEval's two accuracies are computed:

* strict: the response as it is must satisfy the instruction;
* loose: the instruction is followed if any of eight variants of the response satisfies it (the
  response, with its first line removed, with its last line removed, with both removed, and each of
  these four with every ``*`` removed), which forgives "Sure, here is..." preambles, closing
  remarks and markdown emphasis. A variant that is empty after stripping is not tried.

Prompt-level accuracy asks for all instructions of an item to be followed; instruction-level
accuracy counts instructions one by one. The checks follow IFEval's definitions where IFEval has
them (bullet lines start with ``*`` or ``-``; JSON may be wrapped in a ``` fence; highlights are
``*text*`` or ``**text**``) and extend them to Chinese, Korean and Japanese (character limits,
full-width commas, 「」 quotes).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from cvlocal.evaluation.languages import LANGS, detect
from cvlocal.evaluation.textstats import char_count, word_count


@dataclass(frozen=True)
class Check:
    """A checker and the parameters it takes (name -> required Python type)."""

    func: Callable[[str, dict[str, Any]], bool]
    params: dict[str, type]
    description: str


def _is_latin_word(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9' \-]+", word))


def _find(word: str, text: str) -> list[str]:
    """Occurrences of ``word``: whole words for Latin, substrings for CJK/Hangul; case-insensitive."""
    if _is_latin_word(word):
        return re.findall(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text, re.IGNORECASE)
    return re.findall(re.escape(word), text, re.IGNORECASE)


def _bullets(text: str, p: dict[str, Any]) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", text, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, re.MULTILINE)
    return len(stars) + len(dashes) == p["n"]


def _numbered(text: str, p: dict[str, Any]) -> bool:
    return len(re.findall(r"^\s*\d+\s*[.)、．]\s*\S", text, re.MULTILINE)) == p["n"]


def _paragraphs(text: str, p: dict[str, Any]) -> bool:
    chunks = [c for c in re.split(r"\n[ \t\u3000]*\n", text.strip()) if c.strip()]
    return len(chunks) == p["n"]


def _strip_json_fence(text: str) -> str:
    value = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    if value.endswith("```"):
        value = value[:-3]
    return value.strip()


def _json(text: str, p: dict[str, Any]) -> bool:
    try:
        json.loads(_strip_json_fence(text))
    except ValueError:
        return False
    return True


def _json_keys(text: str, p: dict[str, Any]) -> bool:
    try:
        value = json.loads(_strip_json_fence(text))
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in p["keys"])


def _quotation(text: str, p: dict[str, Any]) -> bool:
    value = text.strip()
    pairs = (('"', '"'), ("“", "”"), ("「", "」"), ("『", "』"))
    return len(value) > 1 and any(value.startswith(a) and value.endswith(b) for a, b in pairs)


def _postscript(text: str, p: dict[str, Any]) -> bool:
    marker = p["marker"]
    if marker.upper() == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    elif marker.upper() == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _highlights(text: str, p: dict[str, Any]) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip())
    return count >= p["n"]


def _title(text: str, p: dict[str, Any]) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


def _language(text: str, p: dict[str, Any]) -> bool:
    return detect(text).lang == p["lang"]


CHECKS: dict[str, Check] = {
    "bullets": Check(_bullets, {"n": int}, "exactly n markdown bullet lines (* or -)"),
    "numbered": Check(_numbered, {"n": int}, "exactly n numbered lines (1. 2. ...)"),
    "paragraphs": Check(_paragraphs, {"n": int}, "exactly n paragraphs separated by blank lines"),
    "max_words": Check(lambda t, p: word_count(t) <= p["n"], {"n": int}, "at most n words"),
    "min_words": Check(lambda t, p: word_count(t) >= p["n"], {"n": int}, "at least n words"),
    "max_chars": Check(lambda t, p: char_count(t) <= p["n"], {"n": int},
                       "at most n characters (letters, digits, CJK; not spaces or punctuation)"),
    "min_chars": Check(lambda t, p: char_count(t) >= p["n"], {"n": int}, "at least n characters"),
    "include_keywords": Check(lambda t, p: all(_find(k, t) for k in p["keywords"]), {"keywords": list},
                              "every keyword appears"),
    "forbidden_words": Check(lambda t, p: not any(_find(w, t) for w in p["words"]), {"words": list},
                             "none of the words appears"),
    "keyword_frequency": Check(lambda t, p: len(_find(p["keyword"], t)) >= p["n"], {"keyword": str, "n": int},
                               "the keyword appears at least n times"),
    "language": Check(_language, {"lang": str}, "the whole response is in the language and script"),
    "json": Check(_json, {}, "the whole response is valid JSON (a ``` fence is allowed)"),
    "json_keys": Check(_json_keys, {"keys": list}, "a JSON object with these keys"),
    "start_phrase": Check(lambda t, p: t.strip().lower().startswith(p["phrase"].strip().lower()),
                          {"phrase": str}, "starts with the phrase"),
    "end_phrase": Check(lambda t, p: t.strip().strip('"').lower().endswith(p["phrase"].strip().lower()),
                        {"phrase": str}, "ends with the phrase (nothing after it)"),
    "no_commas": Check(lambda t, p: not re.search(r"[,，﹐､]", t), {}, "no comma (, or ，)"),
    "uppercase": Check(lambda t, p: t.isupper(), {}, "all letters are capitals"),
    "lowercase": Check(lambda t, p: t.islower(), {}, "all letters are lower case"),
    "quotation": Check(_quotation, {}, "wrapped in double quotes (\"\", “”, 「」 or 『』)"),
    "postscript": Check(_postscript, {"marker": str}, "a postscript starting with the marker (e.g. P.S.)"),
    "placeholders": Check(lambda t, p: len(re.findall(r"\[.*?\]", t)) >= p["n"], {"n": int},
                          "at least n [placeholders] in square brackets"),
    "highlights": Check(_highlights, {"n": int}, "at least n *highlighted* sections"),
    "title": Check(_title, {}, "a title wrapped in double angular brackets <<like this>>"),
}


def validate_instruction(spec: Any) -> str | None:
    """Why ``spec`` is not a valid instruction, or None when it is."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return "an instruction must be an object with a \"type\""
    check = CHECKS.get(spec["type"])
    if check is None:
        return f"unknown instruction type {spec['type']!r} (known: {', '.join(sorted(CHECKS))})"
    for name, kind in check.params.items():
        value = spec.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"instruction {spec['type']!r} needs {name!r} as {kind.__name__}"
        if kind is list and (not value or not all(isinstance(v, str) and v for v in value)):
            return f"instruction {spec['type']!r} needs {name!r} as a non-empty list of strings"
        if kind is int and value < 0:
            return f"instruction {spec['type']!r} needs a non-negative {name!r}"
    if spec["type"] == "language" and spec["lang"] not in LANGS:
        return f"instruction 'language' needs lang in {', '.join(LANGS)}"
    extra = set(spec) - set(check.params) - {"type"}
    if extra:
        return f"instruction {spec['type']!r} does not take {', '.join(sorted(extra))}"
    return None


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants of a response, empty ones left out."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, response.replace("*", ""), first, last, both,
                first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]
    return [v for v in variants if v.strip()]


def follows(response: str, spec: dict[str, Any]) -> bool:
    """Strict: the response itself satisfies the instruction."""
    return bool(response.strip()) and CHECKS[spec["type"]].func(response, spec)


def follows_loosely(response: str, spec: dict[str, Any]) -> bool:
    """Loose: some IFEval variant of the response satisfies the instruction."""
    return any(CHECKS[spec["type"]].func(v, spec) for v in loose_variants(response))


def check_response(response: str, instructions: list[dict[str, Any]]) -> dict[str, list[bool]]:
    """Per-instruction strict and loose results for one response."""
    return {
        "strict": [follows(response, spec) for spec in instructions],
        "loose": [follows_loosely(response, spec) for spec in instructions],
    }
