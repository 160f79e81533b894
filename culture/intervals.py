"""Uncertainty for every share and mean the toolkit prints.

- :func:`wilson_interval`: a binomial share (k of n quizzes correct).
- :func:`bootstrap_interval`: any statistic of per-sample values
  (scipy.stats.bootstrap, percentile method).
- :func:`paired_interval`: the mean difference of two measurements on the
  same samples (ablated vs clean on the same quizzes), bootstrapped over
  samples, so the shared quiz-to-quiz variation cancels.
- :func:`share`: a share with its Wilson interval as a JSON-ready dict.
- :class:`Resampler`: one set of bootstrap resamples of a group of samples,
  shared by every statistic of that group (means, pooled ratios such as the
  cross-entropy per cell, paired differences), so a table of many metrics
  costs one resampling instead of one scipy call per number.

All intervals are 95% by default; JSON carries them as ``[low, high]``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Z95 = 1.959963984540054


def _z(confidence: float) -> float:
    """The normal quantile of a two-sided ``confidence`` interval (statistics.NormalDist: no scipy)."""
    from statistics import NormalDist

    return Z95 if confidence == 0.95 else NormalDist().inv_cdf(0.5 + confidence / 2)


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
    # exact ends at k = 0 and k = n (centre -/+ half is 0 / 1 there, up to rounding)
    low = np.where((n_ > 0) & (k > 0), np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where((n_ > 0) & (k < n_), np.clip(centre + half, 0.0, 1.0), 1.0)
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


class Resampler:
    """Percentile bootstrap over ``n`` samples with one fixed set of
    resamples, reused for every statistic of those samples.

    Our own few lines rather than ``scipy.stats.bootstrap`` (which
    :func:`bootstrap_interval` uses): ablation tables need thousands of
    intervals over the same quizzes, and with the resamples drawn once as a
    matrix of multiplicities ``(n_resamples, n)`` each statistic is one
    matrix-vector product; the tests check it against scipy.
    Statistics are *pooled ratios* ``sum(num) / sum(den)`` (a mean when
    ``den`` is 1), the form of every per-cell metric over quizzes; a paired
    difference is the ratio of the per-sample differences.
    """

    def __init__(self, n: int, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95):
        self.n = int(n)
        self.confidence = float(confidence)
        rng = np.random.default_rng(seed)
        b = int(n_resamples)
        # multiplicities of each sample in each resample (n draws with replacement);
        # small integers, exact in float32 (the resampled sums are float32, the value float64)
        draws = rng.integers(0, max(self.n, 1), size=(b, self.n)) + (np.arange(b) * self.n)[:, None]
        self.counts = np.bincount(draws.ravel(), minlength=b * self.n).reshape(b, self.n).astype(np.float32)

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if x.shape != (self.n,):
            raise ValueError(f"expected {self.n} samples, got shape {x.shape}")
        return x

    def pooled(self, statistic: Callable, *arrays) -> dict:
        """``{"value", "ci95"}`` of ``statistic(sum(a1), sum(a2), ...)``, a
        function of per-sample sums (vectorised: it also gets arrays of
        resampled sums). Value None when it is not finite on the samples."""
        xs = [self._check(a) for a in arrays]
        if self.n == 0:
            return {"value": None, "ci95": [None, None]}
        with np.errstate(invalid="ignore", divide="ignore"):
            value = float(statistic(*[x.sum() for x in xs]))
            stats = np.asarray(statistic(*[self.counts @ x.astype(np.float32) for x in xs]), dtype=float)
        if not math.isfinite(value):
            return {"value": None, "ci95": [None, None]}
        stats = stats[np.isfinite(stats)]
        alpha = (1 - self.confidence) / 2
        low, high = np.quantile(stats, [alpha, 1 - alpha]) if len(stats) else (value, value)
        return {"value": value, "ci95": [float(low), float(high)]}

    def ratio(self, num, den=None) -> dict:
        """``{"value", "ci95"}`` of sum(num) / sum(den) (den default 1: the
        mean); value None when sum(den) is 0."""
        den = np.ones(self.n) if den is None else den
        return self.pooled(np.divide, num, den)

    def mean(self, values) -> dict:
        """``{"value", "ci95"}`` of the mean of per-sample values."""
        return self.ratio(values)
