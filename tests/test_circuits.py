"""Circuits: the patching metric, activation / attribution patching,
edge patching and the logit lens -- exactness on tiny models, and a
hand-built model whose answer goes through one known head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers_sources import random_quizzes


def tiny_hooked(seed: int = 0, shape=(32, 8, 48, 2, 2)):
    """A random culture GPT (with LayerNorms) as a HookedTransformer."""
    from culture.hooked import mygpt_to_hooked
    from culture.mygpt import GPTConfig, MyGPT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MyGPT(GPTConfig(*shape))
        for p in model.parameters():  # larger weights than the reference init: heads matter
            p.data.normal_(0, 0.3)
    return mygpt_to_hooked(model.eval())


def made_pairs(n: int = 6, seed: int = 0):
    """Pairs sharing B whose examples and answers differ (random cells)."""
    from culture.circuits import QuizPairs

    clean, other = random_quizzes(n, seed), random_quizzes(n, seed + 100)
    corrupted = clean.clone()
    corrupted[:, :202] = other[:, :202]  # A, f(A)
    corrupted[:, 303:] = other[:, 303:]  # f(B)
    return QuizPairs(clean, corrupted)


@pytest.fixture(scope="module")
def model():
    return tiny_hooked()


@pytest.fixture(scope="module")
def pairs():
    return made_pairs()


def hand_logit_diff(logits, pairs):
    """The metric written out cell by cell."""
    out = []
    for i in range(len(pairs)):
        total = 0.0
        for t in range(303 + 1, 404):
            c, r = int(pairs.clean[i, t]), int(pairs.corrupted[i, t])
            if c != r:
                total += float(logits[i, t, c] - logits[i, t, r])
        out.append(total)
    return np.array(out)


# ------------------------------------------------------------------ metric


def test_metric_baseline_and_recovery(model, pairs):
    from culture.circuits.activation import baseline_runs
    from culture.circuits.metric import recovery, recovery_interval
    from culture.hooked import to_hooked_tokens

    base = baseline_runs(model, pairs, batch_size=4)
    with torch.no_grad():
        clean_logits = model(to_hooked_tokens(pairs.clean))
        corr_logits = model(to_hooked_tokens(pairs.corrupted))
    np.testing.assert_allclose(base.clean_ld, hand_logit_diff(clean_logits, pairs), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(base.corrupted_ld, hand_logit_diff(corr_logits, pairs), rtol=1e-5, atol=1e-4)
    assert recovery(base.clean_ld, base) == pytest.approx(1.0, abs=1e-12)
    assert recovery(base.corrupted_ld, base) == pytest.approx(0.0, abs=1e-12)
    x = np.stack([base.clean_ld, 0.5 * (base.clean_ld + base.corrupted_ld)])
    low, high = recovery_interval(x, base)
    assert low[1] <= 0.5 <= high[1] and low[0] == pytest.approx(1.0) and high[0] == pytest.approx(1.0)
    want = clean_logits[:, 304:].argmax(-1).eq(pairs.clean[:, 304:]).all(1).numpy()
    assert (base.clean_correct == want).all()


def test_pairs_validation():
    from culture.circuits import CircuitError, QuizPairs
    from culture.quiz import reconfigure

    q = random_quizzes(3)
    with pytest.raises(CircuitError, match="same structures"):
        QuizPairs(q, reconfigure(q, (12, 11, 14, 13)))
    with pytest.raises(CircuitError, match="shape"):
        QuizPairs(q, q[:2])
    assert QuizPairs(q, q).is_control and not made_pairs(2).is_control


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_full_residual_patch_is_exact_and_nothing_is_zero(model, pairs, direction):
    """Patching the whole residual stream before any block gives the source
    run exactly (recovery 1 denoising, 0 noising); patching no position
    leaves the target run (0 denoising, 1 noising)."""
    from culture.circuits.activation import activation_patching
    from culture.circuits.metric import recovery
    from culture.circuits.sites import Site

    n = model.cfg.n_layers
    sites = [Site("resid", L) for L in range(n + 1)] + [Site("resid", L, positions=()) for L in range(n + 1)]
    out, base = activation_patching(model, pairs, sites, direction, batch_size=4)
    rec = recovery(out["ld"], base)
    full, none = (1.0, 0.0) if direction == "denoise" else (0.0, 1.0)
    np.testing.assert_allclose(rec[: n + 1], full, atol=1e-5)
    np.testing.assert_allclose(rec[n + 1:], none, atol=1e-5)


def test_patch_report_has_both_cell_families(model, pairs):
    """Every site of a patch report carries the patched run's accuracy and
    loss against the clean answer on all predicted cells and on the transform
    cells: patching the full residual stream scores as the clean run,
    patching no position as the corrupted run (change 0)."""
    from culture.circuits.activation import activation_patching
    from culture.circuits.patching import MethodResult, PatchReport
    from culture.circuits.sites import Site, SiteTable
    from culture.evaluation import cell_metrics

    sites = [Site("resid", 0), Site("resid", model.cfg.n_layers, positions=())]
    out, baseline = activation_patching(model, pairs, sites, batch_size=4)
    report = PatchReport(SiteTable("resid", sites, ["resid"], ["full", "none"], [[0, 1]]), "denoise", baseline,
                         {"activation": MethodResult(out["ld"], out["correct"], cells=out["cells"])})
    full, none = report.cell_families()
    base = report.to_dict()["baseline"]
    for family in ("all_cells", "transform_cells"):
        clean, corrupted = (cell_metrics(report.baseline.cells(s))[family] for s in ("clean", "corrupted"))
        assert base["clean_run"][family]["cells"] == clean["cells"] > 0
        for key in ("ce", "cell_accuracy", "grid_accuracy"):
            assert full[family][key]["value"] == pytest.approx(clean[key]["value"], abs=1e-5)
            assert none[family][key]["value"] == pytest.approx(corrupted[key]["value"], abs=1e-5)
            assert none[family]["change"][key]["value"] == pytest.approx(0.0, abs=1e-5)
    assert full["transform_cells"]["cells"] < full["all_cells"]["cells"]


def test_head_patching_equals_a_hand_written_hook_loop(model, pairs):
    from culture.circuits.activation import activation_patching
    from culture.circuits.sites import site_table
    from culture.hooked import to_hooked_tokens

    by_block = site_table("heads-by-block", model.cfg.n_layers, model.cfg.n_heads).sites
    sites = site_table("heads", model.cfg.n_layers, model.cfg.n_heads).sites + [by_block[3], by_block[14]]
    out, _ = activation_patching(model, pairs, sites, "denoise", batch_size=4)
    clean_t, corr_t = to_hooked_tokens(pairs.clean), to_hooked_tokens(pairs.corrupted)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_t)
        for k, s in enumerate(sites):
            name = f"blocks.{s.layer}.attn.hook_z"
            pos = list(range(clean_t.shape[1])) if s.positions is None else list(s.positions)

            def hook(z, hook, s=s, pos=pos, name=name):
                z = z.clone()
                z[:, pos, s.head] = cache[name][:, pos, s.head]
                return z

            logits = model.run_with_hooks(corr_t, fwd_hooks=[(name, hook)])  # full forward, no shortcut
            np.testing.assert_allclose(out["ld"][k], hand_logit_diff(logits, pairs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_is_the_first_order_taylor_term(model, pairs, direction):
    """Attribution estimate - target metric = d/d eps M(a + eps (a' - a)) at 0,
    computed by autograd through a hook that interpolates the activation."""
    from culture.circuits.attribution import attribution_patching
    from culture.circuits.metric import readouts
    from culture.circuits.sites import Site, block_positions
    from culture.hooked import to_hooked_tokens

    sites = [Site("head", 0, 1), Site("head", 1, 0, positions=block_positions(3)), Site("mlp", 0),
             Site("resid", 1, positions=block_positions(1)), Site("attn", 1)]
    est, base = attribution_patching(model, pairs, sites, direction, batch_size=4)
    target, source = (pairs.corrupted, pairs.clean) if direction == "denoise" else (pairs.clean, pairs.corrupted)
    n = model.cfg.n_layers
    with torch.no_grad():
        _, cache = model.run_with_cache(to_hooked_tokens(source))
    target_ld = base.corrupted_ld if direction == "denoise" else base.clean_ld
    for k, s in enumerate(sites):
        name = s.hook_name(n)
        eps = torch.zeros(len(pairs), requires_grad=True)

        def hook(act, hook, s=s, name=name):
            delta = s.patch(act, cache[name]) - act  # a' - a on the site's slice, 0 elsewhere
            return act + eps.view(-1, *[1] * (act.dim() - 1)) * delta

        logits = model.run_with_hooks(to_hooked_tokens(target), fwd_hooks=[(name, hook)])
        ld = readouts(logits, pairs.clean, pairs.corrupted)["ld"]
        (grad,) = torch.autograd.grad(ld.sum(), eps)
        np.testing.assert_allclose(est[k] - target_ld, grad.double().numpy(), rtol=1e-4, atol=1e-4)


def test_attribution_is_exact_where_the_metric_is_linear(model, pairs):
    """After the last block the logits are linear in the residual: attribution
    patching of it equals activation patching."""
    from culture.circuits.activation import activation_patching
    from culture.circuits.attribution import attribution_patching
    from culture.circuits.sites import site_table

    table = site_table("resid", model.cfg.n_layers, model.cfg.n_heads, layers=[model.cfg.n_layers])
    act, _ = activation_patching(model, pairs, table.sites, batch_size=4)
    att, _ = attribution_patching(model, pairs, table.sites, batch_size=4)
    np.testing.assert_allclose(att, act["ld"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ a known head


def routed_model():
    """Two layers x two heads, no LayerNorm, hand-set weights: head 1.0 reads,
    at the position predicting cell (i, j) of f(B), the token of cell (i, j)
    of A (its query and key match on row and column), and writes it where the
    unembedding reads it; every other weight is small noise. The answer
    f(B) = A is routed through head 1.0 alone."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    V, G = 15, 10
    tok, key, query, out = 0, V, V + 2 * G, V + 4 * G  # residual layout: token, key row/col, query row/col, answer
    D = out + V
    cfg = HookedTransformerConfig(n_layers=2, d_model=D, n_ctx=405, d_head=2 * G, n_heads=2, d_mlp=8, d_vocab=V,
                                  act_fn="relu", normalization_type=None, seed=0)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
        model.W_E.zero_()
        model.W_E[:, tok:tok + V] = torch.eye(V)
        model.W_pos.zero_()
        for c in range(G * G):
            i, j = divmod(c, G)
            model.W_pos[2 + c, [key + i, key + G + j]] = 1.0  # position 2 + c reads cell c of A
            model.W_pos[304 + c, [query + i, query + G + j]] = 1.0  # position 304 + c predicts cell c of f(B)
        attn = model.blocks[1].attn
        for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
            w[0].zero_()
        attn.W_Q[0][query:query + 2 * G] = 100 * torch.eye(2 * G)  # score 100 * matches / sqrt(d_head)
        attn.W_K[0][key:key + 2 * G] = torch.eye(2 * G)
        attn.W_V[0][tok:tok + V, :V] = torch.eye(V)
        attn.W_O[0][:V, out:out + V] = torch.eye(V)
        model.W_U.zero_()
        model.W_U[out:out + V] = 10 * torch.eye(V)
        model.b_U.zero_()
    return model.eval()


def copy_pairs(n: int = 6):
    from culture.circuits import QuizPairs

    clean, other = random_quizzes(n, 7), random_quizzes(n, 8)
    corrupted = clean.clone()
    corrupted[:, :202] = other[:, :202]
    for q in (clean, corrupted):
        q[:, 304:404] = q[:, 1:101]  # f(B) = A
    return QuizPairs(clean, corrupted)


def test_patching_and_attribution_find_the_routing_head():
    from culture.circuits import run_patching

    model, pairs = routed_model(), copy_pairs()
    report = run_patching(model, pairs, what="heads", method="both", batch_size=3)
    assert report.baseline.clean_correct.all() and not report.baseline.corrupted_correct.any()
    labels = [s.label for s in report.table.sites]
    for method in ("activation", "attribution"):
        rec = report.recovery(method)
        assert labels[report.ranking(method)[0]] == "head 1.0", (method, rec)
        assert rec[labels.index("head 1.0")] > 0.9
        assert np.abs(np.delete(rec, labels.index("head 1.0"))).max() < 0.1
    assert report.accuracy()["value"][labels.index("head 1.0")] == 1.0
    assert report.agreement()["same_top_site"]


# ------------------------------------------------------------------ edges


def test_edge_patching_full_graph_is_clean_empty_is_corrupted(model, pairs):
    from culture.circuits.activation import baseline_runs
    from culture.circuits.discovery import Graph, circuit_logit_diffs, edge_scores

    graph = Graph(model.cfg.n_layers, model.cfg.n_heads)
    assert len(graph.edges) == 26  # 2 layers x 2 heads
    assert ("head 0.1", "mlp 0") in [graph.edge_name(e) for e in range(len(graph.edges))]
    assert ("head 1.0", "head 1.1") not in [graph.edge_name(e) for e in range(len(graph.edges))]
    base = baseline_runs(model, pairs, batch_size=4)
    everything = list(range(len(graph.edges)))
    ld = circuit_logit_diffs(model, pairs, [everything, []], graph=graph, batch_size=4)
    np.testing.assert_allclose(ld[0], base.clean_ld, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ld[1], base.corrupted_ld, rtol=1e-5, atol=1e-4)
    # the edges into the readout enter the logits linearly: their score is exact
    scores, _, _ = edge_scores(model, pairs, batch_size=4)
    into_readout = [e for e in everything if graph.edge_name(e)[1] == "readout"]
    lds = circuit_logit_diffs(model, pairs, [[x for x in everything if x != e] for e in into_readout],
                              graph=graph, batch_size=4)
    lost = (base.clean_ld.mean() - lds.mean(1)) / base.mean_gap
    np.testing.assert_allclose(scores[into_readout], lost, rtol=1e-4, atol=1e-5)


def test_discover_circuit_on_the_routing_model():
    from culture.circuits.discovery import discover_circuit

    report = discover_circuit(routed_model(), copy_pairs(), sizes=[1, 2, 4, 26], random_circuits=1,
                              random_sizes=2, batch_size=3)
    top = report.edge_rows(3)
    assert {(r["src"], r["dst"]) for r in top[:2]} >= {("head 1.0", "readout")}
    assert report.chosen_size is not None and report.chosen_faithfulness()["value"] >= 0.8
    assert report.curve[-1]["faithfulness"]["value"] == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------ logit lens


def test_logit_lens_last_layer_is_the_model(model):
    from culture.circuits.logit_lens import logit_lens
    from culture.evaluation import make_test_set, score_quizzes

    ts = make_test_set(8, tasks=["replace_color", "frame"], seed=0)
    report = logit_lens(model, ts, baseline=True, batch_size=4)  # DLA checks its own sum
    greedy = score_quizzes(model, ts)["greedy_correct"]
    last = report.accuracy["all"][-1]["grid_accuracy"]
    assert last["k"] == int(greedy.sum()) and last["n"] == 8
    assert len(report.layer_labels) == model.cfg.n_layers + 1 and report.baseline is not None
    assert set(report.groups) == {"replace_color", "frame", "all"}
    assert report.copy_baseline["all"]["transform_accuracy"] == 0.0
