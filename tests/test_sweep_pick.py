"""The pick rule on known numbers, and the ratio parser's refusals (no model needed)."""
from __future__ import annotations

import pytest

from cvlocal.errors import UsageError
from cvlocal.sweep.pick import pick_auto, pick_metric, resolve_metric
from cvlocal.sweep.plan import parse_ratios


def _point(ratio, kind="point", **cells):
    metrics = {}
    for name, (value, lo, hi) in cells.items():
        suite, key = name.split("__")
        metrics.setdefault(suite, {"all": {}})["all"][key] = {"value": value, "interval": [lo, hi], "n": 50}
    return {"kind": kind, "ratios": [ratio] if ratio is not None else [], "metrics": metrics}


def test_auto_takes_the_smallest_ratio_within_the_best_interval_that_keeps_the_language():
    cp = _point(None, "cp", dialogue__stop_rate=(0.1, 0.05, 0.2), dialogue__lang_ok_rate=(0.9, 0.8, 0.95))
    points = [
        # ends too rarely: outside the best point's interval [0.8, 0.95]
        _point(0.25, dialogue__stop_rate=(0.5, 0.4, 0.6), dialogue__lang_ok_rate=(0.9, 0.8, 0.95)),
        # within the interval of the best (0.82 >= 0.8) and keeps the language: the pick
        _point(0.5, dialogue__stop_rate=(0.82, 0.7, 0.9), dialogue__lang_ok_rate=(0.85, 0.75, 0.92)),
        # the best at turn ending, but loses the language (0.6 < 0.8, CP's lower end): not eligible
        _point(1.5, dialogue__stop_rate=(0.95, 0.9, 0.99), dialogue__lang_ok_rate=(0.6, 0.5, 0.7)),
        # best among the eligible ones: its interval sets the bar
        _point(1.0, dialogue__stop_rate=(0.9, 0.8, 0.95), dialogue__lang_ok_rate=(0.88, 0.8, 0.93)),
    ]
    choice = pick_auto(points, cp, ["dialogue"])
    assert choice.ratios == [0.5]
    assert choice.candidates == [[0.5], [1.0]]
    assert "smallest ratio" in choice.rule and "dialogue.stop_rate" in choice.rule
    assert "dialogue.lang_ok_rate is no worse than CP's" in choice.rule


def test_auto_without_an_eligible_point_falls_back_and_says_so():
    cp = _point(None, "cp", dialogue__stop_rate=(0.1, 0.05, 0.2), dialogue__lang_ok_rate=(0.99, 0.98, 1.0))
    points = [_point(1.0, dialogue__stop_rate=(0.9, 0.8, 0.95), dialogue__lang_ok_rate=(0.5, 0.4, 0.6))]
    choice = pick_auto(points, cp, ["dialogue"])
    assert choice.ratios == [1.0] and "all points were considered" in choice.rule


def test_pick_metric_maximises_or_minimises_and_breaks_ties_by_the_smaller_ratio():
    points = [_point(r, dialogue__stop_rate=(v, v, v), dialogue__leakage_rate=(w, w, w))
              for r, v, w in ((1.5, 0.9, 0.0), (1.0, 0.9, 0.3), (0.5, 0.4, 0.0))]
    assert pick_metric(points, "dialogue", "stop_rate", True).ratios == [1.0]
    assert pick_metric(points, "dialogue", "leakage_rate", False).ratios == [0.5]
    assert resolve_metric("leakage_rate", ["dialogue"]) == ("dialogue", "leakage_rate", False)
    assert resolve_metric("demo.b_turn", ["demo"]) == ("demo", "b_turn", True)


@pytest.mark.parametrize("name", ["nonsense", "dialogue.nonsense", "stop_rate"])
def test_unknown_or_ambiguous_metric_is_a_usage_error(name):
    with pytest.raises(UsageError):
        resolve_metric(name, ["dialogue", "instructions"])  # stop_rate is in both: ambiguous


@pytest.mark.parametrize("text", ["", " , ", "a,1", "0,nan", "inf", "1,-inf"])
def test_bad_ratios_are_refused(text):
    with pytest.raises(UsageError):
        parse_ratios(text, "--ratios")


def test_ratios_are_sorted_and_deduplicated():
    assert parse_ratios("1, 0.5,-0,0,1.0", "--ratios") == (0.0, 0.5, 1.0)
