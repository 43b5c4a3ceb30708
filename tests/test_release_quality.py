"""KL divergence, top-1 agreement, perplexity and windowing against plain loops written here.

The reference computations below use Python floats and explicit loops over the vocabulary (the
way one would check llama-perplexity's numbers by hand), not the vectorized code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cvlocal.release import quality


def _log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    total = sum(math.exp(x - top) for x in row)
    return [x - top - math.log(total) for x in row]


def _argmax_first(row: list[float]) -> int:
    best = 0
    for i in range(1, len(row)):
        if row[i] > row[best]:
            best = i
    return best


def _reference_scores(base_logits: np.ndarray, q_logits: np.ndarray, targets: list[int]):
    klds, nlls, nlls_base, same = [], [], [], []
    for t in range(base_logits.shape[0]):
        p_log = _log_softmax_row([float(x) for x in base_logits[t]])
        q_log = _log_softmax_row([float(x) for x in q_logits[t]])
        kld = 0.0
        for i in range(len(p_log)):
            kld += math.exp(p_log[i]) * (p_log[i] - q_log[i])
        klds.append(kld)
        nlls.append(-q_log[targets[t]])
        nlls_base.append(-p_log[targets[t]])
        same.append(_argmax_first(p_log) == _argmax_first(q_log))
    return klds, nlls, nlls_base, same


@pytest.fixture
def fixed_logits():
    rng = np.random.default_rng(1234)
    tokens, vocab = 240, 53
    base = rng.normal(0, 3, size=(tokens, vocab)).astype(np.float32)
    noisy = (base + rng.normal(0, 0.4, size=base.shape)).astype(np.float32)
    targets = rng.integers(0, vocab, size=tokens)
    return base, noisy, [int(t) for t in targets]


def _score(base, q, targets, dtype=np.float64):
    targets = np.array(targets)
    return quality.compare(quality.reference_rows(base, targets, dtype), q, targets)


def test_per_token_scores_match_loops(fixed_logits):
    base, noisy, targets = fixed_logits
    scores = _score(base, noisy, targets)
    klds, nlls, nlls_base, same = _reference_scores(base, noisy, targets)
    np.testing.assert_allclose(scores.kld, klds, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scores.nll, nlls, rtol=1e-9)
    np.testing.assert_allclose(scores.nll_base, nlls_base, rtol=1e-9)
    assert scores.same_top.tolist() == same
    assert 0 < sum(same) < len(same)  # the noise flips some top-1 tokens, so the check is not vacuous


def test_float32_reference_storage_keeps_the_numbers(fixed_logits):
    base, noisy, targets = fixed_logits
    small = (base + np.random.default_rng(5).normal(0, 0.01, size=base.shape)).astype(np.float32)  # KLD ~ 1e-4
    for q in (noisy, small):
        klds, nlls, _, same = _reference_scores(base, q, targets)
        stored = _score(base, q, targets, np.float32)
        np.testing.assert_allclose(stored.kld, klds, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(stored.nll, nlls, rtol=1e-9)
        assert stored.same_top.tolist() == same


def test_summary_matches_definitions(fixed_logits):
    base, noisy, targets = fixed_logits
    summary = quality.summarize(_score(base, noisy, targets))
    klds, nlls, nlls_base, same = _reference_scores(base, noisy, targets)
    n = len(klds)
    assert summary.tokens == n
    assert summary.mean_kld == pytest.approx(sum(klds) / n, rel=1e-9)
    assert summary.ppl == pytest.approx(math.exp(sum(nlls) / n), rel=1e-9)
    assert summary.ppl_base == pytest.approx(math.exp(sum(nlls_base) / n), rel=1e-9)
    assert summary.ln_ppl_ratio == pytest.approx(sum(nlls) / n - sum(nlls_base) / n, rel=1e-9)
    assert summary.top1 == pytest.approx(sum(same) / n)
    assert summary.max_kld == pytest.approx(max(klds), rel=1e-9)
    # llama.cpp's percentile: sort, then interpolate linearly at fraction * (n - 1).
    ordered = sorted(klds)
    pos = 0.99 * (n - 1)
    low = int(pos)
    expected_p99 = ordered[low] + (pos - low) * (ordered[low + 1] - ordered[low])
    assert summary.p99_kld == pytest.approx(expected_p99, rel=1e-9)
    assert summary.p99_kld == pytest.approx(float(np.percentile(klds, 99)), rel=1e-9)
    middle = (ordered[n // 2 - 1] + ordered[n // 2]) / 2  # n is even: llama.cpp averages the two middle values
    assert summary.median_kld == pytest.approx(middle, rel=1e-9)


def test_standard_errors_as_llama_perplexity_computes_them(fixed_logits):
    # llama-perplexity: mean_and_uncertainty() gives sqrt((sum x^2 / n - mean^2) / (n - 1)) for the KLD,
    # and "Same top p" carries sqrt(p (1 - p) / (n - 1)).
    base, noisy, targets = fixed_logits
    summary = quality.summarize(_score(base, noisy, targets))
    klds, _, _, same = _reference_scores(base, noisy, targets)
    n = len(klds)
    mean = sum(klds) / n
    assert summary.mean_kld_se == pytest.approx(math.sqrt((sum(k * k for k in klds) / n - mean * mean) / (n - 1)), rel=1e-9)
    p = sum(same) / n
    assert summary.top1_se == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-9)
    one = quality.summarize(quality.TokenScores(kld=np.array(klds[:1]), nll=np.array(klds[:1]),
                                                nll_base=np.array(klds[:1]), same_top=np.array(same[:1])))
    assert math.isnan(one.mean_kld_se)  # one token has no spread to estimate


def test_identical_distributions_score_zero_and_full_agreement(fixed_logits):
    base, _, targets = fixed_logits
    base = base.astype(np.float64)
    shifted = base + 7.5  # a constant shift per row leaves the distribution unchanged
    s = quality.summarize(_score(base, shifted, targets))
    assert s.mean_kld == pytest.approx(0.0, abs=1e-9)
    assert s.top1 == 1.0
    assert s.ppl == pytest.approx(s.ppl_base, rel=1e-9)


def test_top1_ties_take_the_first_index():
    base = np.array([[1.0, 3.0, 3.0, 0.0]])
    q = np.array([[1.0, 3.0, 2.0, 0.0]])
    assert _score(base, q, [0]).same_top.tolist() == [True]
    q2 = np.array([[1.0, 2.0, 3.0, 0.0]])
    assert _score(base, q2, [0]).same_top.tolist() == [False]


def test_large_logits_do_not_overflow():
    base = np.array([[1000.0, 990.0, 0.0]])
    q = np.array([[1000.0, 995.0, 0.0]])
    s = _score(base, q, [1])
    p = [1 / (1 + math.exp(-10)), math.exp(-10) / (1 + math.exp(-10))]
    qq = [1 / (1 + math.exp(-5)), math.exp(-5) / (1 + math.exp(-5))]
    expected = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, qq))
    assert np.isfinite(s.kld).all()
    assert s.kld[0] == pytest.approx(expected, rel=1e-6)


def test_windows_as_llama_perplexity_cuts_them():
    tokens = list(range(100, 127))  # 27 tokens, n_ctx 8: three windows, a tail of 3 dropped
    windows = quality.chunk_tokens(tokens, 8, bos=1)
    assert [w.tolist() for w in windows] == [
        [1, 101, 102, 103, 104, 105, 106, 107],
        [1, 109, 110, 111, 112, 113, 114, 115],
        [1, 117, 118, 119, 120, 121, 122, 123],
    ]
    assert [w.tolist() for w in quality.chunk_tokens(tokens, 8, bos=None)][1] == list(range(108, 116))
    assert len(quality.chunk_tokens(tokens, 8, bos=1, max_chunks=2)) == 2
    assert quality.chunk_tokens(tokens[:7], 8, bos=1) == []
    # Second half only: logits at positions 4..6 predict tokens at positions 5..7.
    window = windows[0]
    assert quality.scored_count(8) == 3
    assert quality.scored_targets(window).tolist() == [105, 106, 107]
    logits = np.arange(8)[:, None] * np.ones((1, 5))
    assert quality.scored_logits(logits)[:, 0].tolist() == [4, 5, 6]
    assert quality.scored_count(9) == 4  # odd windows: first = 4, positions 4..7
