"""Which ratio to ship, by a rule that is printed with the answer.

``--pick auto``: among the ratio points whose replies stay in the user's language/script no worse
than CP's (the point's rate at least the lower end of CP's 95% interval), the smallest ratio whose
turn ending and instruction following are each within the 95% interval of the best such point
(at least the lower end of the best point's interval). The smallest, because a smaller ratio
moves the CP model less: what CP learnt is kept and only what the chat behaviour needs is added.
Which metrics play these roles depends on the suites of the sweep (:data:`AUTO_ROLES`).

``--pick METRIC`` (``suite.metric`` or a metric name unique among the suites): the point with the
best value (highest, or lowest for a lower-is-better metric), the smallest ratio on a tie.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from cvlocal.errors import UsageError

# suite -> (metrics that must be within the best point's interval, metrics that must be no worse than CP's)
AUTO_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # the demo's "finished reply in B" already asks for language B; "replies in B" is no guard there,
    # because CP rambles on in B without ever ending its turn
    "demo": (("ended", "b_turn", "correct"), ()),
    "dialogue": (("stop_rate",), ("lang_ok_rate",)),
    "instructions": (("prompt_strict", "stop_rate"), ()),
    "safety": ((), ()),
    "toxicity": ((), ()),
}


def metric_labels(suites: Sequence[str]) -> list[tuple[str, str, bool, str]]:
    """(suite, metric, higher is better, label) of every metric the suites report (counts left out)."""
    from cvlocal.demo.scoring import LABELS, MEASURES
    from cvlocal.evaluation.metrics import METRICS

    out = []
    for suite in suites:
        if suite == "demo":
            out += [("demo", m, True, LABELS[m]) for m in MEASURES]
        else:
            out += [(m.suite, m.key, bool(m.higher_is_better), m.label) for m in METRICS
                    if m.suite == suite and m.stat != "count" and m.key != "judge_mean"]
    return out


def metric_catalogue(suites: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(suite, metric, higher is better) of every metric the suites report."""
    return [(s, k, h) for s, k, h, _ in metric_labels(suites)]


def resolve_metric(name: str, suites: Sequence[str]) -> tuple[str, str, bool]:
    """``suite.metric`` or a unique ``metric`` -> (suite, metric, higher is better); else a usage error."""
    catalogue = metric_catalogue(suites)
    if "." in name:
        suite, _, key = name.partition(".")
        found = [c for c in catalogue if c[0] == suite and c[1] == key]
    else:
        found = [c for c in catalogue if c[1] == name]
    if len(found) == 1:
        return found[0]
    names = ", ".join(f"{s}.{k}" for s, k, _ in catalogue)
    if len(found) > 1:
        raise UsageError(f"--pick {name} is in several suites", fix=f"Name it with its suite: {names}.")
    raise UsageError(f"--pick {name} is not a metric of the suites of this sweep", fix=f"Use auto or one of: {names}.")


def check_pick(pick: str, suites: Sequence[str]) -> None:
    if pick != "auto":
        resolve_metric(pick, suites)


def pooled(metrics: dict[str, Any], suite: str) -> dict[str, Any]:
    """The suite's metrics over all its languages (``all``), or its only language's."""
    table = metrics.get(suite) or {}
    if "all" in table:
        return table["all"]
    return next(iter(table.values()), {})


def _cell(result: dict[str, Any], suite: str, key: str) -> dict[str, Any] | None:
    cell = pooled(result["metrics"], suite).get(key)
    return cell if cell and cell.get("value") is not None else None


def _order(result: dict[str, Any]) -> tuple:
    return (sum(abs(r) for r in result["ratios"]), tuple(result["ratios"]))


@dataclass
class Pick:
    ratios: list[float] | None
    rule: str
    candidates: list[list[float]]

    def as_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "rule": self.rule, "qualifying": self.candidates}


def pick_metric(points: Sequence[dict[str, Any]], suite: str, key: str, higher: bool) -> Pick:
    rated = [(p, _cell(p, suite, key)) for p in points]
    rated = [(p, c) for p, c in rated if c is not None]
    rule = f"{'maximise' if higher else 'minimise'} {suite}.{key}; the smallest ratio on a tie"
    if not rated:
        return Pick(None, rule + " (no point has a value)", [])
    sign = 1 if higher else -1
    best = max(sign * c["value"] for _, c in rated)
    ties = sorted((p for p, c in rated if sign * c["value"] == best), key=_order)
    return Pick(ties[0]["ratios"], rule, [p["ratios"] for p in ties])


def pick_auto(points: Sequence[dict[str, Any]], cp: dict[str, Any] | None, suites: Sequence[str]) -> Pick:
    """The rule in the module docstring, applied to the ratio points' pooled metrics."""
    catalogue = {(s, k): h for s, k, h in metric_catalogue(suites)}
    targets = [(s, k) for s in suites for k in AUTO_ROLES.get(s, ((), ()))[0]]
    guards = [(s, k) for s in suites for k in AUTO_ROLES.get(s, ((), ()))[1]]
    eligible = list(points)
    guard_text = ""
    if guards and cp is not None:
        def keeps(p: dict[str, Any]) -> bool:
            for s, k in guards:
                mine, theirs = _cell(p, s, k), _cell(cp, s, k)
                if mine is None or theirs is None:
                    continue
                low = (theirs.get("interval") or [theirs["value"]])[0]
                if mine["value"] < low:
                    return False
            return True

        eligible = [p for p in points if keeps(p)]
        guard_text = (" among the points whose " + ", ".join(f"{s}.{k}" for s, k in guards)
                      + " is no worse than CP's (at least the lower end of CP's 95% interval)")
        if not eligible:
            eligible = list(points)
            guard_text += " (no point met that, so all points were considered)"
    if not targets:
        targets = [(s, k) for s, k in catalogue if catalogue[(s, k)] is not None][:1]
    rule = ("auto: the smallest ratio whose " + ", ".join(f"{s}.{k}" for s, k in targets)
            + " are each within the 95% interval of the best point's" + guard_text)
    qualifying = []
    for p in sorted(eligible, key=_order):
        ok = True
        for s, k in targets:
            higher = catalogue.get((s, k), True)
            mine = _cell(p, s, k)
            values = [(q, _cell(q, s, k)) for q in eligible]
            values = [(q, c) for q, c in values if c is not None]
            if mine is None or not values:
                continue
            best_point, best = max(values, key=lambda qc: qc[1]["value"] if higher else -qc[1]["value"])
            interval = best.get("interval") or [best["value"], best["value"]]
            if (higher and mine["value"] < interval[0]) or (not higher and mine["value"] > interval[1]):
                ok = False
                break
        if ok:
            qualifying.append(p)
    if not qualifying:
        return Pick(None, rule + " (no point qualifies)", [])
    return Pick(qualifying[0]["ratios"], rule, [p["ratios"] for p in qualifying])


def pick(pick_option: str, points: Sequence[dict[str, Any]], cp: dict[str, Any] | None, suites: Sequence[str]) -> Pick:
    if pick_option == "auto":
        return pick_auto(points, cp, suites)
    suite, key, higher = resolve_metric(pick_option, suites)
    return pick_metric(points, suite, key, higher)
