"""Side by side, is a difference real? Paired tests between models on the same units.

For each metric row (suite, language column, metric), the best model is compared with every other
model on the units both have (the same items, replies or samples): McNemar's exact test for yes/no
units, a paired bootstrap for numbers (:mod:`cvlocal.evaluation.stats`). The row marks a best
model only when every such test has p < 0.05. When the values differ but a test says the
difference may be noise, the row gets a warning with the number of units and, for rates, roughly
how many items it would take to tell the two values apart.
"""
from __future__ import annotations

from typing import Any, Sequence

from cvlocal.evaluation.metrics import METRICS, Metric, metric_units
from cvlocal.evaluation.stats import ALPHA, items_needed, mcnemar_exact, paired_bootstrap

TEST_NAMES = {"proportion": "McNemar exact", "mean": "paired bootstrap"}


def _paired(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[float]]:
    common = sorted(set(a) & set(b))
    return [a[u] for u in common], [b[u] for u in common]


def _points(metric: Metric, value: float) -> str:
    return f"{100 * value:.1f} points" if metric.percent else f"{value:.3f}"


def compare_row(metric: Metric, names: Sequence[str], units: Sequence[dict[str, float]]) -> dict[str, Any] | None:
    """Tests of the best model against each other one for one metric row (None without two models)."""
    values = [sum(u.values()) / len(u) if u else None for u in units]
    present = [i for i, v in enumerate(values) if v is not None]
    if len(present) < 2 or metric.higher_is_better is None or metric.stat == "count":
        return None
    pick = max if metric.higher_is_better else min
    best = pick(present, key=lambda i: values[i])  # type: ignore[arg-type, return-value]
    tests = []
    warnings = []
    for other in present:
        if other == best:
            continue
        a, b = _paired(units[best], units[other])
        test = mcnemar_exact([x >= 0.5 for x in a], [y >= 0.5 for y in b]) if metric.stat == "proportion" \
            else paired_bootstrap(a, b)
        entry = {"a": names[best], "b": names[other], **test.as_dict()}
        tests.append(entry)
        if values[best] != values[other] and not test.significant:
            note = (f"{names[best]} vs {names[other]}: a difference of {_points(metric, abs(values[best] - values[other]))} "
                    f"over {test.pairs} paired units is within noise ({test.test}, p = {test.p_value:.2f})")
            if metric.stat == "proportion":
                needed = items_needed(float(values[best]), float(values[other]))  # type: ignore[arg-type]
                if needed and needed > test.pairs:
                    note += f"; telling them apart would take about {needed} units per model"
            warnings.append(note)
    significant = bool(tests) and all(t["significant"] for t in tests)
    tied = all(values[t] == values[best] for t in present)
    return {"test": TEST_NAMES[metric.stat], "alpha": ALPHA, "best": names[best] if significant and not tied else None,
            "tests": tests, "warnings": warnings}


def compare_models(names: Sequence[str], results: Sequence[Sequence[dict[str, Any]]], suites: Sequence[str],
                   langs: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{suite: {lang | "all": {metric key: row comparison}}}`` over per-item results of each model."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if len(names) < 2:
        return out
    for suite in suites:
        out[suite] = {}
        for lang in ["all", *langs]:
            per_model = [[r for r in rows if r["suite"] == suite and (lang == "all" or r["lang"] == lang)]
                         for rows in results]
            if not any(per_model):
                continue
            units = [metric_units(suite, rows) for rows in per_model]
            rows_out = {}
            for metric in METRICS:
                if metric.suite != suite:
                    continue
                row = compare_row(metric, names, [u.get(metric.key, {}) for u in units])
                if row is not None:
                    rows_out[metric.key] = row
            out[suite][lang] = rows_out
    return out
