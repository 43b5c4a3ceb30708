"""The labelled reference set (``assets/eval/labels``) and how well each detector agrees with it.

Every detector that turns a reply into a yes/no (refusal, harmful compliance, echo, right language
and script) is only worth the number it produces if it agrees with a person reading the reply. The
reference set holds hand-written replies with the labels a careful reader gives them, including the
hard cases (polite refusals without a fixed phrase, partial compliance, a refusal followed by the
harmful content anyway, over-refusal of harmless look-alikes, copies and paraphrases of the user,
code-switching, Traditional vs Simplified). :func:`validate` scores the detectors on it and the
test suite holds them to floors, so a change to a pattern list that breaks a language fails a test.

One JSON object per line, in ``<lang>.jsonl``::

    {"id", "lang", "split": "dev"|"test", "suite": "safety"|"dialogue", "case",
     "kind": "harmful"|"benign" (safety), "prompt" (safety) | "messages" (dialogue, ending with the user),
     "reply", "labels": {"refusal", "harmful_compliance", "echo": bool, "lang": the reply's language}}

Patterns were tuned on the ``dev`` split only; the floors are checked on ``test`` (see the README).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cvlocal.assets import asset_path
from cvlocal.errors import UsageError
from cvlocal.evaluation.files import jsonl_objects
from cvlocal.evaluation.languages import LANGS

LABELS_DIR = asset_path("eval", "labels")
SPLITS = ("dev", "test")
DETECTORS = ("refusal", "harmful_compliance", "echo", "lang_ok")


@dataclass(frozen=True)
class LabelledReply:
    """One hand-labelled reply and the conversation it answers."""

    id: str
    lang: str
    split: str
    suite: str
    case: str
    kind: str | None
    history: tuple[str, ...]  # the user's earlier messages, oldest first, without the current one
    user: str  # the user message the reply answers
    reply: str
    labels: dict[str, Any]
    earlier_replies: tuple[str, ...] = ()  # the assistant's replies to ``history``, in order

    def gold(self, detector: str) -> bool | None:
        """The label for one detector, or None when it does not apply to this reply."""
        if detector == "refusal":
            return bool(self.labels["refusal"]) if self.suite == "safety" else None
        if detector == "harmful_compliance":
            return bool(self.labels["harmful_compliance"]) if self.kind == "harmful" else None
        if detector == "echo":
            return bool(self.labels["echo"])
        if detector == "lang_ok":
            return self.labels["lang"] == self.lang
        raise KeyError(detector)


def _problem(obj: Any, lang: str) -> str | None:
    if not isinstance(obj, dict):
        return "a line must be a JSON object"
    for key in ("id", "reply", "case"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            return f"missing \"{key}\""
    if obj.get("lang") != lang:
        return f"\"lang\" is {obj.get('lang')!r} but the file is for {lang!r}"
    if obj.get("split") not in SPLITS:
        return "\"split\" must be dev or test"
    labels = obj.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(labels.get(k), bool)
                                               for k in ("refusal", "harmful_compliance", "echo")):
        return "\"labels\" needs refusal, harmful_compliance and echo as true/false"
    if not isinstance(labels.get("lang"), str):
        return "\"labels\".lang must name the reply's language"
    if obj.get("suite") == "safety":
        if obj.get("kind") not in ("harmful", "benign") or not isinstance(obj.get("prompt"), str):
            return "a safety reply needs \"kind\" (harmful/benign) and \"prompt\""
    elif obj.get("suite") == "dialogue":
        messages = obj.get("messages")
        if (not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages)
                or messages[-1].get("role") != "user"):
            return "a dialogue reply needs \"messages\" ending with a user message"
    else:
        return "\"suite\" must be safety or dialogue"
    return None


def load_labelled(directory: Path = LABELS_DIR, split: str | None = None,
                  langs: Sequence[str] = LANGS) -> list[LabelledReply]:
    """The labelled replies of the languages given (one split, or both when ``split`` is None)."""
    out: list[LabelledReply] = []
    for lang in langs:
        path = Path(directory) / f"{lang}.jsonl"
        for number, obj in jsonl_objects(path, "fix the line", "labelled reference file missing",
                                         "restore assets/eval/labels from the repository"):
            problem = _problem(obj, lang)
            if problem:
                raise UsageError(f"line {number}: {problem}", path, "fix the line")
            if split is not None and obj["split"] != split:
                continue
            history: tuple[str, ...] = ()
            earlier: tuple[str, ...] = ()
            if obj["suite"] == "safety":
                user = obj["prompt"]
            else:
                texts = [str(m.get("content", "")) for m in obj["messages"] if m.get("role") == "user"]
                history, user = tuple(texts[:-1]), texts[-1]
                earlier = tuple(str(m.get("content", "")) for m in obj["messages"] if m.get("role") == "assistant")
            out.append(LabelledReply(obj["id"], lang, obj["split"], obj["suite"], obj["case"], obj.get("kind"),
                                     history, user, obj["reply"], obj["labels"], earlier))
    return out


def precision_recall(pairs: Iterable[tuple[bool, bool]]) -> dict[str, Any]:
    """Precision, recall and F1 of (predicted, gold) pairs; None where a ratio has no denominator."""
    tp = fp = fn = tn = 0
    for predicted, gold in pairs:
        if predicted and gold:
            tp += 1
        elif predicted:
            fp += 1
        elif gold:
            fn += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else
          0.0 if precision is not None and recall is not None else None)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": tp + fp + fn + tn,
            "precision": precision, "recall": recall, "f1": f1}


Predictor = Callable[[LabelledReply], dict[str, bool]]


def validate(rows: Sequence[LabelledReply], predict: Predictor,
             langs: Sequence[str] = LANGS) -> dict[str, dict[str, dict[str, Any]]]:
    """``{detector: {lang | "all": precision/recall/F1 and counts}}`` of a predictor on labelled rows."""
    predictions = [(row, predict(row)) for row in rows]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for detector in DETECTORS:
        table[detector] = {}
        for lang in ["all", *langs]:
            pairs = [(bool(p[detector]), row.gold(detector)) for row, p in predictions
                     if row.gold(detector) is not None and (lang == "all" or row.lang == lang)]
            if pairs:
                table[detector][lang] = precision_recall(pairs)  # type: ignore[arg-type]
    return table


def misses(rows: Sequence[LabelledReply], predict: Predictor, detector: str) -> list[tuple[LabelledReply, bool]]:
    """The rows where the predictor disagrees with the label (for tuning on the dev split)."""
    out = []
    for row in rows:
        gold = row.gold(detector)
        if gold is None:
            continue
        predicted = bool(predict(row)[detector])
        if predicted != gold:
            out.append((row, predicted))
    return out


def markdown_table(table: dict[str, dict[str, dict[str, Any]]], langs: Sequence[str] = LANGS) -> list[str]:
    """Precision / recall / F1 per detector and language as markdown rows (for README and reports)."""
    def cell(stats: dict[str, Any] | None) -> str:
        if not stats:
            return "–"
        parts = [f"{100 * stats[k]:.0f}" if stats[k] is not None else "–" for k in ("precision", "recall", "f1")]
        return " / ".join(parts)
    lines = ["| detector | all | " + " | ".join(langs) + " |", "|---|---|" + "---|" * len(langs)]
    for detector, per_lang in table.items():
        lines.append(f"| {detector} | " + " | ".join(cell(per_lang.get(lang)) for lang in ["all", *langs]) + " |")
    return lines
