"""Paired per-round ratios for ``bench/ops.py``: is mixkit faster or slower than a peer, or
is the difference within the machine's run-to-run noise?

The libraries of a row are timed round-robin, so round ``r`` of every library ran at nearly the
same moment: the per-round ratio ``mine[r] / theirs[r]`` cancels the machine's drift. Its
median gets a distribution-free confidence interval from order statistics (the number of
ratios below the true median is Binomial(n, 1/2)), so no normality is assumed and nothing is
random. A verdict says whether the interval lies above 1 (slower), below 1 (faster), or
contains 1 (within noise).
"""

from __future__ import annotations

import math
import statistics

__all__ = ["MIN_COVERAGE", "median_interval", "paired_ratio", "verdict"]


def _binomial_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n if k >= 0 else 0.0


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval of the median of ``values``.

    Returns ``(lo, hi, coverage)``: the order statistics ``x_(j)`` and ``x_(n + 1 - j)`` for
    the largest ``j`` whose exact coverage ``1 - 2 P(Bin(n, 1/2) <= j - 1)`` is at least
    ``level``; with too few values for that (n < 6 at 95%), the range and its coverage.

    Example:
        >>> median_interval([float(v) for v in range(1, 11)])[:2]
        (2.0, 9.0)
    """
    if not values:
        raise ValueError("values must not be empty")
    xs, n = sorted(values), len(values)
    j = 1
    while j + 1 <= n // 2 and 1.0 - 2.0 * _binomial_cdf(j, n) >= level:
        j += 1
    return xs[j - 1], xs[n - j], 1.0 - 2.0 * _binomial_cdf(j - 1, n)


def paired_ratio(mine: list[float], theirs: list[float]) -> dict | None:
    """Median and 95% interval of ``mine[r] / theirs[r]`` over the rounds both were timed in
    (``None`` without a common round or with a zero time)."""
    rounds = min(len(mine), len(theirs))
    if rounds == 0 or any(t <= 0 for t in theirs[:rounds]):
        return None
    ratios = [a / b for a, b in zip(mine[:rounds], theirs[:rounds], strict=True)]
    lo, hi, coverage = median_interval(ratios)
    return {"median": statistics.median(ratios), "ci_lo": lo, "ci_hi": hi, "coverage": coverage, "rounds": rounds}


#: the least coverage an interval needs for a verdict (5 rounds give 93.75%; fewer, no verdict)
MIN_COVERAGE = 0.9


def verdict(paired: dict | None) -> str:
    """``"slower"``, ``"faster"`` or ``"within noise"`` from a :func:`paired_ratio`; ``"few
    rounds"`` when its interval covers less than :data:`MIN_COVERAGE` (``""`` without one)."""
    if not paired:
        return ""
    if paired["coverage"] < MIN_COVERAGE:
        return "few rounds"
    if paired["ci_lo"] > 1.0:
        return "slower"
    if paired["ci_hi"] < 1.0:
        return "faster"
    return "within noise"
