"""Cross-model circuits (culture.circuits.{head_roles,matching,cross_faithfulness,
feature_roles,compare}) and ``culture-interp circuit compare``, on the bundled
zoo at tiny sizes: a model against a head-permuted copy of itself recovers the
permutation exactly; a model against itself has cross-model faithfulness equal
to its own; every reported share lies inside its interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.cli import error_line, run_cli

PERM = np.array([[2, 0, 3, 1], [1, 2, 3, 0], [3, 2, 1, 0], [0, 3, 1, 2]])
TINY = dict(n_pairs=4, profile_pairs=3, circuit_edges=12, ig_steps=0, n_resamples=200, match_resamples=3,
            null_draws=10, null_circuits=2, top_k_features=5, feature_quizzes=4, batch_size=4)


@pytest.fixture(scope="module")
def model0():
    from culture.hooked import load_hooked

    return load_hooked(0, "bundled")


@pytest.fixture(scope="module")
def permuted(model0):
    from culture.circuits.matching import permute_heads

    return permute_heads(model0, PERM)


@pytest.fixture(scope="module")
def sae0():
    from culture.sae import bundled_sae_folder, load_sae

    return load_sae("bundled", bundled_sae_folder(0))


def _intervals(obj, path=""):
    """Every {"value", "ci95"} entry of a nested JSON-like object."""
    if isinstance(obj, dict):
        if "value" in obj and "ci95" in obj:
            yield path, obj
        for k, v in obj.items():
            yield from _intervals(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _intervals(v, f"{path}[{i}]")


def _check_inside(d):
    found = list(_intervals(d))
    assert found
    for path, e in found:
        v, (lo, hi) = e["value"], e["ci95"]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        assert lo <= v <= hi, (path, e)


def test_permuted_copy_computes_the_same_function(model0, permuted):
    from culture.circuits import make_pairs
    from culture.hooked import to_hooked_tokens

    tokens = to_hooked_tokens(make_pairs(2, "frame", "color").clean)
    with torch.no_grad():
        a, b = model0(tokens), permuted(tokens)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.equal(model0.blocks[0].attn.W_Q, permuted.blocks[0].attn.W_Q)


def test_permuted_copy_recovers_the_permutation_exactly(model0, permuted):
    from culture.circuits import make_pairs
    from culture.circuits.head_roles import head_role_data
    from culture.circuits.matching import match_heads

    sets = {"replace_color/dst": make_pairs(3, "replace_color", "dst", seed=1),
            "frame/color": make_pairs(3, "frame", "color", seed=2)}
    ra, rb = head_role_data(permuted, sets, batch_size=3), head_role_data(model0, sets, batch_size=3)
    m = match_heads(ra.vectors(), rb.vectors(), 4, 4, null_draws=20)
    assert np.array_equal(m.perm, PERM)  # copy head l.h is original head l.PERM[l, h]
    assert np.allclose(m.matched_similarity, 1.0, atol=1e-9)
    assert m.null_summary()["p_value"] < 0.1 and m.null_summary()["null_q95"] < m.mean_similarity
    w = ra.resample_weights(np.random.default_rng(3))
    assert np.array_equal(match_heads(ra.vectors(w), rb.vectors(w), 4, 4).perm, PERM)


def test_map_circuit_round_trip():
    from culture.circuits.cross_faithfulness import map_circuit
    from culture.circuits.discovery import Graph

    g = Graph(4, 4)
    edges = [0, 5, 17, 40, len(g.edges) - 1]
    inverse = np.argsort(PERM, axis=1)
    assert map_circuit(map_circuit(edges, g, PERM), g, inverse) == sorted(edges)
    assert map_circuit(edges, g, np.tile(np.arange(4), (4, 1))) == sorted(edges)
    mapped = map_circuit([g.edges.index((g.upstream.index("head 3.3"), g.downstream.index("readout")))], g, PERM)
    assert g.edge_name(mapped[0]) == ("head 3.2", "readout")


def test_model_with_itself_gives_its_own_faithfulness(model0, sae0):
    from culture.circuits.compare import compare_circuits

    cmp = compare_circuits([model0, model0], "replace_color", "dst", saes=[sae0, sae0], reference="3.3", **TINY)
    assert cmp.faithfulness[0][1] == cmp.faithfulness[1][1] == cmp.own_faithfulness[1]
    assert cmp.faithfulness[1][0] == cmp.faithfulness[0][0]
    assert np.array_equal(cmp.matchings[(0, 1)].perm, np.tile(np.arange(4), (4, 1)))
    assert cmp.stability[(0, 1)].min() == 1.0
    row = cmp.reference_rows()[1]
    assert row["matched"] == row["best_anywhere"] == "3.3" and row["similarity"] == pytest.approx(1.0)
    assert cmp.features["shared"]["0->1"]["value"] == 1.0  # the same features, matched to themselves
    d = cmp.to_dict()
    json.dumps(d)
    _check_inside(d)


def test_permuted_copy_carries_the_circuit_exactly(model0, permuted):
    from culture.circuits.compare import compare_circuits

    cmp = compare_circuits([permuted, model0], "frame", "color", **{**TINY, "null_circuits": 0})
    assert np.array_equal(cmp.matchings[(0, 1)].perm, PERM)
    own, carried = cmp.faithfulness[1][1], cmp.faithfulness[0][1]
    assert carried["value"] == pytest.approx(own["value"], abs=1e-6)
    assert cmp.reference_rows()[1]["matched"] == f"{cmp.reference[0]}.{PERM[cmp.reference]}"


def test_shared_causal_share_and_null():
    from culture.circuits.feature_roles import FeatureEffects, shared_causal_share

    rng = np.random.default_rng(0)
    e = FeatureEffects(rng.normal(size=(50, 8)) + np.linspace(5, 0, 50)[:, None], np.ones(8))
    ident = np.arange(50)
    s = shared_causal_share(e, e, ident, ident, top_k=5, n_resamples=100, null_draws=100)
    assert s["value"] == 1.0 and s["ci95"][0] <= 1.0 == s["ci95"][1] and s["null_mean"] < 0.5
    rev = shared_causal_share(e, e, ident, ident[::-1], top_k=5, n_resamples=50, null_draws=0)
    assert rev["value"] == 0.0 and rev["null_mean"] is None


def test_feature_share_interval_carries_the_matching():
    """Re-done matchings: a set matched with itself gives the identity whatever
    quizzes are drawn; an interval over replicates that use a matching which
    disagrees reaches below the fixed-matching one (the matching's chance is in it)."""
    from culture.circuits.feature_roles import FeatureEffects, rematched_partners, shared_causal_share
    from culture.circuits.metric import CircuitError

    rng = np.random.default_rng(1)
    acts = np.abs(rng.normal(size=(6 * 7, 20))).astype(np.float32)  # 6 quizzes of 7 positions, 20 features
    maps = rematched_partners(acts, acts, 6, 4, seed=0)
    assert len(maps) == 4 and all(m == {f: f for f in range(20)} for m in maps)
    with pytest.raises(CircuitError):
        rematched_partners(acts, acts[:-1], 6, 2)
    e = FeatureEffects(rng.normal(size=(20, 8)) + np.linspace(5, 0, 20)[:, None], np.ones(8))
    ident = np.arange(20)
    fixed = shared_causal_share(e, e, ident, ident, top_k=5, n_resamples=200, null_draws=0)
    mixed = shared_causal_share(e, e, ident, ident, top_k=5, n_resamples=200, null_draws=0,
                                rematched=[dict(zip(ident.tolist(), ident.tolist())),
                                           dict(zip(ident.tolist(), ident[::-1].tolist()))])
    assert fixed["value"] == mixed["value"] == 1.0
    assert fixed["ci95"][0] == 1.0 and mixed["ci95"][0] < 0.5 <= mixed["ci95"][1]


def test_circuit_compare_cli(tmp_path, capsys):
    out_json, out_png = tmp_path / "c.json", tmp_path / "c.png"
    code, out, err = run_cli(capsys, "circuit", "compare", "--models", 0, 1, "--source", "bundled", "--task", "detect",
                             "--vary", "marker", "--profile-tasks", "detect", "--num-pairs", 3, "--profile-pairs", 2,
                             "--edges", 8, "--ig-steps", 0, "--resamples", 50, "--match-resamples", 2,
                             "--null-draws", 5, "--null-circuits", 1, "--batch-size", 3, "--json", out_json,
                             "--png", out_png)
    assert code == 0, err
    assert "Which head plays" in out and "Cross-model faithfulness" in out
    d = json.loads(out_json.read_text())
    assert d["models"] == ["0", "1"] and len(d["cross_faithfulness"]) == 2
    assert d["settings"]["profile_conditions"] == ["detect/marker", "detect/unmarked", "detect/task"]
    _check_inside(d)
    assert out_png.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--models", 0], "at least 2"),
    (["--models", 0, 1, "--vary", "example"], "--vary"),
    (["--models", 0, 1, "--head", "x"], "LAYER.HEAD"),
    (["--models", 0, 1, "--edges", 0], "--edges"),
    (["--models", 0, 9], "9"),
])
def test_circuit_compare_cli_errors(capsys, args, message):
    argv = ["circuit", "compare", "--source", "bundled", "--task", "frame"] + (
        [] if "--vary" in args else ["--vary", "color"]) + args
    assert message in error_line(capsys, *argv)


def test_profile_tasks_take_several_values():
    from culture_cli.main import expand_multi_value_options

    assert expand_multi_value_options(["--profile-tasks", "frame", "detect", "--edges", "3"]) == [
        "--profile-tasks", "frame", "--profile-tasks", "detect", "--edges", "3"]


def test_circuit_find_is_the_default_subcommand(capsys):
    for argv in (["circuit"], ["circuit", "find"]):
        assert "--threshold" in error_line(capsys, *argv, "--model", 0, "--source", "bundled", "--task", "frame",
                                           "--vary", "color", "--threshold", 1.5)


def test_circuit_compare_help_imports_nothing_heavy():
    from tests.cli import heavy_imports

    heavy, out, err = heavy_imports([["circuit", "compare", "--help"], ["circuit", "find", "--help"]],
                                    ("transformer_lens", "sae_lens", "matplotlib"))
    assert heavy == [], heavy


def test_cli_defaults_are_the_settings_dataclass():
    """Every option of `circuit compare` but its inputs and outputs is the
    CircuitCompareSettings field of the same name, with its default; the library
    takes the same dataclass (and its earlier keyword names) and the same checks."""
    import inspect
    from dataclasses import fields

    from culture.circuit_settings import CircuitCompareSettings, CircuitSettingsError
    from culture.settings import default_of
    from culture_cli.commands.circuit_compare import COMPARE_INPUTS, compare_command

    params = inspect.signature(compare_command).parameters
    names = {f.name for f in fields(CircuitCompareSettings)}
    assert set(params) - names == set(COMPARE_INPUTS)
    assert names <= set(params)
    for name in names:
        assert params[name].default == default_of(CircuitCompareSettings, name), name
    legacy = CircuitCompareSettings.of(n_pairs=4, circuit_edges=12, reference="3.3", n_resamples=200,
                                       top_k_features=5)
    assert (legacy.num_pairs, legacy.edges, legacy.head, legacy.resamples, legacy.top_features) == (
        4, 12, "3.3", 200, 5)
    with pytest.raises(CircuitSettingsError, match="edges: must be >= 1"):
        CircuitCompareSettings(edges=0).check()
    with pytest.raises(CircuitSettingsError, match="null_draws: must be an integer"):
        CircuitCompareSettings.of(null_draws=2.5)
