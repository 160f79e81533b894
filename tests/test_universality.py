"""Universality: streaming statistics, the model comparison, SAE matching, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from culture.errors import CultureError
from culture.mygpt import GPTConfig, MyGPT
from culture.universality import (
    GroupSums,
    StreamingCKA,
    StreamingCorrelation,
    UniversalityError,
    compare_models,
    linear_cka,
    match_features,
    max_correlations,
    plot_report,
)
from tests.cli import error_line, heavy_imports, run_cli
from tests.helpers_sources import make_local_source

CFG = GPTConfig(32, 16, 64, 2, 2)
SHAPE = (32, 16, 64, 2, 2)


def _model(seed: int, cfg: GPTConfig = CFG) -> MyGPT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MyGPT(cfg).eval()


def _permuted_mlp_copy(model: MyGPT, seed: int = 1) -> tuple[MyGPT, list[torch.Tensor]]:
    """A copy computing the same function with the MLP neurons of every layer permuted."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    perms = []
    with torch.no_grad():
        for blk in out.mlp_blocks:
            p = torch.randperm(blk.up.weight.shape[0], generator=g)
            blk.up.weight.copy_(blk.up.weight[p])
            blk.up.bias.copy_(blk.up.bias[p])
            blk.down.weight.copy_(blk.down.weight[:, p])
            perms.append(p)
    return out, perms


def _sae(d_in: int, d_sae: int, hook: str, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
    return sae


def _permuted_sae(sae, perm: torch.Tensor):
    """The same dictionary with features reordered: feature j of the copy is feature perm[j]."""
    out = copy.deepcopy(sae)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc[:, perm])
        out.b_enc.copy_(sae.b_enc[perm])
        out.W_dec.copy_(sae.W_dec[perm])
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
    # external group sums give the same
    gx, gy = GroupSums(9).update(x, groups), GroupSums(9).update(y, groups)
    plain = StreamingCorrelation().update(x, y)
    np.testing.assert_allclose(plain.within_groups(gx, gy).corr().numpy(), within.corr().numpy(), atol=1e-12)
    # CKA within groups
    cka = StreamingCKA(n_groups=9)
    for s in range(0, t, 500):
        cka.update(x[s:s + 500], y[s:s + 500], groups=groups[s:s + 500])
    assert cka.cka(within_groups=True) == pytest.approx(linear_cka(xc, yc), abs=1e-6)


def test_cka_streaming_dense_self_and_rotation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1200, 10, generator=g, dtype=torch.float64) @ torch.randn(10, 10, generator=g,
                                                                                dtype=torch.float64) + 5
    y = torch.tanh(x[:, :7] @ torch.randn(7, 8, generator=g, dtype=torch.float64))
    acc = StreamingCKA()
    for s in range(0, 1200, 170):
        acc.update(x[s:s + 170], y[s:s + 170])
    # direct CKA, written out independently
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = float((xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    assert acc.cka() == pytest.approx(direct, abs=1e-6)
    assert linear_cka(x, y) == pytest.approx(direct, abs=1e-6)
    assert 0.0 < direct < 1.0
    # self = 1; invariant to an orthogonal rotation of the basis and to scale
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x @ q * 3.0, y) == pytest.approx(direct, abs=1e-9)
    rot = StreamingCKA()
    for s in range(0, 1200, 400):
        rot.update(x[s:s + 400], x[s:s + 400] @ q)
    assert rot.cka() == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.zeros(1200, 3)) == 0.0  # constant representation: 0, not NaN


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


# ------------------------------------------------------------------ comparison


def test_permuted_mlp_copy_is_fully_universal_and_sae_matching_recovers_permutation():
    a = _model(0)
    b, perms = _permuted_mlp_copy(a)
    hook = "blocks.1.hook_resid_post"
    sae_a = _sae(32, 48, hook, seed=5)
    sae_perm = torch.randperm(48, generator=torch.Generator().manual_seed(9))
    sae_b = _permuted_sae(sae_a, sae_perm)
    report = compare_models([a, b], n_tokens=1500, baseline=False, saes=[sae_a, sae_b], names=["a", "b"])
    for nl, p in zip(report.neurons, perms):
        for i, j in ((0, 1), (1, 0)):
            alive = nl.alive(i)
            assert alive.sum() >= 32
            np.testing.assert_allclose(nl.pair_max[(i, j)][alive], 1.0, atol=1e-6)
        # neuron n of the copy is neuron p[n] of the original (up to exact ties:
        # two neurons firing on the very same few tokens correlate perfectly too)
        alive_b = nl.alive(1)
        assert (nl.pair_argmax[(1, 0)][alive_b] == p.numpy()[alive_b]).mean() > 0.9
        assert (nl.dead[0][p.numpy()] == nl.dead[1]).all()
        assert nl.share_universal(0) == 1.0 and nl.share_universal(1) == 1.0
        assert nl.baseline is None
    # identical residual streams: CKA 1 on the diagonal
    mat = report.cka.pairs[(0, 1)]
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-6)
    assert report.cka.labels[0] == ["embed", "0", "1"]
    # SAE: one-to-one matching with correlation 1 that recovers the permutation
    pair = report.sae.pairs[(0, 1)]
    mt = pair.matching
    alive = ~report.sae.dead[0]
    assert len(mt) == alive.sum() >= 40
    np.testing.assert_allclose(mt.corr, 1.0, atol=1e-6)
    inverse = torch.argsort(sae_perm).numpy()
    assert (mt.b_index == inverse[mt.a_index]).all()
    np.testing.assert_allclose(pair.decoder_cos, 1.0, atol=1e-6)
    assert report.sae_rows()[0]["share_above"] == 1.0
    feats = report.universal_features()
    assert len(feats) == 2 * len(mt) and "tasks" in feats[0]


@pytest.mark.parametrize("within", [False, True])
def test_compare_equals_dense_computation(within):
    """compare_models (streamed over batches) = correlations / CKA computed on
    all activations at once, globally or within position; MyGPT (native hooks)
    and HookedTransformer (TransformerLens) inputs agree."""
    from culture.hooked import mygpt_to_hooked, to_hooked_tokens
    from culture.universality import ModelRunner, position_index
    from culture.world import generate_quizzes

    models = [_model(3), _model(4)]
    q = generate_quizzes(5, seed=1)
    rep = compare_models(models, q, baseline=False, within_position=within, batch_size=2)
    names = ["blocks.1.mlp.hook_post", "blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"]
    acts = [ModelRunner(m, "cpu").run(to_hooked_tokens(q), names, position_index()) for m in models]

    def dense(a):
        a = a.double()
        if within:
            a = a - a.mean(0, keepdim=True)
        return a.reshape(-1, a.shape[-1]).numpy()

    x, y = dense(acts[0][names[0]]), dense(acts[1][names[0]])
    with np.errstate(all="ignore"):
        c = np.nan_to_num(np.corrcoef(x.T, y.T)[:64, 64:])
    nl = rep.neurons[1]
    a0, a1 = nl.alive(0), nl.alive(1)
    assert a0.sum() > 40 and a1.sum() > 40
    c[~a0] = 0
    c[:, ~a1] = 0
    np.testing.assert_allclose(nl.pair_max[(0, 1)][a0], c.max(1)[a0], atol=1e-6)
    np.testing.assert_allclose(nl.pair_max[(1, 0)][a1], c.max(0)[a1], atol=1e-6)
    for hook, row in ((names[1], 2), (names[2], 0)):
        direct = linear_cka(dense(acts[0][hook]), dense(acts[1][hook]))
        assert rep.cka.pairs[(0, 1)][row, row] == pytest.approx(direct, abs=1e-6)
    tl = compare_models([mygpt_to_hooked(m) for m in models], q, baseline=False, within_position=within)
    for a, b in zip(rep.neurons, tl.neurons):
        assert (a.dead[0] == b.dead[0]).all()
        np.testing.assert_allclose(a.pair_max[(0, 1)], b.pair_max[(0, 1)], atol=1e-4)
    np.testing.assert_allclose(rep.cka.pairs[(0, 1)], tl.cka.pairs[(0, 1)], atol=1e-5)


def test_random_models_sit_near_the_baseline():
    models = [_model(100 + k) for k in range(3)]
    report = compare_models(models, n_tokens=2500, seed=1)
    rows = report.summary_rows()
    share = np.mean([r["share_universal"] for r in rows])
    base_share = np.mean([r["baseline_share_universal"] for r in rows])
    mm = np.mean([r["mean_max_corr"] for r in rows])
    base_mm = np.mean([r["baseline_mean_max_corr"] for r in rows])
    assert abs(mm - base_mm) < 0.08, (mm, base_mm)
    assert abs(share - base_share) < 0.2, (share, base_share)
    for r in report.cka_diagonal_rows():
        assert abs(r["mean"] - r["baseline_mean"]) < 0.15, r
    # and a permuted copy is far above it
    b, _ = _permuted_mlp_copy(models[0])
    far = compare_models([models[0], b], n_tokens=1000, seed=1, cka=False).summary_rows()
    assert all(r["mean_max_corr"] > r["baseline_mean_max_corr"] + 0.3 for r in far)


def test_report_json_tasks_plots_and_given_quizzes(tmp_path):
    from culture.world import generate_quizzes_with_tasks

    q, t = generate_quizzes_with_tasks(6, ["frame", "contact"], seed=0)
    a = _model(0)
    b, _ = _permuted_mlp_copy(a)
    report = compare_models([a, b, _model(7)], q, task_labels=t, layers=[1], positions="cells",
                            within_position=True, threshold=0.4)
    assert report.task_names == ["frame", "contact"]
    assert report.settings["tokens"] == 6 * 399 and report.settings["within_position"]
    assert int(report.task_tokens.sum()) == 6 * 399
    assert report.cka.labels[0] == ["embed", "1"]
    d = json.loads(json.dumps(report.to_dict()))  # JSON-ready, no NaN
    assert d["settings"]["layers"] == [1]
    layer = d["neurons"][0]
    assert layer["layer"] == 1 and len(layer["models"]) == 3
    assert len(layer["models"][0]["neuron_mean_max_corr"]) == 64
    assert np.array(layer["pair_share_universal"]).shape == (3, 3)
    univ = d["universal_neurons"]
    assert univ and set(univ[0]["tasks"]) == {"frame", "contact"} and univ[0]["preferred_task"] in ("frame", "contact")
    assert {r["task"] for r in d["universal_neurons_by_task"]} == {"frame", "contact"}
    assert len(d["cka"]["pairs"]) == 3 and d["cka"]["pairs"][0]["baseline"] is not None
    paths = plot_report(report, tmp_path / "png")
    names = sorted(p.name for p in paths)
    assert names == ["cka_0_1.png", "cka_0_2.png", "cka_1_2.png", "neurons_max_corr_hist.png",
                     "neurons_share_universal.png", "neurons_summary.png"]
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
        compare_models([a, b], n_tokens=10, threshold=1.5)
    with pytest.raises(UniversalityError, match="positions"):
        compare_models([a, b], n_tokens=10, positions="markers")
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
    # different shapes are fine: neurons at the common layers, CKA over each model's own layers
    report = compare_models([a, short], n_tokens=404, baseline=False)
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
    out_json, png = tmp_path / "out" / "u.json", tmp_path / "png"
    code, out, err = run_cli(capsys, "universality", "compare", "--models", "0", "1", "2", "--source", str(root),
                             "--tokens", "900", "--tasks", "frame", "contact", "--json", str(out_json),
                             "--png", str(png), *sae_dirs, "--top", "3")
    assert code == 0, err
    assert "Universal neurons by layer" in out and "baseline" in out and "CKA" in out and "SAE" in out
    d = json.loads(out_json.read_text())
    assert d["models"] == ["0", "1", "2"] and d["settings"]["source"] == str(root)
    assert d["settings"]["tokens"] == 3 * 404 and d["settings"]["tasks"] == ["frame", "contact"]
    assert [r["layer"] for r in d["summary"]] == [0, 1]
    assert all(r["baseline_share_universal"] is not None for r in d["summary"])
    assert len(d["sae"]["pairs"]) == 3 and d["sae"]["hooks"]["0"] == "blocks.1.hook_mlp_out"
    assert (png / "neurons_share_universal.png").is_file() and (png / "cka_0_2.png").is_file()
    assert (png / "sae_matched_corr.png").is_file()
    assert not list(out_json.parent.glob("*.tmp"))
    # a subset of layers, within position, no baseline / CKA
    code, out, err = run_cli(capsys, "universality", "compare", "--models", "0,1", "--source", str(root),
                             "--tokens", "404", "--layers", "1", "--within-position", "--no-baseline", "--no-cka",
                             "--positions", "cells", "--json", str(out_json))
    assert code == 0, err
    d = json.loads(out_json.read_text())
    assert d["cka"] is None and d["settings"]["layers"] == [1] and d["settings"]["within_position"]
    assert d["summary"][0]["baseline_share_universal"] is None


def test_cli_errors(tmp_path, capsys):
    root = make_local_source(tmp_path, SHAPE, n_models=2)
    src = ["--source", str(root)]
    assert "at least 2" in error_line(capsys, "universality", "compare", "--models", "0", *src)
    msg = error_line(capsys, "universality", "compare", "--models", "0", "5", *src, "--tokens", "10")
    assert "model 5" in msg
    assert "layer 2 out of range" in error_line(capsys, "universality", "compare", "--models", "0", "1", *src,
                                            "--layers", "2", "--tokens", "10")
    assert "--threshold" in error_line(capsys, "universality", "compare", *src, "--threshold", "2")
    assert "one SAE directory per model" in error_line(capsys, "universality", "compare", *src, "--sae",
                                                    str(tmp_path))
    assert "SAE directory not found" in error_line(capsys, "universality", "compare", *src, "--sae",
                                               str(tmp_path / "no"), "--sae", str(tmp_path / "no2"))
    solo = make_local_source(tmp_path, SHAPE, n_models=1, name="solo")
    assert "at least 2" in error_line(capsys, "universality", "compare", "--source", str(solo))


def test_cli_help_does_not_import_heavy_modules():
    heavy, out, err = heavy_imports([["--help"], ["universality", "compare", "--help"]],
                                    ("transformer_lens", "sae_lens", "matplotlib", "scipy"))
    assert "universality" in out and "--within-position" in out
    assert heavy == [], out
