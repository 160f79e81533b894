"""The interval helpers: known binomial cases, coverage on simulated data."""

import numpy as np
import pytest

from culture.intervals import bootstrap_interval, paired_interval, share, wilson_interval


def test_wilson_known_cases():
    # textbook values (Wilson 1927; e.g. Newcombe 1998, table I): 81/263 -> [0.2553, 0.3662]
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4) and high == pytest.approx(0.3662, abs=5e-4)
    # 0 of 10 -> [0, 0.2775]; 10 of 10 -> [0.7225, 1]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_vectorised_matches_scalar():
    ks, ns = np.array([0, 3, 50]), np.array([5, 10, 100])
    lows, highs = wilson_interval(ks, ns)
    for k, n, lo, hi in zip(ks, ns, lows, highs):
        assert (lo, hi) == pytest.approx(wilson_interval(int(k), int(n)))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_wilson_coverage_is_about_95_percent(p):
    rng = np.random.default_rng(0)
    n, trials = 200, 4000
    k = rng.binomial(n, p, size=trials)
    low, high = wilson_interval(k, np.full(trials, n))
    coverage = np.mean((low <= p) & (p <= high))
    assert 0.93 <= coverage <= 0.97


def test_bootstrap_coverage_of_a_mean():
    rng = np.random.default_rng(1)
    hits = 0
    trials = 300
    for t in range(trials):
        x = rng.exponential(1.0, size=200)  # true mean 1
        lo, hi = bootstrap_interval(x, n_resamples=500, seed=t)
        hits += lo <= 1.0 <= hi
    assert 0.90 <= hits / trials <= 0.98


def test_paired_interval_is_narrower_than_unpaired_when_samples_share_variation():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 5, size=300)
    a, b = base + 1.0 + rng.normal(0, 0.1, 300), base + rng.normal(0, 0.1, 300)
    lo, hi = paired_interval(a, b)
    assert lo < 1.0 < hi and hi - lo < 0.1
    with pytest.raises(ValueError):
        paired_interval(a, b[:10])


def test_share_dict():
    s = share(3, 4)
    assert s["value"] == 0.75 and s["k"] == 3 and s["n"] == 4 and s["ci95"][0] < 0.75 < s["ci95"][1]
    assert share(0, 0)["value"] is None
