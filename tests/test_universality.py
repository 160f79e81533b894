"""Universality: streaming statistics, Gurnee-faithful neurons, tested CKA,
SAE features between floor and ceiling, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from culture.errors import CultureError
from culture.mygpt import GPTConfig, MyGPT
from culture.world import generate_quizzes
from culture.universality import (
    GroupSums,
    ModelRunner,
    StreamingCKA,
    StreamingCorrelation,
    UniversalityError,
    compare_models,
    debiased_cka,
    linear_cka,
    match_features,
    max_correlations,
    plot_report,
    random_orthogonal,
    svcca,
)
from culture.universality.intervals import shares_outside_intervals
from culture.universality.stats import float64_sum
from tests.cli import error_line, heavy_imports, run_cli
from tests.helpers_sources import make_local_source

CFG = GPTConfig(32, 16, 64, 2, 2)
SHAPE = (32, 16, 64, 2, 2)
FAST = dict(cka_permutations=0, n_resamples=100)
#: the fewest tokens a comparison accepts (8 quizzes of 404 positions)
MIN_TOKENS = 8 * 404


def _model(seed: int, cfg: GPTConfig = CFG) -> MyGPT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MyGPT(cfg).eval()


def _permuted_mlp_copy(model: MyGPT, seed: int = 1) -> tuple[MyGPT, list[torch.Tensor]]:
    """A copy computing the same function with the MLP neurons of every layer permuted."""
    from culture.universality import permuted_mlp_copy

    out, perms = permuted_mlp_copy(model, seed)
    q = generate_quizzes(2, seed=0)
    torch.testing.assert_close(out(q), model(q), atol=1e-5, rtol=0)  # the same function
    return out, perms


class _RotatedNeurons(ModelRunner):
    """A model's (or runner's) own recorded MLP activations (post-ReLU),
    rotated by a random orthogonal matrix per layer (a rotated ReLU MLP is not
    the same function, so the recorded activations are rotated)."""

    def __init__(self, model, seed: int = 3):
        self.inner = model if isinstance(model, ModelRunner) else ModelRunner(model, "cpu")
        super().__init__(self.inner.mygpt, "cpu")
        g = torch.Generator().manual_seed(seed)
        self.q = [random_orthogonal(self.inner.d_mlp, g).float() for _ in range(self.inner.n_layers)]

    @property
    def d_mlp(self) -> int:
        return self.inner.d_mlp

    def hook_width(self, name):
        return self.inner.hook_width(name)

    def run(self, tokens, names, pos):
        out = self.inner.run(tokens, names, pos)
        for name in names:
            if name.endswith("mlp.hook_post"):
                layer = int(name.split(".")[1])
                out[name] = out[name] @ self.q[layer].t()
        return out


class _HashNeurons(ModelRunner):
    """A "model" whose MLP activations are high-dimensional and carry nothing
    of the underlying model: ReLU of a fixed random code of (position, every
    token so far), ``width`` neurons per layer, in the order ``perm`` (two
    runners differing only by ``perm`` are copies with permuted neurons).
    Other hooks come from the underlying model."""

    def __init__(self, model, width: int = 256, perm: torch.Tensor | None = None, seed: int = 5):
        super().__init__(model, "cpu")
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(model.config.nb_blocks, 8192, width, generator=g)
        self.weights = torch.randint(1, 8191, (404,), generator=g)
        self.perm = torch.arange(width) if perm is None else perm
        self.width = width

    @property
    def d_mlp(self) -> int:
        return self.width

    def hook_width(self, name):
        return self.width if name.endswith("mlp.hook_post") else super().hook_width(name)

    def run(self, tokens, names, pos):
        out = super().run(tokens, [n for n in names if not n.endswith("mlp.hook_post")] or ["blocks.0.hook_resid_pre"],
                          pos)
        code = (torch.cumsum(tokens * self.weights[: tokens.shape[1]], 1) + torch.arange(tokens.shape[1]) * 31)[:, pos]
        for name in names:
            if name.endswith("mlp.hook_post"):
                layer = int(name.split(".")[1])
                out[name] = torch.relu(self.table[layer][(code * (layer + 3)) % 8192])[..., self.perm]
        return out


def _sae(d_in: int, d_sae: int, hook: str, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
    return sae


def _permuted_sae(sae, perm: torch.Tensor, scale: torch.Tensor | None = None):
    """The same dictionary with features reordered (feature j of the copy is
    feature perm[j]) and, with ``scale``, each feature's activation multiplied
    by scale[j] > 0 (encoder column and bias scaled, decoder row divided)."""
    out = copy.deepcopy(sae)
    s = torch.ones(len(perm)) if scale is None else scale
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc[:, perm] * s)
        out.b_enc.copy_(sae.b_enc[perm] * s)
        out.W_dec.copy_(sae.W_dec[perm] / s[:, None])
    return out


# ------------------------------------------------------------------ statistics


def _data(seed=0, t=1500, a=6, b=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, a, generator=g, dtype=torch.float64) * 3 + 100.0  # large means: cancellation test
    y = torch.randn(t, b, generator=g, dtype=torch.float64) + x[:, :b] * 0.7 - 50.0
    x[:, 1] = 0.0  # never fires
    x[:, 3] = 7.25  # constant
    return x, y


def test_streaming_correlation_equals_dense():
    x, y = _data()
    acc = StreamingCorrelation()
    for s, e in ((0, 1), (1, 300), (300, 301), (301, 1100), (1100, 1500)):  # uneven batches, incl. 1 row
        acc.update(x[s:e], y[s:e])
    with np.errstate(invalid="ignore", divide="ignore"):
        dense = np.corrcoef(x.numpy().T, y.numpy().T)[: x.shape[1], x.shape[1]:]
    got = acc.corr().numpy()
    dead = acc.dead_x().numpy()
    assert dead.tolist() == [False, True, False, True, False, False]
    assert not np.isnan(got).any()
    assert np.all(got[dead] == 0.0)
    np.testing.assert_allclose(got[~dead], dense[~dead], atol=1e-6, rtol=0)
    np.testing.assert_allclose(acc.var_x.numpy(), x.numpy().var(0), atol=1e-9)
    np.testing.assert_allclose(acc.mean_y.numpy(), y.numpy().mean(0), atol=1e-9)
    # symmetric update and float32 products
    sym = StreamingCorrelation()
    f32 = StreamingCorrelation(compute_dtype=torch.float32)
    for s in range(0, 1500, 250):
        sym.update(y[s:s + 250])
        f32.update(x[s:s + 250].float(), y[s:s + 250].float())
    np.testing.assert_allclose(sym.corr().numpy(), np.corrcoef(y.numpy().T), atol=1e-6)
    np.testing.assert_allclose(f32.corr().numpy()[~dead], dense[~dead], atol=1e-5)
    # two halves merged = one pass over everything
    a, b = StreamingCorrelation().update(x[:700], y[:700]), StreamingCorrelation().update(x[700:], y[700:])
    np.testing.assert_allclose(a.merged(b).corr().numpy(), got, atol=1e-9)


def test_streaming_within_groups_equals_dense():
    g = torch.Generator().manual_seed(3)
    t = 2000
    groups = torch.randint(0, 9, (t,), generator=g)
    x = torch.randn(t, 4, generator=g, dtype=torch.float64) + groups[:, None] * torch.tensor([1.0, -2.0, 0.5, 0.0])
    y = torch.randn(t, 3, generator=g, dtype=torch.float64) + (groups[:, None] ** 2) * 0.3 + x[:, :3]
    x[:, 3] = groups * 2.0  # a pure function of the group: dead within groups
    acc = StreamingCorrelation(n_groups=9)
    for s in range(0, t, 333):
        acc.update(x[s:s + 333], y[s:s + 333], groups=groups[s:s + 333])
    within = acc.within_groups()
    xc, yc = x.clone(), y.clone()
    for k in range(9):
        m = groups == k
        xc[m] -= xc[m].mean(0)
        yc[m] -= yc[m].mean(0)
    dense = np.corrcoef(xc[:, :3].numpy().T, yc.numpy().T)[:3, 3:]
    assert within.dead_x().tolist() == [False, False, False, True]
    np.testing.assert_allclose(within.corr().numpy()[:3], dense, atol=1e-6)
    assert np.all(within.corr().numpy()[3] == 0)
    gx, gy = GroupSums(9).update(x, groups), GroupSums(9).update(y, groups)
    plain = StreamingCorrelation().update(x, y)
    np.testing.assert_allclose(plain.within_groups(gx, gy).corr().numpy(), within.corr().numpy(), atol=1e-12)
    cka = StreamingCKA(n_groups=9)
    for s in range(0, t, 500):
        cka.update(x[s:s + 500], y[s:s + 500], groups=groups[s:s + 500])
    assert cka.cka(within_groups=True) == pytest.approx(linear_cka(xc, yc), abs=1e-6)


def test_units_below_the_within_group_share_are_dead_under_both_precisions():
    """A unit keeping ~1e-6 of its variance within groups (large group means,
    small noise) is dead under float64 and float32 products alike: float32
    cannot resolve it (its rounding, ~1e-7 of the total co-moment, is of the
    order of what is left), and one floor (stats.WITHIN_DEAD_RELATIVE, 1,000
    float32 epsilons) keeps both precisions' figures comparable. Units keeping
    ~1e-3 and ~0.4 are alive under both, with the same within-group
    correlations to 1e-5; in within_groups and CrossTiles alike."""
    from culture.universality.stats import WITHIN_DEAD_RELATIVE, CrossTiles

    assert WITHIN_DEAD_RELATIVE == pytest.approx(1.19e-4, rel=1e-2)
    g = torch.Generator().manual_seed(4)
    t, n_groups = 4000, 50
    groups = torch.randint(0, n_groups, (t,), generator=g)
    effect = torch.randn(n_groups, generator=g, dtype=torch.float64)[groups]
    noise = torch.randn(t, 3, generator=g, dtype=torch.float64)
    x = torch.stack([100 * effect + 0.1 * noise[:, 0], 10 * effect + 0.3 * noise[:, 1], effect + noise[:, 2]], 1)
    corr = {}
    for dtype in (torch.float64, torch.float32):
        acc = StreamingCorrelation(compute_dtype=dtype, n_groups=n_groups)
        for s in range(0, t, 500):
            acc.update(x[s:s + 500], x[s:s + 500], groups=groups[s:s + 500])
        within = acc.within_groups()
        share = (within.m2_x / acc.m2_x).tolist()
        assert share[0] < 1e-5 < 1e-4 < share[1] < 1e-2 < 0.3 < share[2]
        assert within.dead_x().tolist() == within.dead_y().tolist() == [True, False, False]
        tiles = CrossTiles([acc], acc.groups_x, acc.groups_y)
        assert tiles.dead_x.tolist() == tiles.dead_y.tolist() == [True, False, False]
        corr[dtype] = within.corr()
        assert torch.equal(tiles.corr_tile(0, 3), corr[dtype])
    assert torch.allclose(corr[torch.float32], corr[torch.float64], atol=1e-5, rtol=0)


def test_group_sums_of_float32_batches_equal_torch_float64_reductions():
    """float64_sum and GroupSums' reused conversion buffer give torch's own
    float64 reductions to the bit at the batch shapes a comparison streams
    (quizzes x positions x units), batch after batch with different widths."""
    g = torch.Generator().manual_seed(5)
    for n, width in ((16, 1024), (3, 24576), (1, 64), (7, 256), (1000, 8)):
        a = torch.randn(n, 404, width, generator=g) * 30
        for dim in (0, 1):
            assert torch.equal(float64_sum(a, dim), a.sum(dim, dtype=torch.float64))
            assert torch.equal(float64_sum(a > 0, dim), (a > 0).sum(dim, dtype=torch.float64))
        some = [k for k in range(n) if k % 2 == 0]
        assert torch.equal(float64_sum(a, rows=some), a[some].sum(0, dtype=torch.float64))
        assert float64_sum(a, rows=[]).shape == (404, width) and not float64_sum(a, rows=[]).any()
        groups = torch.randint(0, 11, (n * 404,), generator=g)
        flat = a.reshape(n * 404, width)
        expected = torch.zeros(11, width, dtype=torch.float64).index_add_(0, groups, flat.double())
        assert torch.equal(GroupSums(11).update(flat, groups).sums, expected)


def test_cka_streaming_dense_self_and_rotation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1200, 10, generator=g, dtype=torch.float64) @ torch.randn(10, 10, generator=g,
                                                                                dtype=torch.float64) + 5
    y = torch.tanh(x[:, :7] @ torch.randn(7, 8, generator=g, dtype=torch.float64))
    acc = StreamingCKA()
    for s in range(0, 1200, 170):
        acc.update(x[s:s + 170], y[s:s + 170])
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = float((xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    assert acc.cka() == pytest.approx(direct, abs=1e-6)
    assert linear_cka(x, y) == pytest.approx(direct, abs=1e-6)
    assert 0.0 < direct < 1.0
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x @ q * 3.0, y) == pytest.approx(direct, abs=1e-9)
    assert linear_cka(x, torch.zeros(1200, 3)) == 0.0  # constant representation: 0, not NaN
    # debiased CKA: 1 for the same representation up to rotation / scale / shift; ~0 for independent ones,
    # where linear CKA is biased up with few tokens
    assert debiased_cka(x, x @ q * 2 + 7) == pytest.approx(1.0, abs=1e-9)
    a = torch.randn(60, 20, generator=g, dtype=torch.float64)
    b = torch.randn(60, 20, generator=g, dtype=torch.float64)
    assert linear_cka(a, b) > 0.2 and abs(debiased_cka(a, b)) < 0.08


def test_rotation_and_svcca():
    g = torch.Generator().manual_seed(0)
    q = random_orthogonal(16, g)
    np.testing.assert_allclose((q @ q.T).numpy(), np.eye(16), atol=1e-12)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    assert svcca(a, a @ rng.normal(size=(8, 8))) == pytest.approx(1.0, abs=1e-9)  # any invertible map
    assert svcca(a, rng.normal(size=(300, 8))) < 0.2


def test_max_correlations_and_matching():
    corr = torch.tensor([[0.1, 0.9, -0.95], [0.8, 0.2, 0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)
    a, b, ia, ib = max_correlations(corr, return_indices=True)
    assert a.tolist() == [0.9, 0.8, 0.0] and ia.tolist()[:2] == [1, 0]
    assert b.tolist() == [0.8, 0.9, 0.3] and ib.tolist() == [1, 0, 1]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(12, generator=g)
    base = torch.rand(12, 12, generator=g, dtype=torch.float64) * 0.6
    corr = base.clone()
    corr[torch.arange(12), perm] = 1.0
    m = match_features(corr)
    assert m.a_index.tolist() == list(range(12)) and m.b_index.tolist() == perm.tolist()
    assert np.allclose(m.corr, 1.0) and m.share_above(0.5) == 1.0
    alive = torch.ones(12, dtype=torch.bool)
    alive[3] = False
    m = match_features(corr, alive, None)
    assert len(m) == 11 and 3 not in m.a_index.tolist()


def test_block_bootstrap_covers_a_known_correlation_where_a_token_bootstrap_does_not():
    """Quiz-clustered data of known correlation 0.5: the interval from
    resampling blocks of quizzes covers it ~95% of the time; resampling
    tokens as if independent is far too narrow."""
    from culture.universality.stats import block_weights, corr_from_sums, percentile_interval

    rng = np.random.default_rng(0)
    rho, quizzes, per, trials = 0.5, 40, 30, 60
    cover_blocks = cover_tokens = 0
    for trial in range(trials):
        # a shared quiz effect (variance 1) plus token noise (variance 1), correlated rho in both parts
        zq = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=quizzes)
        zt = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=(quizzes, per))
        x, y = zq[:, None, 0] + zt[..., 0], zq[:, None, 1] + zt[..., 1]
        sums = np.stack([x.sum(1), y.sum(1), (x * x).sum(1), (y * y).sum(1), (x * y).sum(1)], 1)  # per quiz
        n = np.full(quizzes, per, dtype=float)
        w = block_weights(quizzes, 300, seed=trial)
        s = w @ sums
        lo, hi = percentile_interval(corr_from_sums(w @ n, *s.T), 0.95)
        cover_blocks += lo <= rho <= hi
        flat = np.stack([x.ravel(), y.ravel(), x.ravel() ** 2, y.ravel() ** 2, (x * y).ravel()], 1)
        wt = block_weights(quizzes * per, 300, seed=trial)
        st = wt @ flat
        lo, hi = percentile_interval(corr_from_sums(wt.sum(1), *st.T), 0.95)
        cover_tokens += lo <= rho <= hi
    assert cover_blocks / trials >= 0.85, cover_blocks
    assert cover_tokens / trials <= 0.75, cover_tokens


def test_cka_permutation_test_is_uniform_on_independent_data():
    from culture.universality.cka import CKAMoments

    rng = np.random.default_rng(1)
    p_lin, p_deb = [], []
    for trial in range(150):
        mom = CKAMoments([[3], [3]], torch.float64, permutations=19, diagonal={(0, 1): [(0, 0)]}, seed=trial)
        for _ in range(2):  # two batches of 60 tokens
            mom.update([torch.as_tensor(rng.normal(size=(60, 3))), torch.as_tensor(rng.normal(size=(60, 3)))])
        p = mom.p_values()[((0, 1), 0, 0)]
        p_lin.append(p["linear"])
        p_deb.append(p["debiased"])
    for p in (np.array(p_lin), np.array(p_deb)):
        assert 0.42 < p.mean() < 0.58, p.mean()
        assert (p <= 0.05).mean() < 0.12 and (p <= 0.5).mean() > 0.35
    # dependent data: p at its floor 1/20
    mom = CKAMoments([[3], [3]], torch.float64, permutations=19, diagonal={(0, 1): [(0, 0)]})
    x = torch.as_tensor(rng.normal(size=(120, 3)))
    mom.update([x, x @ torch.as_tensor(rng.normal(size=(3, 3))) + 0.3 * torch.as_tensor(rng.normal(size=(120, 3)))])
    assert mom.p_values()[((0, 1), 0, 0)]["debiased"] == pytest.approx(0.05)


# ------------------------------------------------------------------ comparison


def test_permuted_mlp_copy_is_fully_universal_and_sae_matching_recovers_permutations_and_rescalings():
    a = _model(0)
    b, perms = _permuted_mlp_copy(a)
    hook = "blocks.1.hook_resid_post"
    sae_a = _sae(32, 48, hook, seed=5)
    sae_perm = torch.randperm(48, generator=torch.Generator().manual_seed(9))
    scale = torch.rand(48, generator=torch.Generator().manual_seed(4)) * 3 + 0.2
    sae_b = _permuted_sae(sae_a, sae_perm, scale)
    report = compare_models([a, b], n_tokens=MIN_TOKENS, random_init=False, saes=[sae_a, sae_b], names=["a", "b"],
                            controls=("position", "none"), **FAST)
    for nl, p in zip(report.neurons, perms):
        assert nl.control == "position" and nl.random is None
        for i, j in ((0, 1), (1, 0)):
            alive = nl.alive(i)
            assert alive.sum() >= 32
            np.testing.assert_allclose(nl.pair_max[(i, j)][alive], 1.0, atol=1e-6)
            assert (nl.pair_layer[(i, j)][alive] == nl.layer).all()  # the partner lives in the same layer
            # excess = 1 - baseline exactly
            np.testing.assert_allclose(nl.excess(i)[alive], 1.0 - nl.mean_baseline(i)[alive], atol=1e-6)
        alive_b = nl.alive(1)
        assert (nl.pair_argmax[(1, 0)][alive_b] == p.numpy()[alive_b]).mean() > 0.9
        # universal exactly where the baseline leaves room: these 64 neurons read a 32-dim residual, so a
        # random rotation of the copy's activations often correlates > 0.5 (a perfect copy is not 100% here)
        for i in (0, 1):
            np.testing.assert_array_equal(nl.universal(i), nl.alive(i) & (nl.mean_baseline(i) < 0.5))
    mat = report.cka.pairs[(0, 1)]
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(report.cka.debiased["position"][(0, 1)]), 1.0, atol=1e-6)
    assert report.cka.labels[0] == ["embed", "0", "1"]
    # SAE: permuted and positively rescaled features match one to one with correlation 1
    pair = report.sae.pairs[(0, 1)]
    mt = pair.matching
    assert len(mt) == (~pair.dead_a).sum() >= 40
    np.testing.assert_allclose(mt.corr, 1.0, atol=1e-6)
    inverse = torch.argsort(sae_perm).numpy()
    assert (mt.b_index == inverse[mt.a_index]).all()
    np.testing.assert_allclose(pair.decoder_cos, 1.0, atol=1e-6)  # same directions (rescaled rows)
    assert pair.svcca == pytest.approx(1.0, abs=1e-6)
    assert pair.svcca_floor[1] < 0.8
    row = report.sae_rows()[0]
    assert row["share_above"] == 1.0 and row["null_share_above"] < 0.5
    assert len(report.sae.families) == len(mt) and all(f.consistent for f in report.sae.families)


def test_copy_with_permuted_high_dimensional_neurons_is_100_percent_universal():
    a = _model(0)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(2))
    report = compare_models([_HashNeurons(a), _HashNeurons(a, perm=perm)], n_tokens=MIN_TOKENS, random_init=False,
                            cka=False, names=["a", "copy"], controls=("none", "position"), **FAST)
    for c, layers in report.controls.items():
        for nl in layers:
            alive = nl.alive(0)
            assert alive.sum() > 250
            np.testing.assert_allclose(nl.pair_max[(0, 1)][alive], 1.0, atol=1e-6)
            np.testing.assert_allclose(nl.excess(0)[alive], 1.0 - nl.mean_baseline(0)[alive], atol=1e-6)
            assert nl.mean_baseline_corr() < 0.35
            assert nl.share_universal() == 1.0 and nl.held_share() == 1.0
            lo, hi = nl.interval("share")
            assert lo <= 1.0 <= hi and lo > 0.98


def test_rotated_activations_are_not_universal_under_the_rotation_baseline():
    """The model against its own MLP activations rotated (same information, no
    shared basis): max-corr is matched by the rotated baseline, ~0% universal."""
    a = _model(0)
    report = compare_models([ModelRunner(a, "cpu"), _RotatedNeurons(a)], n_tokens=MIN_TOKENS, random_init=False,
                            cka=False, controls=("position",), names=["a", "rot"], **FAST)
    for nl in report.neurons:
        assert nl.share_universal() <= 0.02
        assert abs(nl.mean_excess()) < 0.1
    # the same model against its unrotated self: universal wherever its baseline leaves room (the test above
    # can fail)
    same = compare_models([ModelRunner(a, "cpu"), ModelRunner(a, "cpu")], n_tokens=MIN_TOKENS, random_init=False,
                          cka=False, controls=("position",), names=["a", "b"], **FAST)
    assert all(nl.share_universal() > 0.3 for nl in same.neurons)
    rot = compare_models([_HashNeurons(a), _RotatedNeurons(_HashNeurons(a))], n_tokens=MIN_TOKENS, random_init=False,
                         cka=False, controls=("none",), **FAST)
    assert all(nl.share_universal() == 0.0 for nl in rot.neurons)


def test_sae_against_a_random_sae_sits_at_the_floor():
    """An SAE of a model against a random SAE reading activations that carry
    nothing of the quizzes' content beyond chance (a hash code): the matched
    correlations are the shuffled-quiz floor's."""
    a = _model(0)
    hook = "blocks.1.mlp.hook_post"
    sae_a, sae_r = _sae(64, 40, hook, seed=1), _sae(64, 40, hook, seed=2)
    report = compare_models([ModelRunner(a, "cpu"), _HashNeurons(_model(11), width=64)], n_tokens=3000,
                            random_init=False, cka=False, saes=[sae_a, sae_r], controls=("none",), **FAST)
    row = report.sae_rows()[0]
    assert row["share_above"] <= row["null_share_above"] + 0.05
    assert abs(row["median_matched_corr"] - row["null_median_matched_corr"]) < 0.03
    assert abs(row["mean_max_corr"] - row["null_mean_max_corr"]) < 0.03
    # and the same SAE on the same model is at the ceiling
    same = compare_models([ModelRunner(a, "cpu"), ModelRunner(a, "cpu")], n_tokens=MIN_TOKENS, random_init=False,
                          cka=False, saes=[sae_a, sae_a], controls=("position",), **FAST)
    assert same.sae_rows()[0]["share_above"] == 1.0


@pytest.mark.parametrize("control", ["none", "position_structure"])
def test_compare_equals_dense_computation(control):
    """compare_models (streamed, two halves, per-group sums) = the dense
    computation on all activations at once: all-layer max-corr, rotation
    baseline, held-out correlation, linear and debiased CKA. MyGPT (native
    hooks) and HookedTransformer (TransformerLens) inputs agree."""
    from culture.hooked import mygpt_to_hooked, to_hooked_tokens
    from culture.quiz import structure_index
    from culture.universality import position_index
    from culture.universality.neurons import rotations_for
    from culture.world import generate_quizzes

    models = [_model(3), _model(4)]
    q = generate_quizzes(8, seed=1)
    q[::2] = torch.roll(q[::2].reshape(4, 4, 101), 1, 1).reshape(4, 404)  # two structures
    rep = compare_models(models, q, random_init=False, controls=(control,), batch_size=2, cka_permutations=0,
                         n_resamples=50)
    names = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post",
             "blocks.0.hook_resid_pre"]
    acts = [ModelRunner(m, "cpu").run(to_hooked_tokens(q), names, position_index()) for m in models]
    groups = torch.zeros(8, 404, dtype=torch.long)
    if control == "position_structure":
        groups = structure_index(q)[:, None] * 404 + torch.arange(404)

    def dense(a, rows=slice(None)):
        a = a.double()[rows]
        g = groups[rows].reshape(-1)
        flat = a.reshape(-1, a.shape[-1])
        out = flat.clone()
        for k in g.unique():
            out[g == k] -= flat[g == k].mean(0)
        return out.numpy()

    def corr(x, y):
        with np.errstate(all="ignore"):
            c = np.nan_to_num(np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1]:])
        return c

    def neurons(k, rows=slice(None)):
        return np.concatenate([dense(acts[k][names[0]], rows), dense(acts[k][names[1]], rows)], 1)

    x, y = neurons(0), neurons(1)
    c = corr(x, y)
    rot = rotations_for([[64, 64], [64, 64]], 0)
    yr = np.concatenate([y[:, :64] @ rot[1][0].numpy().T, y[:, 64:] @ rot[1][1].numpy().T], 1)
    cb = corr(x, yr)
    nl = rep.neurons[1]
    a0 = nl.alive(0)
    assert a0.sum() > 40
    np.testing.assert_allclose(nl.pair_max[(0, 1)][a0], c[64:].max(1)[a0], atol=1e-6)
    np.testing.assert_allclose(nl.baseline_max[(0, 1)][a0], cb[64:].max(1)[a0], atol=1e-6)
    flat_arg = c[64:].argmax(1)
    assert ((nl.pair_layer[(0, 1)] * 64 + nl.pair_argmax[(0, 1)])[a0] == flat_arg[a0]).mean() > 0.97
    # held out: partners found on the even quizzes, correlation measured on the odd ones
    ce, co = corr(neurons(0, slice(0, None, 2)), neurons(1, slice(0, None, 2))), corr(
        neurons(0, slice(1, None, 2)), neurons(1, slice(1, None, 2)))
    held = co[64:][np.arange(64), ce[64:].argmax(1)]
    ok = nl.held_alive[0]
    np.testing.assert_allclose(nl.held_corr[(0, 1)][ok], held[ok], atol=1e-6)
    # CKA at embed and layer 1, linear and debiased
    for hook, row in ((names[2], 2), (names[3], 0)):
        xa, xb = dense(acts[0][hook]), dense(acts[1][hook])
        assert rep.cka.pairs[(0, 1)][row, row] == pytest.approx(linear_cka(xa, xb), abs=1e-6)
        assert rep.cka.debiased[control][(0, 1)][row, row] == pytest.approx(debiased_cka(xa, xb), abs=1e-6)
    tl = compare_models([mygpt_to_hooked(m) for m in models], q, random_init=False, controls=(control,),
                        cka_permutations=0, n_resamples=50)
    for a, b in zip(rep.neurons, tl.neurons):
        assert (a.dead[0] == b.dead[0]).all()
        np.testing.assert_allclose(a.pair_max[(0, 1)], b.pair_max[(0, 1)], atol=1e-4)
        np.testing.assert_allclose(a.baseline_max[(0, 1)], b.baseline_max[(0, 1)], atol=1e-4)
    np.testing.assert_allclose(rep.cka.pairs[(0, 1)], tl.cka.pairs[(0, 1)], atol=1e-5)


def test_random_models_sit_near_the_random_init_null_and_controls_change_the_picture():
    models = [_model(100 + k) for k in range(3)]
    report = compare_models(models, n_tokens=MIN_TOKENS, seed=1, **FAST)
    rows = report.summary_rows()
    assert all(abs(r["mean_max_corr"] - r["random_mean_max_corr"]) < 0.08 for r in rows), rows
    assert all(abs(r["share_universal"] - r["random_share_universal"]) < 0.1 for r in rows), rows
    for r in report.cka_diagonal_rows():
        assert abs(r["mean"] - r["baseline_mean"]) < 0.15, r
    assert list(report.controls) == ["none", "position", "position_structure", "token"]
    by = {(r["control"], r["layer"]): r for r in report.control_rows()}
    # at initialisation position drives the activations: removing it lowers max-corr
    assert by[("position", 0)]["mean_max_corr"] < by[("none", 0)]["mean_max_corr"] - 0.05
    # a permuted copy is far above its baseline under every control
    b, _ = _permuted_mlp_copy(models[0])
    far = compare_models([models[0], b], n_tokens=MIN_TOKENS, seed=1, cka=False, controls=("none", "position"), **FAST)
    for c in far.controls:
        assert all(r["mean_max_corr"] > r["random_mean_max_corr"] + 0.3 for r in far.summary_rows(c))


def test_report_json_tasks_plots_and_given_quizzes(tmp_path):
    from culture.world import generate_quizzes_with_tasks

    q, t = generate_quizzes_with_tasks(8, ["frame", "contact"], seed=0)
    a = _model(0)
    b, _ = _permuted_mlp_copy(a)
    report = compare_models([a, b, _model(7)], q, task_labels=t, layers=[1], positions="cells",
                            controls=("position", "token"), threshold=0.4, baseline="permutation",
                            cka_permutations=4, n_resamples=50)
    assert report.task_names == ["frame", "contact"]
    assert report.settings["tokens"] == 8 * 399 and report.settings["controls"] == ["position", "token"]
    assert int(report.task_tokens.sum()) == 8 * 399
    assert report.cka.labels[0] == ["embed", "1"]
    d = json.loads(json.dumps(report.to_dict()))  # JSON-ready, no NaN
    assert shares_outside_intervals(d) == []  # permutation baseline: intervals re-centred, no rotation draws
    assert d["settings"]["layers"] == [1] and d["settings"]["neuron_baseline"] == "permutation"
    layer = d["neurons"]["position"][0]
    assert layer["layer"] == 1 and len(layer["models"]) == 3 and "models" not in d["neurons"]["token"][0]
    assert len(layer["models"][0]["neuron_excess"]) == 64
    assert np.array(layer["pair_share_universal"]).shape == (3, 3)
    univ = d["universal_neurons"]
    assert univ and set(univ[0]["tasks"]) == {"frame", "contact"} and univ[0]["preferred_task"] in ("frame", "contact")
    assert {r["control"] for r in d["controls"]} == {"position", "token"}
    assert len(d["cka"]["tests"]) == 3 * 2 and all(0 < x["linear"] <= 1 for x in d["cka"]["tests"])
    assert d["cka"]["diagonal"]["token"][0]["debiased_mean"] is None  # debiased: primary control only
    paths = plot_report(report, tmp_path / "png")
    names = sorted(p.name for p in paths)
    assert names == ["cka_0_1.png", "cka_0_2.png", "cka_1_2.png", "neurons_controls.png", "neurons_excess_hist.png",
                     "neurons_max_vs_baseline.png", "neurons_partner_layers.png", "neurons_summary.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert not list((tmp_path / "png").glob("*.tmp"))


def test_library_errors():
    a, b = _model(0), _model(1)
    short = _model(2, GPTConfig(32, 16, 48, 2, 1))
    with pytest.raises(UniversalityError, match="at least 2"):
        compare_models([a], n_tokens=10)
    with pytest.raises(UniversalityError, match="layer 1 out of range"):
        compare_models([a, short], n_tokens=10, layers=[1])
    with pytest.raises(UniversalityError, match="threshold"):
        compare_models([a, b], n_tokens=10, threshold=3)
    with pytest.raises(UniversalityError, match="positions"):
        compare_models([a, b], n_tokens=10, positions="markers")
    with pytest.raises(UniversalityError, match="unknown control"):
        compare_models([a, b], n_tokens=10, controls=("colour",))
    with pytest.raises(UniversalityError, match="baseline"):
        compare_models([a, b], n_tokens=10, baseline="shuffle")
    with pytest.raises(UniversalityError, match="one SAE per model"):
        compare_models([a, b], n_tokens=10, saes=[None])
    with pytest.raises(UniversalityError, match="does not have"):
        compare_models([a, b], n_tokens=10, saes=[_sae(32, 8, "blocks.7.hook_resid_post"),
                                                  _sae(32, 8, "blocks.7.hook_resid_post")])
    with pytest.raises(CultureError, match="SAE directory not found"):
        compare_models([a, b], n_tokens=10, saes=["/nonexistent/sae", None])
    with pytest.raises(UniversalityError, match="unknown task"):
        compare_models([a, b], n_tokens=10, tasks=["juggling"])
    with pytest.raises(UniversalityError, match="n_tokens"):
        compare_models([a, b], n_tokens=0)
    with pytest.raises(UniversalityError, match="d_in"):
        compare_models([a, b], n_tokens=10, saes=[_sae(16, 8, "blocks.0.hook_resid_post")] * 2)
    with pytest.raises(UniversalityError, match="ceiling"):
        compare_models([a, b], n_tokens=10, ceiling_sae=_sae(32, 8, "blocks.0.hook_resid_post"))
    with pytest.raises(UniversalityError, match="at least 8 quizzes"):
        compare_models([a, b], n_tokens=7 * 404)
    with pytest.raises(UniversalityError, match="at least 8 quizzes"):
        compare_models([a, b], generate_quizzes(7, seed=0))
    report = compare_models([a, short], n_tokens=MIN_TOKENS, random_init=False, controls="none", **FAST)
    assert [nl.layer for nl in report.neurons] == [0]
    assert report.neurons[0].n_neurons == [64, 48]
    assert report.cka.pairs[(0, 1)].shape == (3, 2)


# ------------------------------------------------------------------------ CLI


def test_cli_compare_end_to_end(tmp_path, capsys):
    root = make_local_source(tmp_path, SHAPE, n_models=3)
    sae_dirs = []
    for k in range(3):
        d = tmp_path / f"sae{k}"
        _sae(32, 24, "blocks.1.hook_mlp_out", seed=k).save_model(d)
        sae_dirs += ["--sae", str(d)]
    ceiling = tmp_path / "sae0b"
    _permuted_sae(_sae(32, 24, "blocks.1.hook_mlp_out", seed=0), torch.arange(23, -1, -1)).save_model(ceiling)
    out_json, png, dash = tmp_path / "out" / "u.json", tmp_path / "png", tmp_path / "dash"
    code, out, err = run_cli(capsys, "universality", "compare", "--models", "0", "1", "2", "--source", str(root),
                             "--tokens", "3232", "--tasks", "frame", "contact", "--json", str(out_json),
                             "--png", str(png), *sae_dirs, "--ceiling-sae", str(ceiling), "--top", "3",
                             "--dashboard", str(dash), "--controls", "position", "none", "--resamples", "50",
                             "--cka-permutations", "4")
    assert code == 0, err
    for text in ("Universal neurons by layer", "held-out", "random-init", "CKA", "debiased", "SAE features",
                 "ceiling", "floor", "Feature families"):
        assert text in out, text
    d = json.loads(out_json.read_text())
    assert shares_outside_intervals(d) == []  # every printed share lies inside its interval
    assert d["models"] == ["0", "1", "2"] and d["settings"]["source"] == str(root)
    assert d["settings"]["tokens"] == 8 * 404 and d["settings"]["tasks"] == ["frame", "contact"]
    assert [r["layer"] for r in d["summary"]] == [0, 1] and d["settings"]["primary_control"] == "position"
    assert all(r["random_share_universal"] is not None for r in d["summary"])
    sae = d["sae"]
    assert len(sae["saes"]) == 4 and sae["saes"][0]["hook"] == "blocks.1.hook_mlp_out"
    kinds = [r["kind"] for r in sae["summary"]]
    assert kinds.count("ceiling (same model, other seed)") == 1 and len(kinds) == 4
    assert (png / "neurons_summary.png").is_file() and (png / "cka_0_2.png").is_file()
    assert (png / "sae_matched_corr.png").is_file()
    page = (dash / "index.html").read_text()
    assert "SAE feature families across models" in page and "Pairs of SAEs" in page
    assert not list(out_json.parent.glob("*.tmp"))
    # a subset of layers, within position, no random-init models / CKA; culture quizzes of the source
    code, out, err = run_cli(capsys, "universality", "compare", "--models", "0,1", "--source", str(root),
                             "--tokens", "3192", "--layers", "1", "--within-position", "--no-random-init", "--no-cka",
                             "--positions", "cells", "--json", str(out_json), "--quizzes", "both",
                             "--resamples", "20")
    assert code == 0, err
    d = json.loads(out_json.read_text())
    assert d["cka"] is None and d["settings"]["layers"] == [1] and d["settings"]["controls"] == ["position"]
    assert d["summary"][0]["random_share_universal"] is None
    assert d["settings"]["quiz_kinds"] == "both" and d["tasks"]["culture"] == 2 * 399
    assert sum(d["tasks"].values()) == 8 * 399  # the source's 2 test c-quizzes and 6 world quizzes
    # the ceiling of the neuron measure: a model against its permuted copy
    code, out, err = run_cli(capsys, "universality", "compare", "--models", "1", "--self-copy", "--source", str(root),
                             "--tokens", "3232", "--controls", "none", "--no-random-init", "--no-cka", "--json",
                             str(out_json), "--resamples", "20")
    assert code == 0, err
    d = json.loads(out_json.read_text())
    assert d["models"] == ["1", "1-copy"] and d["neurons"]["none"][0]["mean_max_corr"] == pytest.approx(1.0)


def test_cli_errors(tmp_path, capsys):
    root = make_local_source(tmp_path, SHAPE, n_models=2, with_c_quizzes=False)
    src = ["--source", str(root)]
    assert "at least 2" in error_line(capsys, "universality", "compare", "--models", "0", *src)
    msg = error_line(capsys, "universality", "compare", "--models", "0", "5", *src, "--tokens", "10")
    assert "model 5" in msg
    assert "layer 2 out of range" in error_line(capsys, "universality", "compare", "--models", "0", "1", *src,
                                                "--layers", "2", "--tokens", "10")
    assert "--threshold" in error_line(capsys, "universality", "compare", *src, "--threshold", "3")
    assert "--controls" in error_line(capsys, "universality", "compare", *src, "--controls", "colour")
    assert "--baseline" in error_line(capsys, "universality", "compare", *src, "--baseline", "shuffle")
    assert "one SAE directory per model" in error_line(capsys, "universality", "compare", *src, "--sae",
                                                       str(tmp_path))
    assert "SAE directory not found" in error_line(capsys, "universality", "compare", *src, "--sae",
                                                   str(tmp_path / "no"), "--sae", str(tmp_path / "no2"))
    assert "--dashboard" in error_line(capsys, "universality", "compare", *src, "--dashboard", str(tmp_path / "d"))
    assert "one model id" in error_line(capsys, "universality", "compare", *src, "--self-copy")
    assert "c-quizzes" in error_line(capsys, "universality", "compare", *src, "--quizzes", "culture",
                                     "--tokens", "404")
    # too few quizzes for the intervals and dead neurons it prints: refused, saying why
    assert "at least 8 quizzes" in error_line(capsys, "universality", "compare", *src, "--tokens", "404")
    solo = make_local_source(tmp_path, SHAPE, n_models=1, name="solo")
    assert "at least 2" in error_line(capsys, "universality", "compare", "--source", str(solo))


def test_cli_help_does_not_import_heavy_modules():
    heavy, out, err = heavy_imports([["--help"], ["universality", "compare", "--help"]],
                                    ("transformer_lens", "sae_lens", "matplotlib", "scipy"))
    assert "universality" in out and "--within-position" in out and "--ceiling-sae" in out
    assert heavy == [], out


def test_cli_defaults_are_the_settings_dataclass():
    """Every option of `universality compare` but the inputs and outputs is the
    UniversalitySettings field of the same name, with its default; the bounds
    live in the dataclass (library and CLI raise the same check)."""
    import inspect
    from dataclasses import fields

    from culture.settings import default_of
    from culture.universality import UniversalitySettings, UniversalitySettingsError
    from culture_cli.commands.universality import CLI_ONLY, compare_command

    params = inspect.signature(compare_command).parameters
    names = {f.name for f in fields(UniversalitySettings)}
    assert set(params) - names == set(CLI_ONLY)
    library_only = names - set(params)
    assert library_only == {"n_blocks", "confidence", "bootstrap_margin"}, library_only
    for name in set(params) & names:
        default = params[name].default
        if name == "controls":  # the CLI's repeatable option is None: the dataclass's tuple
            assert default is None and default_of(UniversalitySettings, name) == ("none", "position",
                                                                                   "position_structure", "token")
            continue
        assert default == default_of(UniversalitySettings, name), name
    with pytest.raises(UniversalitySettingsError, match="threshold: must be in"):
        UniversalitySettings(threshold=3.0).check()
    with pytest.raises(UniversalitySettingsError, match="n_blocks: must be even"):
        UniversalitySettings(n_blocks=5).check()
    with pytest.raises(UniversalitySettingsError, match="n_resamples: must be >= 1"):  # the earlier name, as given
        compare_models([_model(0), _model(1)], n_resamples=0)
    UniversalitySettings().check()


def test_intervals_hold_their_estimate_and_carry_the_rotation_draws():
    """A bootstrap whose resamples all fall below the estimate (units chosen as
    a maximum, partners fixed) gives an interval around the estimate with the
    bootstrap's width; the spread over rotation draws widens it; a report's
    shares all lie inside their intervals, which record the draws."""
    from culture.universality.intervals import centred_interval

    rng = np.random.default_rng(0)
    samples = 0.30 + 0.02 * rng.standard_normal(1000)  # the estimate 0.40 lies above every resample
    lo, hi = centred_interval(samples, 0.40, 0.95)
    assert lo < 0.40 < hi and hi - lo == pytest.approx(np.subtract(*np.quantile(samples, [0.975, 0.025])), abs=1e-3)
    # the reported rotation gives 0.0 and every other draw 1-2%: the interval reaches them
    zero = np.zeros(1000)
    assert centred_interval(zero, 0.0, 0.95) == (0.0, 0.0)
    lo, hi = centred_interval(zero, 0.0, 0.95, offsets=[0.0, 0.01, 0.02, 0.01, 0.015])
    assert lo == 0.0 and hi >= 0.015
    report = compare_models([_model(0), _model(1)], n_tokens=MIN_TOKENS, random_init=False, cka=False,
                            controls=("none",), rotation_draws=3, **FAST)
    d = report.to_dict()
    assert shares_outside_intervals(d) == []
    layer = d["neurons"]["none"][0]
    assert len(layer["intervals"]["share_rotations"]) == 4 and layer["intervals"]["rotation_draws"] == 3
    assert layer["intervals"]["share_rotations"][0] == pytest.approx(layer["share_universal"], abs=1e-6)
    assert "re-centred" in d["settings"]["bootstrap"]["intervals"]
