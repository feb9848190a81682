"""Binomial statistics shared by the evaluation and randomized smoothing: exact
(Clopper–Pearson) confidence bounds and the exact binomial test.

A leaf module (numpy, scipy and torch only).

>>> clopper_pearson(93, 100)            # two-sided 95 % interval of 93/100
>>> clopper_pearson_lower([990], 1000, alpha=0.001)   # one-sided lower bound, vectorised
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

__all__ = ["binom_cdf", "clopper_pearson", "clopper_pearson_lower", "binomial_test_two_sided"]


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact up to rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = torch.arange(k + 1, dtype=torch.float64)
    logs = (
        math.lgamma(n + 1)
        - torch.lgamma(i + 1)
        - torch.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    return min(1.0, float(torch.logsumexp(logs, 0).exp()))


def _solve_decreasing(f, target: float) -> float:
    """The p in [0, 1] with f(p) = target, for f decreasing in p (bisection to 1e-12)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson 1934) two-sided confidence interval for a binomial proportion
    ``k / n``: the ``p`` whose tail probabilities of the observed count are
    ``(1 - level) / 2``. ``(nan, nan)`` when ``n <= 0``.

    >>> clopper_pearson(0, 10)   # (0.0, 0.308...)
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else _solve_decreasing(lambda p: binom_cdf(k - 1, n, p), 1.0 - a)
    hi = 1.0 if k == n else _solve_decreasing(lambda p: binom_cdf(k, n, p), a)
    return (lo, hi)


def clopper_pearson_lower(successes, trials, alpha: float) -> np.ndarray:
    """One-sided ``(1 − α)`` Clopper–Pearson lower confidence bound on a binomial proportion:
    ``Beta.ppf(α; k, n − k + 1)``, and 0 when ``k = 0`` (vectorised over ``successes``).

    It equals the lower end of the two-sided interval at level ``1 − 2α``, which is what Cohen
    et al.'s randomized-smoothing code computes
    (``proportion_confint(k, n, alpha=2α, method="beta")[0]``).
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.broadcast_to(np.asarray(trials, dtype=np.float64), k.shape)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("clopper_pearson_lower: successes must lie in [0, trials]")
    with np.errstate(invalid="ignore"):
        lower = stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1)
    return np.where(k > 0, lower, 0.0)


def binomial_test_two_sided(k, n) -> np.ndarray:
    """Two-sided p-value of the exact binomial test of ``k`` successes in ``n`` trials against
    ``p = ½`` (vectorised): ``min(1, 2·P(X ≤ min(k, n − k)))`` with ``X ~ Bin(n, ½)``, the value
    of ``scipy.stats.binomtest(k, n, 0.5).pvalue`` (the distribution is symmetric)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    tail = stats.binom.cdf(np.minimum(k, n - k), n, 0.5)
    return np.minimum(1.0, 2.0 * tail)
