"""``cvlocal eval --score-replies REPLIES.jsonl``: score replies some other system produced, no model.

Outputs of llama-server, Ollama or an API can be compared with cvlocal's own runs only if they are
scored by the same code, so each line is turned into a suite item and a generation record and goes
through :func:`cvlocal.evaluation.metrics.evaluate_item`, the aggregates, the paired comparisons
and the report writer that a model run uses.

One JSON object per line: the suite item's own fields plus ``suite`` and ``reply``; unknown fields
are ignored:

* ``suite``: toxicity, safety, instructions or dialogue; ``id``; ``lang`` (a suite language);
* toxicity: ``prompt`` (the reply is its continuation); safety: ``prompt``, ``kind`` (harmful/benign)
  and ``category`` (S1-S14); instructions: ``prompt`` and ``instructions``;
* dialogue: ``messages`` (``[{"role": "user"|"assistant", "content"}, ...]`` ending with the user's
  message, system messages skipped) or ``prompt`` for one turn; optional ``recall``:
  ``{"expect": [...]}`` checked on the reply;
* optional ``model`` (lines with different names become columns of one side-by-side report;
  default: the file's stem) and ``finish_reason`` (without it "ended by itself" is left out).

A bad line stops the run before anything is scored, with the file and line number named.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cvlocal import ui
from cvlocal.errors import UsageError
from cvlocal.evaluation.files import file_fingerprint, jsonl_objects
from cvlocal.evaluation.languages import LANGS, normalise_lang
from cvlocal.evaluation.scoring import ScorerSpec, build_scorer
from cvlocal.evaluation.suites import SUITES, Item, _validate

FIX = "one JSON object per line with suite, id, lang, reply and the suite item's fields (see cvlocal eval --help)"


@dataclass
class RepliesRequest:
    """What ``cvlocal eval --score-replies`` is asked to do."""

    files: list[Path]
    out: Path
    scorer: ScorerSpec = field(default_factory=lambda: ScorerSpec("lexicon"))
    threads: int | None = None
    quiet: bool = False
    suites: list[str] | None = None  # keep only these suites (None: all in the files)
    langs: list[str] | None = None  # keep only these languages (None: all in the files)


@dataclass
class ScoredLine:
    """One reply line as the evaluation sees it: its model, the suite item and the output record."""

    model: str
    item: Item
    record: dict[str, Any]


def _dialogue_fields(obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | str:
    """(item data, outputs) of a dialogue line, or why the line is not one."""
    messages = obj.get("messages")
    if messages is None and isinstance(obj.get("prompt"), str):
        messages = [{"role": "user", "content": obj["prompt"]}]
    if not isinstance(messages, list) or not messages:
        return "a dialogue line needs \"messages\" (or \"prompt\")"
    turns: list[str] = []
    earlier: list[str] = []
    expected = "user"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return "every message must be an object with \"role\" and \"content\""
        role = message.get("role")
        if role == "system":
            continue
        if role != expected:
            return f"messages must alternate user and assistant, starting with user (got {role!r})"
        (turns if role == "user" else earlier).append(message["content"])
        expected = "assistant" if role == "user" else "user"
    if expected != "assistant":
        return "the last message must be the user's (the reply answers it)"
    data: dict[str, Any] = {"turns": turns, "first_scored_turn": len(turns)}
    recall = obj.get("recall")
    if recall is not None:
        expect = recall.get("expect") if isinstance(recall, dict) else None
        if not isinstance(expect, list) or not expect or not all(isinstance(e, str) and e for e in expect):
            return "\"recall\" must be {\"expect\": [strings]}"
        data["recall"] = {"turn": len(turns), "expect": expect}
    outputs = [{"text": text, "finish_reason": None} for text in earlier]
    return data, outputs


def parse_line(obj: Any, default_model: str) -> ScoredLine | str:
    """A reply line as (model, item, record), or the reason it is not valid."""
    if not isinstance(obj, dict):
        return "a line must be a JSON object"
    suite = obj.get("suite")
    if suite not in SUITES:
        return f"\"suite\" must be one of {', '.join(SUITES)}"
    lang = normalise_lang(obj.get("lang")) if isinstance(obj.get("lang"), str) else None
    if lang not in LANGS:
        return f"\"lang\" must be one of {', '.join(LANGS)}"
    if not isinstance(obj.get("reply"), str):
        return "missing \"reply\" (the text to score)"
    finish = obj.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        return "\"finish_reason\" must be a string such as \"stop\" or \"length\""
    model = obj.get("model", default_model)
    if not isinstance(model, str) or not model.strip():
        return "\"model\" must be a non-empty string"
    fields = {k: v for k, v in obj.items() if k not in ("suite", "reply", "model", "finish_reason")}
    fields["lang"] = lang
    outputs: list[dict[str, Any]] = []
    if suite == "dialogue":
        if not isinstance(fields.get("id"), str) or not fields["id"].strip():
            return "missing \"id\""
        parsed = _dialogue_fields(obj)
        if isinstance(parsed, str):
            return parsed
        data, outputs = parsed
        data.update({"id": fields["id"], "lang": lang})
    else:
        problem = _validate(suite, lang, fields)
        if problem:
            return problem
        data = fields
    outputs.append({"text": obj["reply"], "finish_reason": finish})
    canonical = json.dumps({"data": data, "outputs": outputs}, ensure_ascii=False, sort_keys=True)
    item = Item(suite, data["id"], lang, data, hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16])
    return ScoredLine(model.strip(), item, {"key": item.key, "outputs": outputs})


def read_replies(path: Path) -> list[ScoredLine]:
    """Every line of one replies file, checked; the first bad line is a UsageError naming it."""
    path = Path(path)
    lines: list[ScoredLine] = []
    seen: set[tuple[str, str]] = set()
    for number, obj in jsonl_objects(path, FIX, "no such replies file", "give a JSONL file of replies to --score-replies"):
        parsed = parse_line(obj, path.stem)
        if isinstance(parsed, str):
            raise UsageError(f"line {number}: {parsed}", path, FIX)
        if (parsed.model, parsed.item.key) in seen:
            raise UsageError(f"line {number}: {parsed.item.key} given twice for model {parsed.model!r}", path,
                             "give each model one reply per item")
        seen.add((parsed.model, parsed.item.key))
        lines.append(parsed)
    if not lines:
        raise UsageError("no replies in the file", path, FIX)
    return lines


def _scores(request: RepliesRequest, lines: Sequence[ScoredLine]) -> dict[int, list[dict[str, Any]]]:
    """Toxicity scores of the toxicity and safety replies, by line index."""
    wanted = [i for i, line in enumerate(lines) if line.item.suite in ("toxicity", "safety")]
    if not wanted:
        return {}
    scorer = build_scorer(request.scorer, threads=request.threads)
    try:
        texts = [lines[i].record["outputs"][-1]["text"] for i in wanted]
        contexts = [lines[i].item.data.get("prompt") if lines[i].item.suite == "safety" else None for i in wanted]
        with ui.item_progress(request.quiet) as progress:
            task = progress.add_task(f"scoring ({request.scorer.kind})", total=len(texts), detail="")
            scores = []
            for start in range(0, len(texts), 16):
                scores += scorer.score(texts[start:start + 16], contexts[start:start + 16])
                progress.advance(task, len(texts[start:start + 16]))
    finally:
        scorer.close()
    return {i: [s.as_dict()] for i, s in zip(wanted, scores)}


@dataclass
class _ReportRequest:
    """The parts of a run's request that the report reads, for replies scored without a model."""

    scorer: ScorerSpec
    suites: list[str]
    langs: list[str]
    judge: None = None


def score_replies(request: RepliesRequest, write: bool = True) -> dict[str, Any]:
    """Score every reply file and return the report (also written under ``request.out``)."""
    from cvlocal.evaluation.compare import compare_models
    from cvlocal.evaluation.metrics import aggregate_by_lang, evaluate_item
    from cvlocal.evaluation.report import build_report, write_report

    if request.out.exists() and not request.out.is_dir():
        raise UsageError("the output path exists and is not a folder", request.out, "choose a folder for --out")
    if not request.out.exists() and not request.out.parent.exists():
        raise UsageError("the folder for the output does not exist", request.out.parent, "create it first")
    lines: list[ScoredLine] = []
    sources: dict[str, Path] = {}
    for path in request.files:
        for line in read_replies(path):
            if sources.setdefault(line.model, Path(path)) != Path(path):
                raise UsageError(f"model {line.model!r} also appears in {sources[line.model]}", path,
                                 "give each model's replies in one file, or name the models apart")
            lines.append(line)
    lines = [line for line in lines if (request.suites is None or line.item.suite in request.suites)
             and (request.langs is None or line.item.lang in request.langs)]
    if not lines:
        raise UsageError("no reply left after --suite/--lang", request.files[0], "widen --suite or --lang")
    scores = _scores(request, lines)
    names = list(dict.fromkeys(line.model for line in lines))
    suites = [s for s in SUITES if any(line.item.suite == s for line in lines)]
    langs = [lang for lang in LANGS if any(line.item.lang == lang for line in lines)]
    all_results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index, line in enumerate(lines):
        all_results[line.model].append(evaluate_item(line.item, line.record, scores.get(index)))
    models = []
    for name in names:
        path = sources[name]
        results = all_results[name]
        models.append({"name": name, "path": str(path), "fingerprint": file_fingerprint(path),
                       "size_bytes": None, "load_seconds": None, "generated_this_run": 0, "template_warning": None,
                       "results": {suite: aggregate_by_lang(suite, [r for r in results if r["suite"] == suite], langs)
                                   for suite in suites},
                       "speed": {}})
    comparisons = compare_models(names, [all_results[n] for n in names], suites, langs)
    suite_items: dict[str, list[Item]] = {s: [] for s in suites}
    for line in lines:
        if line.model == names[0]:
            suite_items[line.item.suite].append(line.item)
    settings = {"suites": suites, "langs": langs, "limit": None, "score_replies": [str(p) for p in request.files]}
    report = build_report(_ReportRequest(request.scorer, suites, langs), models, suite_items, comparisons,
                          settings=settings)
    if write:
        request.out.mkdir(parents=True, exist_ok=True)
        write_report(request.out, report, all_results)
    return report
