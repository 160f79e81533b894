"""Metrics on all predicted cells and on transform cells (culture.evaluation),
and the shared bootstrap (culture.intervals.Resampler)."""

import math

import numpy as np
import pytest
import torch

from culture import quiz as Q


def _recolour_quiz(k: int):
    """A canonical quiz whose rule recolours a k-cell rectangle (colour 1 -> 2)."""
    a = torch.zeros(10, 10, dtype=torch.long)
    a[0, :k] = 1
    fa = a.clone()
    fa[a == 1] = 2
    return Q.grids_to_quizzes(torch.stack([a, fa, a.clone(), fa.clone()]).unsqueeze(0))


def _logits_for(seq: torch.Tensor, wrong: list[int], confidence: float = 8.0) -> torch.Tensor:
    """(1, 404, 15) logits with the target at +confidence, except at the
    positions in ``wrong`` where token (target + 1) % 11 wins."""
    logits = torch.zeros(1, 404, 15)
    logits[0, torch.arange(404), seq[0]] = confidence
    for p in wrong:
        logits[0, p] = 0.0
        logits[0, p, (int(seq[0, p]) + 1) % 11] = confidence
    return logits


def test_cell_scores_and_metrics_on_a_constructed_quiz():
    from culture.evaluation import cell_metrics, cell_scores

    seq = _recolour_quiz(5)  # 5 transform cells: f(B) row 0, columns 0..4
    predicted, changed = Q.ar_mask(seq), Q.transform_mask(seq)
    assert int(changed.sum()) == 5
    first = 303 + 1  # f(B)'s first cell
    scores = cell_scores(_logits_for(seq, wrong=[first, first + 50]), seq, predicted, changed)
    scores["deterministic"] = torch.tensor([True])
    assert int(scores["n_wrong"]) == 2 and int(scores["transform_n_wrong"]) == 1
    assert int(scores["n_predicted"]) == 100 and int(scores["n_transform"]) == 5
    m = cell_metrics(scores)
    assert m["all_cells"]["cell_accuracy"]["value"] == pytest.approx(98 / 100)
    assert m["transform_cells"]["cell_accuracy"]["value"] == pytest.approx(4 / 5)
    assert m["all_cells"]["grid_accuracy"]["value"] == 0.0 and m["transform_cells"]["grid_accuracy"]["value"] == 0.0
    # cross-entropy per cell by hand: right cells lose -log softmax(8 vs 14 zeros), wrong cells -log softmax(0 ...)
    right = -math.log(math.exp(8) / (math.exp(8) + 14))
    wrong = -math.log(1 / (math.exp(8) + 14))
    assert m["all_cells"]["ce"]["value"] == pytest.approx((98 * right + 2 * wrong) / 100, rel=1e-5)
    assert m["transform_cells"]["ce"]["value"] == pytest.approx((4 * right + wrong) / 5, rel=1e-5)
    assert m["loss"] == m["all_cells"]["ce"]["value"] and m["greedy_accuracy"] == 0.0


def test_change_against_a_baseline_and_loss_recovered():
    from culture.evaluation import cell_metrics, cell_scores, loss_recovered

    seq = _recolour_quiz(8).repeat(6, 1)
    predicted, changed = Q.ar_mask(seq), Q.transform_mask(seq)
    first = 304

    def scores_for(wrong, confidence=8.0):
        s = [cell_scores(_logits_for(seq[:1], wrong, confidence), seq[:1], predicted[:1], changed[:1])
             for _ in range(6)]
        out = {k: torch.cat([x[k] for x in s]) for k in s[0]}
        out["deterministic"] = torch.ones(6, dtype=torch.bool)
        return out

    clean, broken, floor = scores_for([]), scores_for([first]), scores_for(list(range(first, first + 100)))
    m = cell_metrics(broken, baseline=clean)
    change = m["transform_cells"]["change"]
    assert change["grid_accuracy"]["value"] == pytest.approx(-1.0)
    assert change["cell_accuracy"]["value"] == pytest.approx(-1 / 8)
    assert m["transform_cells"]["ce_ratio"] > 1
    rec = loss_recovered(broken, clean, floor)
    for family in ("all_cells", "transform_cells"):
        ce = {k: cell_metrics(s)[family]["ce"]["value"] for k, s in (("p", broken), ("c", clean), ("f", floor))}
        assert rec[family]["value"] == pytest.approx((ce["f"] - ce["p"]) / (ce["f"] - ce["c"]), rel=1e-9)
        assert rec[family]["floor"] == "zero ablation"
    # identical quizzes: no spread
    assert rec["all_cells"]["ci95"][0] == pytest.approx(rec["all_cells"]["value"])


def test_score_quizzes_reads_the_mask_from_the_clean_targets(tmp_path):
    """Noise on the paired grid must not create transform cells."""
    from culture.evaluation import make_test_set, score_quizzes
    from culture.mygpt import MyGPT, PRESETS

    ts = make_test_set(12, tasks=["replace_color"], seed=2, noise=0.3)
    torch.manual_seed(0)
    scores = score_quizzes(MyGPT(PRESETS["17K"]), ts, batch_size=5)
    expected = Q.transform_mask(ts.targets).sum(1)
    assert torch.equal(scores["n_transform"], expected)
    assert not torch.equal(Q.transform_mask(ts.quizzes).sum(1), expected)  # the noise would have mattered


def test_resampler_agrees_with_scipy_bootstrap():
    from scipy.stats import bootstrap

    from culture.intervals import Resampler

    rng = np.random.default_rng(0)
    num, den = rng.exponential(1.0, 300), rng.integers(1, 20, 300).astype(float)
    ours = Resampler(300, n_resamples=4000, seed=1).ratio(num, den)
    ref = bootstrap((num, den), lambda a, b, axis: a.sum(axis) / b.sum(axis), paired=True, vectorized=True,
                    n_resamples=4000, method="percentile", random_state=np.random.default_rng(2))
    assert ours["value"] == pytest.approx(num.sum() / den.sum())
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert ours["ci95"][0] == pytest.approx(ref.confidence_interval.low, abs=0.05 * width)
    assert ours["ci95"][1] == pytest.approx(ref.confidence_interval.high, abs=0.05 * width)
    assert Resampler(0).ratio([], [])["value"] is None


def test_resampler_coverage_is_about_95_percent():
    from culture.intervals import Resampler

    rng = np.random.default_rng(3)
    hits, trials = 0, 400
    for t in range(trials):
        x = rng.exponential(1.0, size=200)  # true mean 1
        lo, hi = Resampler(200, n_resamples=500, seed=t).mean(x)["ci95"]
        hits += lo <= 1.0 <= hi
    assert 0.91 <= hits / trials <= 0.98
