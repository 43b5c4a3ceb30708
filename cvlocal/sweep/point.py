"""One sweep point as data (:class:`PointTask`) and the function that does it (:func:`run_point`).

A task carries everything one point needs as plain values (paths as strings), so it pickles and
round-trips through JSON: the local executor calls :func:`run_point` in this process, the Ray
executor ships the task to a worker. :func:`run_point` only reads its inputs and writes inside
``task.cache_dir``: the point's GGUF (content-addressed, removed after the evaluation unless
``keep``), the per-item evaluation caches and, once complete, the point's result. A finished point
is never redone: its result is read back from the cache (no model loads).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

KINDS = ("point", "cp", "chat")  # a ratio point, the CP reference, the chat reference
POINT_VERSION = 1  # bump when what a point computes changes (invalidates cached point results)


@dataclass(frozen=True)
class PointTask:
    """Everything one point needs. ``fingerprints`` (of CP, base, chat or vectors) are computed by
    the driver, so that the key names the inputs' content and a worker does not re-hash them."""

    kind: str
    cp: str
    ratios: tuple[float, ...] = ()
    base: str | None = None
    chat: str | None = None
    vectors: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    via: str = "merge"
    outtype: str = "q8_0"
    rank: str = "auto"
    embeddings: str = "auto"
    special_tokens: str = "auto"
    suites: tuple[str, ...] = ("demo",)
    langs: tuple[str, ...] = ()
    limit: int | None = None
    seed: int = 0
    samples: int | None = None
    max_tokens: int | None = None
    ctx: int = 2048
    suites_dir: str | None = None
    demo_assets: str | None = None
    cache_dir: str = "sweep-out/cache"
    threads: int | None = None
    n_gpu_layers: int = 0
    parallel: int | None = 1
    keep: bool = False
    quiet: bool = True

    # what does not change the result: where it runs and how it is shown
    RUNTIME = ("cache_dir", "threads", "n_gpu_layers", "parallel", "keep", "quiet")
    # what is asked of the model, not what the model is: the GGUF and the per-item caches are shared
    # across these (a sweep with a larger --limit reuses every item answered before)
    EVALUATION = ("suites", "langs", "limit", "seed", "samples", "max_tokens", "ctx")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PointTask":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        for name in ("ratios", "vectors", "fingerprints", "suites", "langs"):
            data[name] = tuple(data.get(name) or ())
        return cls(**{k: v for k, v in data.items() if k in names})

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (paths left out: the fingerprints name the content)."""
        data = {k: v for k, v in asdict(self).items() if k not in self.RUNTIME}
        for name in ("cp", "base", "chat", "vectors", "suites_dir", "demo_assets"):
            data.pop(name, None)
        data["version"] = POINT_VERSION
        if self.kind != "point":  # a reference model does not depend on the ratio or how it is applied
            for name in ("ratios", "via", "rank", "embeddings", "special_tokens"):
                data.pop(name, None)
        return data

    def model_identity(self) -> dict[str, Any]:
        """The fields that decide the point's model (its GGUF), whatever it is asked."""
        return {k: v for k, v in self.identity().items() if k not in self.EVALUATION}

    @property
    def key(self) -> str:
        """The point's result: its model and what it is asked."""
        return _digest(self.identity())

    @property
    def model_key(self) -> str:
        """The point's model: names its GGUF and its per-item evaluation caches."""
        return _digest(self.model_identity())

    @property
    def label(self) -> str:
        if self.kind == "cp":
            return "CP"
        if self.kind == "chat":
            return "chat"
        return "r=" + ",".join(f"{r:g}" for r in self.ratios)


def _digest(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def result_path(task: PointTask) -> Path:
    return Path(task.cache_dir) / "points" / f"{task.key}.json"


def read_cached_result(task: PointTask) -> dict[str, Any] | None:
    """The finished point's result if the cache holds it (a cut-off file counts as absent)."""
    try:
        data = json.loads(result_path(task).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == task.key else None


def _write_result(task: PointTask, result: dict[str, Any]) -> None:
    path = result_path(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def run_point(task: PointTask) -> dict[str, Any]:
    """Do one point (build its GGUF, evaluate it, drop the GGUF unless keep) and return its result:
    ``key``, ``kind``, ``label``, ``ratios``, ``metrics`` (suite -> lang -> metric -> value, interval,
    n), ``work`` (bytes written, model loads, items evaluated, whether it came from the cache) and
    ``timings`` (seconds; the only host-dependent part)."""
    from cvlocal.sweep.artifacts import build_point_model, discard_point_model
    from cvlocal.sweep.measure import measure

    started = time.perf_counter()
    cached = read_cached_result(task)
    if cached is not None:
        cached["work"] = {"bytes_written": 0, "model_loads": 0, "items_evaluated": 0, "from_cache": True}
        cached["timings"] = {"build_s": 0.0, "eval_s": 0.0, "total_s": round(time.perf_counter() - started, 3)}
        return cached
    model, written = build_point_model(task)
    built = time.perf_counter()
    metrics, loads, evaluated = measure(task, model)
    evaluated_at = time.perf_counter()
    if not task.keep:
        discard_point_model(task, model)
    result = {
        "key": task.key,
        "model_key": task.model_key,
        "kind": task.kind,
        "label": task.label,
        "ratios": list(task.ratios),
        "metrics": metrics,
        "work": {"bytes_written": written, "model_loads": loads, "items_evaluated": evaluated, "from_cache": False},
        "timings": {"build_s": round(built - started, 3), "eval_s": round(evaluated_at - built, 3),
                    "total_s": round(time.perf_counter() - started, 3)},
    }
    _write_result(task, result)
    return result
