"""How sure a number is: 95% intervals for rates and means, and paired tests between two models.

A suite of 20-50 items cannot tell 40% from 45%, so every rate carries an interval and a
difference between two models is only marked when a paired test on the same items says it is
unlikely to be noise:

* proportions: the Wilson score interval (Wilson 1927), which stays inside [0, 1] and behaves at
  0 and n, unlike the normal approximation;
* means (distinct-2, expected max toxicity, judge score): a percentile bootstrap over the items
  with a fixed seed (the same data always gives the same interval);
* paired binary outcomes (the same item refused by one model and not the other): McNemar's exact
  test, i.e. a two-sided binomial test on the discordant pairs;
* paired means: a paired bootstrap of the mean difference; the p-value is twice the share of
  resampled differences on the far side of zero (Efron & Tibshirani 1993, ch. 16 style), and never
  below the smallest p an exact sign test can reach with that many non-zero differences
  (2 / 2^n), so that a handful of items cannot look decisive.

:func:`items_needed` is the usual sample size for telling two proportions apart (two-sided 5%
level, 80% power, normal approximation for independent samples; paired designs need fewer, so it
is an upper bound for the report's warning).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from statistics import NormalDist, mean
from typing import Any, Sequence

Z95 = NormalDist().inv_cdf(0.975)
ALPHA = 0.05
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20231


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for ``successes`` out of ``n`` (None when n is 0)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError("successes must be between 0 and n")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap 95% interval of the mean of ``values`` (None without values)."""
    data = [float(v) for v in values]
    if not data:
        return None
    if len(set(data)) == 1:
        return data[0], data[0]
    rng = random.Random(seed)
    n = len(data)
    means = sorted(sum(rng.choices(data, k=n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (min(1, 2 * smaller tail))."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedTest:
    """The result of comparing model A with model B on the items both have."""

    test: str
    pairs: int
    difference: float  # A minus B (rate or mean)
    p_value: float
    significant: bool
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool], alpha: float = ALPHA) -> PairedTest:
    """McNemar's exact test on paired yes/no outcomes (same items, same order)."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    p = binomial_two_sided(only_a, only_a + only_b)
    n = len(a)
    difference = (only_a - only_b) / n if n else 0.0
    return PairedTest("McNemar exact", n, difference, p, p < alpha, {"only_a": only_a, "only_b": only_b})


def paired_bootstrap(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
                     samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedTest:
    """Paired bootstrap of the mean difference A - B over items (same items, same order)."""
    if len(a) != len(b):
        raise ValueError("paired values must have the same length")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diffs)
    if n == 0:
        return PairedTest("paired bootstrap", 0, 0.0, 1.0, False, {})
    observed = mean(diffs)
    floor = min(1.0, 2 * 0.5 ** sum(1 for d in diffs if d != 0))
    if all(d == diffs[0] for d in diffs):
        p = 1.0 if diffs[0] == 0 else floor
        return PairedTest("paired bootstrap", n, observed, p, p < alpha, {"interval": [observed, observed]})
    rng = random.Random(seed)
    resampled = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(samples))
    below = sum(1 for d in resampled if d <= 0) / samples
    above = sum(1 for d in resampled if d >= 0) / samples
    p = max(floor, min(1.0, 2 * min(below, above)))
    interval = [resampled[int(0.025 * samples)], resampled[min(samples - 1, int(0.975 * samples))]]
    return PairedTest("paired bootstrap", n, observed, p, p < alpha, {"interval": interval})


def items_needed(p1: float, p2: float, alpha: float = ALPHA, power: float = 0.8) -> int | None:
    """Items per model to tell proportions p1 and p2 apart (two-sided ``alpha``, ``power``)."""
    if p1 == p2:
        return None
    z_a = NormalDist().inv_cdf(1 - alpha / 2)
    z_b = NormalDist().inv_cdf(power)
    variance = p1 * (1 - p1) + p2 * (1 - p2)
    return max(1, math.ceil((z_a + z_b) ** 2 * variance / (p1 - p2) ** 2))
