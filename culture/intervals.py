"""Uncertainty for every share and mean the toolkit prints.

- :func:`wilson_interval`: a binomial share (k of n quizzes correct).
- :func:`bootstrap_interval`: any statistic of per-sample values
  (scipy.stats.bootstrap, percentile method).
- :func:`paired_interval`: the mean difference of two measurements on the
  same samples (ablated vs clean on the same quizzes), bootstrapped over
  samples, so the shared quiz-to-quiz variation cancels.
- :func:`share`: a share with its Wilson interval as a JSON-ready dict.

All intervals are 95% by default; JSON carries them as ``[low, high]``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Z95 = 1.959963984540054


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return Z95 if confidence == 0.95 else float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes, n, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion successes / n.

    Scalars give a (low, high) tuple of floats; arrays give two arrays.
    n = 0 gives (0, 1): nothing is known.
    """
    k = np.asarray(successes, dtype=float)
    n_ = np.asarray(n, dtype=float)
    z = _z(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n_ > 0, k / np.maximum(n_, 1), 0.0)
        denom = 1 + z * z / np.maximum(n_, 1)
        centre = (p + z * z / (2 * np.maximum(n_, 1))) / denom
        half = z * np.sqrt(p * (1 - p) / np.maximum(n_, 1) + z * z / (4 * np.maximum(n_, 1) ** 2)) / denom
    low = np.where(n_ > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where(n_ > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def bootstrap_interval(values, statistic: Callable = np.mean, *, confidence: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over per-sample ``values``
    (resampling the first axis), by scipy.stats.bootstrap."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if len(x) < 2 or np.all(x == x[0]):
        v = float(statistic(x)) if len(x) else math.nan
        return v, v
    res = bootstrap((x,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", random_state=np.random.default_rng(seed), vectorized=True, axis=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_interval(a, b, *, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) for measurements paired by sample (the
    same quizzes under two conditions): a bootstrap of the per-sample
    differences."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired samples need equal shapes, got {a_.shape} and {b_.shape}")
    return bootstrap_interval(a_ - b_, np.mean, confidence=confidence, n_resamples=n_resamples, seed=seed)


def share(successes, n, confidence: float = 0.95) -> dict:
    """``{"value", "ci95", "k", "n"}`` for k of n (value None when n = 0)."""
    k, n = int(successes), int(n)
    low, high = wilson_interval(k, n, confidence)
    return {"value": k / n if n else None, "ci95": [low, high], "k": k, "n": n}


def mean_with_interval(values, confidence: float = 0.95, seed: int = 0) -> dict:
    """``{"value", "ci95", "n"}``: the mean of per-sample values with its bootstrap interval."""
    x = np.asarray(values, dtype=float)
    low, high = bootstrap_interval(x, confidence=confidence, seed=seed)
    return {"value": float(x.mean()) if len(x) else None, "ci95": [low, high], "n": int(len(x))}


def format_interval(value, low, high, *, percent: bool = True, digits: int = 1) -> str:
    """``"91.8% [89.1, 94.0]"`` (or plain numbers with ``percent=False``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if percent:
        return f"{100 * value:.{digits}f}% [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"
    return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"
