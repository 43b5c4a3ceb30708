"""The evaluation suites: JSONL files under ``assets/eval``, loaded and checked before any model runs.

One file per suite and language, ``<suite>.<lang>.jsonl``, one item per line. Every item has an
``id`` (unique within its suite) and a ``lang`` (the file's language); what else it needs depends on
the suite:

* toxicity: ``prompt``, the start of a sentence to be continued (RealToxicityPrompts style);
* safety: ``prompt``, ``kind`` ("harmful" or "benign": a harmless request that looks like a harmful
  one, for over-refusal) and ``category`` (the Llama Guard 3 hazard S1-S14 the request belongs to or
  resembles);
* instructions: ``prompt`` and ``instructions``, a list of verifiable instructions
  (see :mod:`cvlocal.evaluation.instructions`);
* dialogue: ``turns``, the user's messages in order, and ``recall`` = ``{"turn": N, "expect": [...]}``:
  the reply to user turn N (1-based, after the first) must contain one of the expected strings.

A malformed file stops the run before any model is loaded, with the file and line named.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cvlocal.assets import asset_path
from cvlocal.errors import UsageError
from cvlocal.evaluation.files import jsonl_objects
from cvlocal.evaluation.instructions import validate_instruction
from cvlocal.evaluation.languages import LANGS

SUITES: tuple[str, ...] = ("toxicity", "safety", "instructions", "dialogue")
SUITES_DIR = asset_path("eval")
SAFETY_KINDS = ("harmful", "benign")
HAZARDS = tuple(f"S{i}" for i in range(1, 15))

SUITE_DESCRIPTIONS = {
    "toxicity": "continuations of neutral sentence starts that invite a toxic ending (RealToxicityPrompts style)",
    "safety": "harmful requests (refusal, unsafe compliance) and harmless look-alikes (over-refusal)",
    "instructions": "verifiable instructions checked by code (IFEval style), strict and loose",
    "dialogue": "multi-turn scripts: recall, language and script, template leakage, ending, repetition",
}


@dataclass(frozen=True)
class Item:
    """One suite item. ``hash`` changes when the item's content changes (the cache keys on it)."""

    suite: str
    id: str
    lang: str
    data: dict[str, Any]
    hash: str

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.id}"


def parse_list(text: str | None, known: Sequence[str], what: str, option: str) -> list[str]:
    """A comma-separated option value checked against the known names (None: all of them)."""
    if text is None or text.strip() in ("", "all"):
        return list(known)
    names = [t.strip() for t in text.split(",") if t.strip()]
    folded = {k.lower(): k for k in known}
    out: list[str] = []
    for name in names:
        if name.lower() not in folded:
            raise UsageError(f"unknown {what} {name!r}", fix=f"{option} takes a comma-separated list of {', '.join(known)}")
        if folded[name.lower()] not in out:
            out.append(folded[name.lower()])
    return out


def suite_path(directory: Path, suite: str, lang: str) -> Path:
    return Path(directory) / f"{suite}.{lang}.jsonl"


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _validate(suite: str, lang: str, obj: Any) -> str | None:
    """Why a parsed line is not a valid item of ``suite`` in ``lang``, or None."""
    if not isinstance(obj, dict):
        return "an item must be a JSON object"
    if not _nonempty_str(obj.get("id")):
        return "missing \"id\""
    if obj.get("lang") != lang:
        return f"\"lang\" is {obj.get('lang')!r} but the file is for {lang!r}"
    if suite in ("toxicity", "safety", "instructions") and not _nonempty_str(obj.get("prompt")):
        return "missing \"prompt\""
    if suite == "safety":
        if obj.get("kind") not in SAFETY_KINDS:
            return f"\"kind\" must be one of {', '.join(SAFETY_KINDS)}"
        if obj.get("category") not in HAZARDS:
            return "\"category\" must be a Llama Guard 3 hazard S1-S14"
    if suite == "instructions":
        specs = obj.get("instructions")
        if not isinstance(specs, list) or not specs:
            return "\"instructions\" must be a non-empty list"
        for spec in specs:
            problem = validate_instruction(spec)
            if problem:
                return problem
    if suite == "dialogue":
        turns = obj.get("turns")
        if not isinstance(turns, list) or len(turns) < 2 or not all(_nonempty_str(t) for t in turns):
            return "\"turns\" must be a list of at least two user messages"
        recall = obj.get("recall")
        if not isinstance(recall, dict) or not isinstance(recall.get("turn"), int):
            return "\"recall\" must be {\"turn\": N, \"expect\": [...]}"
        if not 2 <= recall["turn"] <= len(turns):
            return f"\"recall\".turn must be between 2 and {len(turns)}"
        expect = recall.get("expect")
        if not isinstance(expect, list) or not expect or not all(_nonempty_str(e) for e in expect):
            return "\"recall\".expect must be a non-empty list of strings"
    return None


def _item_hash(obj: dict[str, Any]) -> str:
    canonical = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def load_file(path: Path, suite: str, lang: str) -> list[Item]:
    """All items of one suite file, validated; any problem is a UsageError naming file and line."""
    fix = "fix the line (one JSON object per line) or restore the file from the repository"
    items: list[Item] = []
    seen: set[str] = set()
    for number, obj in jsonl_objects(path, fix, f"suite file missing for {suite} in {lang}",
                                     "restore assets/eval from the repository or point --suites-dir at a folder with it"):
        problem = _validate(suite, lang, obj)
        if problem:
            raise UsageError(f"line {number}: {problem}", path, fix)
        if obj["id"] in seen:
            raise UsageError(f"line {number}: duplicate id {obj['id']!r}", path, "give every item its own id")
        seen.add(obj["id"])
        items.append(Item(suite, obj["id"], lang, obj, _item_hash(obj)))
    if not items:
        raise UsageError(f"no items in the {suite} suite for {lang}", path, fix)
    return items


def load_suites(
    suites: Sequence[str],
    langs: Sequence[str],
    directory: Path = SUITES_DIR,
    limit: int | None = None,
) -> dict[str, list[Item]]:
    """Items per suite for the languages asked, in file order; ``limit`` keeps the first N per suite
    and language (so ``--limit 2`` looks at every language, not only the first one)."""
    out: dict[str, list[Item]] = {}
    for suite in suites:
        if suite not in SUITES:
            raise UsageError(f"unknown suite {suite!r}", fix=f"choose from {', '.join(SUITES)}")
        items: list[Item] = []
        ids: set[str] = set()
        for lang in langs:
            if lang not in LANGS:
                raise UsageError(f"unknown language {lang!r}", fix=f"choose from {', '.join(LANGS)}")
            path = suite_path(directory, suite, lang)
            loaded = load_file(path, suite, lang)
            clash = ids.intersection(i.id for i in loaded)
            if clash:
                raise UsageError(f"id {sorted(clash)[0]!r} is used in another language file of {suite}", path,
                                 "give every item of a suite its own id")
            ids.update(i.id for i in loaded)
            items.extend(loaded[:limit] if limit else loaded)
        out[suite] = items
    return out
