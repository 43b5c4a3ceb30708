"""Intervals and paired tests against known values, and the side-by-side marks they drive."""
from __future__ import annotations

from fractions import Fraction

import pytest

from cvlocal.evaluation.compare import compare_models
from cvlocal.evaluation.judge import agreement, labelled_for_judge
from cvlocal.evaluation.metrics import aggregate
from cvlocal.evaluation.report import table_rows
from cvlocal.evaluation.stats import (binomial_two_sided, bootstrap_interval, items_needed, mcnemar_exact,
                                      paired_bootstrap, wilson_interval)


@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_published_values(successes, n, low, high) -> None:
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(1 - 0.1611, abs=1e-4)  # mirror of 0/20


def test_exact_binomial_and_mcnemar_by_hand() -> None:
    # 1 of 10 discordant pairs: p = 2 * (C(10,0) + C(10,1)) / 2^10.
    assert binomial_two_sided(1, 10) == pytest.approx(float(Fraction(2 * 11, 1024)))
    assert binomial_two_sided(5, 10) == 1.0
    a = [True] * 9 + [False] * 1 + [True] * 5
    b = [False] * 9 + [True] * 1 + [True] * 5
    test = mcnemar_exact(a, b)
    assert (test.detail["only_a"], test.detail["only_b"]) == (9, 1)
    assert test.p_value == pytest.approx(float(Fraction(22, 1024))) and test.significant
    assert test.difference == pytest.approx(8 / 15)


def test_items_needed_is_the_textbook_sample_size() -> None:
    # 50% vs 60%, two-sided 5%, 80% power: (1.96 + 0.8416)^2 * (0.25 + 0.24) / 0.01 = 384.6 -> 385 per group.
    assert items_needed(0.5, 0.6) == 385
    assert items_needed(0.3, 0.3) is None


def test_bootstrap_is_deterministic_and_brackets_the_mean() -> None:
    values = [0.1, 0.4, 0.35, 0.8, 0.5, 0.9, 0.2, 0.6]
    first = bootstrap_interval(values)
    assert first == bootstrap_interval(values)
    assert first[0] < sum(values) / len(values) < first[1]
    assert bootstrap_interval([0.5, 0.5]) == (0.5, 0.5) and bootstrap_interval([]) is None


def test_paired_bootstrap_finds_a_real_shift_and_not_noise() -> None:
    base = [0.2, 0.5, 0.9, 0.4, 0.7, 0.3, 0.6, 0.8, 0.1, 0.5] * 3
    shifted = paired_bootstrap([v + 0.1 for v in base], base)
    assert shifted.significant and shifted.difference == pytest.approx(0.1)
    swapped = paired_bootstrap(base, base[1:] + base[:1])  # same values, paired differently
    assert not swapped.significant
    # One item, however different, is no evidence: p is never below the exact sign test's 2 / 2^n.
    assert paired_bootstrap([1.0], [0.0]).p_value == 1.0
    assert paired_bootstrap([1.0] * 5, [0.0] * 5).p_value == pytest.approx(2 / 2 ** 5)


def _safety_results(refused: list[bool]) -> list[dict]:
    return [{"key": f"safety/s{i}", "suite": "safety", "lang": "en", "kind": "harmful", "refused": r,
             "unsafe_compliance": not r, "echo": False, "finish_reason": "stop"} for i, r in enumerate(refused)]


def _report(names, per_model):
    comparisons = compare_models(names, per_model, ["safety"], ["en"])
    models = [{"name": n, "results": {"safety": {"all": aggregate("safety", rows)}}} for n, rows in zip(names, per_model)]
    return {"models": models, "suites": {"safety": {}}, "comparisons": comparisons,
            "settings": {"langs": ["en"]}, "scorer": {"description": "lexicon"}}


def _terminal(report) -> str:
    """The rich table as the terminal shows it (styles included)."""
    from rich.console import Console

    from cvlocal.evaluation.table import results_table

    console = Console(record=True, width=160, color_system="truecolor", force_terminal=True)
    console.print(results_table(report))
    return console.export_text(styles=True)


def test_a_known_difference_is_marked_and_noise_is_not() -> None:
    # 40 harmful requests: A refuses 30, B refuses 10 of the same ones (20 discordant pairs, all for A).
    a = [True] * 30 + [False] * 10
    b = [True] * 10 + [False] * 30
    report = _report(["A", "B"], [_safety_results(a), _safety_results(b)])
    row = next(r for r in table_rows(report) if r["label"].startswith("refusal"))
    assert row["best"] == [0] and row["test"] == "McNemar exact" and not row["warnings"]
    test = report["comparisons"]["safety"]["all"]["refusal_rate"]["tests"][0]
    assert test["p_value"] == pytest.approx(2 / 2 ** 20)
    assert row["values"][0].startswith("75.0% [")
    shown = _terminal(report)
    assert "75.0% [60–86]" in shown and "p < 0.001" in shown  # Wilson 30/40 = [0.598, 0.858]
    assert "\x1b[1;32m75.0%" in shown  # bold green: the marked best value

    # 20 requests: A refuses 2 more than B (3 vs 1 discordant): no mark, and a warning saying so.
    a = [True] * 10 + [True] * 3 + [False] * 7
    b = [True] * 10 + [False] * 3 + [True] * 1 + [False] * 6
    report = _report(["A", "B"], [_safety_results(a), _safety_results(b)])
    row = next(r for r in table_rows(report) if r["label"].startswith("refusal"))
    assert row["best"] == []
    assert len(row["warnings"]) == 1 and "within noise" in row["warnings"][0] and "20 paired units" in row["warnings"][0]
    assert "McNemar exact, p = 0.62" in row["warnings"][0]  # 2 * (1 + 4) / 16 = 0.625
    assert "\x1b[1;32m" not in _terminal(report)  # nothing marked


def test_judge_agreement_is_mann_whitney_auc() -> None:
    ratings = [(8, True), (9, True), (7, True), (2, False), (7, False), (None, False)]
    out = agreement(ratings)
    # 6 pairs: 8>2, 8>7, 9>2, 9>7, 7>2, 7=7 (half) -> 5.5 / 6.
    assert out["auc"] == pytest.approx(5.5 / 6) and out["unparsable"] == 1
    assert (out["acceptable"], out["unacceptable"], out["rated"]) == (3, 3, 6)
    assert out["auc_interval"][0] <= out["auc"] <= out["auc_interval"][1]
    assert agreement([(5, True), (None, False)])["auc"] is None


def test_the_judge_sample_is_balanced_held_out_and_spans_languages() -> None:
    sample = labelled_for_judge(["en", "ja"], 8)
    assert [ok for _, ok in sample].count(True) == 4 and [ok for _, ok in sample].count(False) == 4
    assert {row.split for row, _ in sample} == {"test"} and {row.lang for row, _ in sample} == {"en", "ja"}
