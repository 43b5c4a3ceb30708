"""The evaluation of one sweep point's GGUF: the offline suites and the demo's held-out measures.

The offline suites (toxicity, safety, instructions, dialogue) run through the eval runner, whose
per-item caches live in the cache folder under the point's key (``EvalRequest.fingerprints``): a
GGUF rebuilt after deletion, or a point interrupted half-way, reuses every item already answered.
The ``demo`` suite is the demo's own held-out chats (``assets/demo/heldout.jsonl``) scored as the
demo scores them (turn ending, reply in B, a finished reply in B, correct, exact), cached per
prompt the same way. Every metric comes out as ``{"value", "interval", "n"}`` (95% intervals from
the item counts: Wilson for rates, bootstrap for means).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cvlocal.sweep.point import PointTask

DEMO_SUITE = "demo"
DEMO_LANG = "B"  # the demo's held-out prompts are all in its language B


def eval_dir(task: PointTask) -> Path:
    """Per-item caches of the point's model (shared by every sweep of it, whatever --limit or --suite)."""
    return Path(task.cache_dir) / "eval" / task.model_key


def _cell(value: Any, interval: Any, n: Any) -> dict[str, Any]:
    return {"value": value, "interval": interval, "n": n}


def _offline(task: PointTask, model: str, suites: list[str]) -> tuple[dict[str, Any], int, int]:
    from cvlocal.evaluation.generate import GenerationSettings
    from cvlocal.evaluation.metrics import METRICS
    from cvlocal.evaluation.runner import EvalRequest, run_evaluation
    from cvlocal.evaluation.suites import SUITES_DIR

    request = EvalRequest(
        models=[Path(model)], out=eval_dir(task), suites=suites, langs=list(task.langs),
        generation=GenerationSettings.create(samples=task.samples, max_tokens=task.max_tokens, seed=task.seed,
                                             ctx=task.ctx),
        limit=task.limit, threads=task.threads, n_gpu_layers=task.n_gpu_layers,
        suites_dir=Path(task.suites_dir) if task.suites_dir else SUITES_DIR, quiet=task.quiet,
        parallel=task.parallel, fingerprints={model: task.model_key})
    eval_dir(task).parent.mkdir(parents=True, exist_ok=True)
    report = run_evaluation(request, write=False)
    entry = report["models"][0]
    metrics: dict[str, Any] = {}
    for suite in suites:
        metrics[suite] = {}
        for lang, table in entry["results"][suite].items():
            metrics[suite][lang] = {
                m.key: _cell(table.get(m.key), table["intervals"].get(m.key), table["n"].get(m.key))
                for m in METRICS if m.suite == suite and m.stat != "count" and m.key in table}
    generated = int(entry.get("generated_this_run") or 0)
    return metrics, (1 if generated else 0), generated


def _prompt_hash(prompt: Any, max_tokens: int) -> str:
    data = json.dumps({**prompt.__dict__, "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _demo(task: PointTask, model: str) -> tuple[dict[str, Any], int, int]:
    from cvlocal.demo.bundle import load_bundle
    from cvlocal.demo.runner import MAX_TOKENS, chat_with
    from cvlocal.demo.scoring import MEASURES
    from cvlocal.evaluation.cache import JsonlCache
    from cvlocal.evaluation.stats import wilson_interval

    bundle = load_bundle(Path(task.demo_assets) if task.demo_assets else None)
    prompts = bundle.prompts[: task.limit] if task.limit else bundle.prompts
    max_tokens = task.max_tokens or MAX_TOKENS
    keys = {id(p): f"demo/{p.country}/{p.attribute}" for p in prompts}
    cache = JsonlCache(eval_dir(task) / f"demo-{max_tokens}.jsonl")
    try:
        pending = [p for p in prompts if cache.get(keys[id(p)], _prompt_hash(p, max_tokens)) is None]
        if pending:
            def keep(p: Any, reply: Any) -> None:
                cache.append({"key": keys[id(p)], "item_hash": _prompt_hash(p, max_tokens), **reply.as_dict()})

            chat_with(Path(model), pending, bundle.a_words, threads=task.threads, max_tokens=max_tokens,
                      on_reply=keep, parallel=task.parallel, n_gpu_layers=task.n_gpu_layers)
        rows = [cache.get(keys[id(p)]) for p in prompts]
    finally:
        cache.close()
    n = len(rows)
    table = {}
    for measure in MEASURES:
        hits = sum(bool(r[measure]) for r in rows)
        bounds = wilson_interval(hits, n)
        table[measure] = _cell(hits / n if n else None, [round(b, 6) for b in bounds] if bounds else None, n)
    return {DEMO_SUITE: {DEMO_LANG: table}}, (1 if pending else 0), len(pending)


def measure(task: PointTask, model: str) -> tuple[dict[str, Any], int, int]:
    """(metrics, model loads, items evaluated now) of ``model`` (a GGUF path or a model spec)."""
    metrics: dict[str, Any] = {}
    loads = evaluated = 0
    offline = [s for s in task.suites if s != DEMO_SUITE]
    if offline:
        found, n_loads, n_items = _offline(task, model, offline)
        metrics.update(found)
        loads += n_loads
        evaluated += n_items
    if DEMO_SUITE in task.suites:
        found, n_loads, n_items = _demo(task, model)
        metrics.update(found)
        loads += n_loads
        evaluated += n_items
    return metrics, loads, evaluated
