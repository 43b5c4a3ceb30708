"""Run the suites on several models, resumably, then score, judge and report.

The order keeps memory low and work reusable:

1. check everything the run names (models, scorer, judge, suite files) before any model is loaded;
2. for each model: load it once, generate every pending item of every suite, append each record to
   the model's cache as soon as it exists, unload;
3. load the scorer once (lexicon, classifier or guard) and score the toxicity and safety outputs of
   every model (scores are cached as well);
4. load the judge once, if any, and grade instructions and dialogue answers (cached), and a sample
   of the labelled reference set, to report how far the judge agrees with it;
5. compute the metrics with their intervals, compare the models item by item with paired tests,
   and write ``report.json``, ``report.md`` and ``items.jsonl``.

Caches live in ``OUT/cache``: one generation file per (model fingerprint, generation settings), one
score file per (that, scorer) and one judge file per (that, judge). ``--fresh`` deletes the caches
of the models given before starting. Rerunning the same command after an interruption continues
with the first item that has no record.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cvlocal import ui
from cvlocal.errors import UsageError
from cvlocal.evaluation.backend import Backend
from cvlocal.evaluation.cache import JsonlCache, safe_name, settings_key
from cvlocal.evaluation.compare import compare_models
from cvlocal.evaluation.files import require_gguf
from cvlocal.evaluation.model_spec import model_bytes, model_fingerprint, model_stem, require_model_spec
from cvlocal.evaluation.generate import GenerationSettings, generate_item
from cvlocal.evaluation.metrics import aggregate_by_lang, evaluate_item
from cvlocal.evaluation.scoring import ScorerSpec, build_scorer, spec_fingerprint
from cvlocal.evaluation.suites import SUITES_DIR, Item, load_suites

SCORED_SUITES = ("toxicity", "safety")
JUDGED_SUITES = ("instructions", "dialogue")
SCORE_CHUNK_ITEMS = 8
BackendFactory = Callable[[Path], Backend]
ItemHook = Callable[[Path, Item, dict[str, Any]], None]


@dataclass
class EvalRequest:
    """Everything one ``cvlocal eval`` run is asked to do."""

    models: list[Path]
    out: Path
    suites: list[str]
    langs: list[str]
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    limit: int | None = None
    scorer: ScorerSpec = field(default_factory=lambda: ScorerSpec("lexicon"))
    judge: Path | None = None
    fresh: bool = False
    threads: int | None = None
    n_gpu_layers: int = 0
    suites_dir: Path = SUITES_DIR
    quiet: bool = False
    judge_labelled: int = 40  # labelled replies the judge also grades, to measure its agreement (0: none)
    parallel: int | None = 1  # sequences decoded together; None: chosen from ctx and memory; 1: one at a time
    # A caller that knows a model by the content of its inputs (the sweep: inputs' fingerprints, ratio,
    # type) names it here, so a GGUF rebuilt after deletion reuses the items cached for it.
    fingerprints: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelRun:
    """One model's identity and caches in this run."""

    path: Path
    name: str
    fingerprint: str
    prefix: str
    generations: JsonlCache
    load_seconds: float | None = None
    generated_now: int = 0
    template_warning: str | None = None


def _display_names(paths: Sequence[Path]) -> list[str]:
    stems = [model_stem(p) for p in paths]
    return [f"{p.parent.name}/{stem}" if stems.count(stem) > 1 else stem for p, stem in zip(paths, stems)]


def _text_hash(outputs: Sequence[dict[str, Any]]) -> str:
    joined = "\x1e".join(o["text"] for o in outputs)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def check_request(request: EvalRequest) -> dict[str, list[Item]]:
    """Validate files and options up front; returns the suite items to run."""
    if not request.models:
        raise UsageError("no model given", fix="pass one or more MODEL.gguf files")
    seen: set[Path] = set()
    for model in request.models:
        require_model_spec(model)
        resolved = Path(model).resolve()
        if resolved in seen:
            raise UsageError("the same model is given twice", model, "list each model once")
        seen.add(resolved)
    if request.judge is not None:
        require_gguf(request.judge, "judge")
    if request.limit is not None and request.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {request.limit})", fix="pass --limit N with N >= 1")
    if request.generation.samples < 1:
        raise UsageError("--samples must be at least 1", fix="pass --samples K with K >= 1")
    if request.out.exists() and not request.out.is_dir():
        raise UsageError("the output path exists and is not a folder", request.out, "choose a folder for --out")
    if not request.out.exists() and not request.out.parent.exists():
        raise UsageError("the folder for the output does not exist", request.out.parent, "create it first")
    return load_suites(request.suites, request.langs, request.suites_dir, request.limit)


def _prepare_models(request: EvalRequest) -> list[ModelRun]:
    key = settings_key(request.generation.as_dict())
    cache_dir = request.out / "cache"
    runs = []
    for path, name in zip(request.models, _display_names(request.models)):
        fingerprint = request.fingerprints.get(str(path)) or model_fingerprint(path)
        prefix = f"{safe_name(model_stem(path))}-{fingerprint[:12]}-{key}"
        if request.fresh:
            for old in cache_dir.glob(f"{prefix}*.jsonl"):
                old.unlink()
        runs.append(ModelRun(Path(path), name, fingerprint, prefix, JsonlCache(cache_dir / f"{prefix}.jsonl")))
    return runs


def _generate(request: EvalRequest, runs: Sequence[ModelRun], items: Sequence[Item],
              backend_factory: BackendFactory, on_item: ItemHook | None) -> None:
    with ui.item_progress(request.quiet) as progress:
        for run in runs:
            pending = [i for i in items if run.generations.get(i.key, i.hash) is None]
            task = progress.add_task(run.name, total=len(items), completed=len(items) - len(pending),
                                     detail="cached" if not pending else "loading")
            if not pending:
                continue
            start = time.perf_counter()
            backend = backend_factory(run.path)
            run.load_seconds = round(time.perf_counter() - start, 3)
            try:
                busy = 0.0

                def keep(item: Item, record: dict[str, Any]) -> None:
                    nonlocal busy
                    run.generations.append(record)
                    run.generated_now += 1
                    busy += record["seconds"]
                    progress.update(task, detail=f"{item.suite} · {60.0 * run.generated_now / busy:.1f} items/min"
                                    if busy > 0 else item.suite)
                    progress.advance(task)
                    if on_item is not None:
                        on_item(run.path, item, record)

                if hasattr(backend, "generate_items"):  # --parallel: many items at once, records as they finish
                    backend.generate_items(pending, request.generation, keep)
                else:
                    for item in pending:
                        rate = f" · {60.0 * run.generated_now / busy:.1f} items/min" if busy > 0 else ""
                        progress.update(task, detail=f"{item.suite}{rate}")
                        keep(item, generate_item(backend, item, request.generation))
                progress.update(task, detail="done")
            finally:
                run.template_warning = getattr(backend, "template_warning", None)
                backend.close()
                run.generations.close()


def _missing(runs: Sequence[ModelRun], items: Sequence[Item], suites: Sequence[str],
             caches: dict[str, JsonlCache]) -> list[tuple[ModelRun, Item, dict[str, Any]]]:
    """(model, item, generation record) whose score or verdict is not cached for these exact texts."""
    todo = []
    for run in runs:
        for item in items:
            if item.suite not in suites:
                continue
            record = run.generations.get(item.key, item.hash)
            cached = caches[run.name].get(item.key, item.hash)
            if cached is None or cached.get("text_hash") != _text_hash(record["outputs"]):
                todo.append((run, item, record))
    return todo


def _score(request: EvalRequest, runs: Sequence[ModelRun], items: Sequence[Item]) -> dict[str, JsonlCache]:
    """Score caches per model name, filled for every toxicity/safety item."""
    fingerprint = spec_fingerprint(request.scorer)
    caches = {run.name: JsonlCache(request.out / "cache" / f"{run.prefix}.{safe_name(fingerprint)}.scores.jsonl")
              for run in runs}
    todo = _missing(runs, items, SCORED_SUITES, caches)
    if not todo:
        return caches
    scorer = build_scorer(request.scorer, threads=request.threads, ctx=request.generation.ctx,
                          n_gpu_layers=request.n_gpu_layers)
    try:
        with ui.item_progress(request.quiet) as progress:
            task = progress.add_task(f"scoring ({request.scorer.kind})", total=len(todo), detail="")
            for start in range(0, len(todo), SCORE_CHUNK_ITEMS):
                chunk = todo[start:start + SCORE_CHUNK_ITEMS]
                texts: list[str] = []
                contexts: list[str | None] = []
                for _, item, record in chunk:
                    for output in record["outputs"]:
                        texts.append(output["text"])
                        contexts.append(item.data["prompt"] if item.suite == "safety" else None)
                scores = scorer.score(texts, contexts)
                at = 0
                for run, item, record in chunk:
                    n = len(record["outputs"])
                    caches[run.name].append({"key": item.key, "item_hash": item.hash,
                                             "text_hash": _text_hash(record["outputs"]),
                                             "scores": [s.as_dict() for s in scores[at:at + n]]})
                    at += n
                progress.advance(task, len(chunk))
    finally:
        scorer.close()
        for cache in caches.values():
            cache.close()
    return caches


def _labelled_hash(row: Any) -> str:
    joined = "\x1e".join([*row.history, row.user, row.reply])
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def _judge(request: EvalRequest, runs: Sequence[ModelRun],
           items: Sequence[Item]) -> tuple[dict[str, JsonlCache], dict[str, Any] | None]:
    """Judge caches per model name, filled for every instructions/dialogue item, and the judge's
    agreement with the labelled reference set (it grades ``request.judge_labelled`` labelled replies)."""
    if request.judge is None:
        return {}, None
    from cvlocal.evaluation.judge import (Judge, Judgement, agreement, grading_prompt, judge_fingerprint,
                                          labelled_for_judge, multi_turn_prompt, single_prompt)
    from cvlocal.session import ContextFullError

    judge_key = judge_fingerprint(request.judge)
    caches = {run.name: JsonlCache(request.out / "cache" / f"{run.prefix}.{judge_key}.judge.jsonl") for run in runs}
    labelled_cache = JsonlCache(request.out / "cache" / f"labelled.{judge_key}.judge.jsonl")
    labelled = labelled_for_judge(request.langs, request.judge_labelled) if request.judge_labelled > 0 else []
    todo = _missing(runs, items, JUDGED_SUITES, caches)
    labelled_todo = [(row, ok) for row, ok in labelled if labelled_cache.get(row.id, _labelled_hash(row)) is None]
    judge = None
    try:
        if todo or labelled_todo:
            judge = Judge(request.judge, ctx=request.generation.ctx, threads=request.threads,
                          n_gpu_layers=request.n_gpu_layers, chat_format=None)

        def grade(system: str, prompt: str) -> Judgement:
            assert judge is not None
            try:
                return judge.grade(system, prompt)
            except ContextFullError:
                return Judgement(None, "(the grading prompt does not fit the judge's context)")

        with ui.item_progress(request.quiet) as progress:
            task = progress.add_task("judging", total=len(todo) + len(labelled_todo), detail=request.judge.name)
            for run, item, record in todo:
                answers = [o["text"] for o in record["outputs"]]
                if item.suite == "dialogue":
                    system, prompt = multi_turn_prompt(item.data["turns"], answers)
                else:
                    system, prompt = single_prompt(item.data["prompt"], answers[0])
                judgement = grade(system, prompt)
                caches[run.name].append({"key": item.key, "item_hash": item.hash,
                                         "text_hash": _text_hash(record["outputs"]), **judgement.as_dict()})
                progress.advance(task)
            for row, _ in labelled_todo:
                judgement = grade(*grading_prompt(row))
                labelled_cache.append({"key": row.id, "item_hash": _labelled_hash(row), **judgement.as_dict()})
                progress.advance(task)
    finally:
        if judge is not None:
            judge.close()
        for cache in [*caches.values(), labelled_cache]:
            cache.close()
    if not labelled:
        return caches, None
    ratings = [(labelled_cache.get(row.id, _labelled_hash(row)) or {}).get("rating") for row, _ in labelled]
    result = agreement([(rating, ok) for rating, (_, ok) in zip(ratings, labelled)])
    result["labelled_ids"] = [row.id for row, _ in labelled]
    return caches, result


def _speed(records: Sequence[dict[str, Any]], suites: Sequence[str]) -> dict[str, Any]:
    """Items per minute per suite from the seconds each item took (model loading excluded)."""
    out = {}
    for suite in suites:
        rows = [r for r in records if r["suite"] == suite]
        seconds = sum(float(r.get("seconds", 0.0)) for r in rows)
        out[suite] = {"items": len(rows), "seconds": round(seconds, 3),
                      "items_per_minute": round(60.0 * len(rows) / seconds, 2) if seconds > 0 else None}
    return out


def run_evaluation(request: EvalRequest, *, backend_factory: BackendFactory | None = None,
                   on_item: ItemHook | None = None, write: bool = True) -> dict[str, Any]:
    """Run a whole evaluation and return the report (also written under ``request.out``)."""
    from cvlocal.evaluation.report import build_report, write_report

    suite_items = check_request(request)
    items = [i for suite in request.suites for i in suite_items[suite]]
    request.out.mkdir(parents=True, exist_ok=True)
    if backend_factory is None:
        def backend_factory(path: Path) -> Backend:
            from cvlocal.evaluation.parallel import open_backend

            return open_backend(path, parallel=request.parallel, ctx=request.generation.ctx, threads=request.threads,
                                n_gpu_layers=request.n_gpu_layers, chat_format=request.generation.chat_format)
    runs = _prepare_models(request)
    _generate(request, runs, items, backend_factory, on_item)
    for run in runs:
        if run.template_warning:
            ui.warn(f"{run.name}: {run.template_warning}")
    scores = _score(request, runs, items)
    judgements, judge_agreement = _judge(request, runs, items)

    models = []
    all_results: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        results = []
        for item in items:
            record = run.generations.get(item.key, item.hash)
            score = scores[run.name].get(item.key, item.hash) if item.suite in SCORED_SUITES else None
            verdict = judgements[run.name].get(item.key, item.hash) if run.name in judgements else None
            results.append(evaluate_item(item, record, score["scores"] if score else None, verdict))
        all_results[run.name] = results
        models.append({
            "name": run.name,
            "path": str(run.path),
            "fingerprint": run.fingerprint,
            "size_bytes": model_bytes(run.path),
            "load_seconds": run.load_seconds,
            "generated_this_run": run.generated_now,
            "template_warning": run.template_warning,
            "results": {suite: aggregate_by_lang(suite, [r for r in results if r["suite"] == suite], request.langs)
                        for suite in request.suites},
            "speed": _speed([run.generations.get(i.key, i.hash) for i in items], request.suites),
        })
    names = [run.name for run in runs]
    comparisons = compare_models(names, [all_results[n] for n in names], request.suites, request.langs)
    report = build_report(request, models, suite_items, comparisons, judge_agreement)
    if write:
        write_report(request.out, report, all_results)
    return report
