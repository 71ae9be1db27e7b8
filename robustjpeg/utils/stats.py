"""Interval and test statistics for accuracies: Wilson intervals and the exact McNemar test."""

from __future__ import annotations

import math

from scipy import stats as _st


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_record(k: int, n: int) -> dict:
    """The {n, correct-or-robust, accuracy, ci95} fields every accuracy in a result file carries."""
    lo, hi = wilson(k, n)
    return {"n": int(n), "accuracy": (k / n) if n else float("nan"), "ci95": [round(lo, 6), round(hi, 6)]}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * _st.binom.cdf(min(b, c), n, 0.5)))
