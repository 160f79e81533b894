"""Linear probes of the generator's latent parameters (culture.probes, `probe`)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli import error_line, exit_code
from tests.helpers_sources import make_local_source

SHAPE = (32, 16, 64, 2, 2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_local_source(tmp_path_factory.mktemp("probe"), shapes=SHAPE, n_models=1, with_c_quizzes=False)


@pytest.fixture(scope="module")
def gpt(source):
    from culture.sources import load_model

    return load_model(0, source)[0]


def test_labels_are_the_generators_parameters_checked_by_the_oracle():
    from culture.probes import probe_set
    from culture.world.oracle import quiz_parameters

    data = probe_set("replace_color", "dst", 12, seed=3, structure=2)
    grids = _canonical_grids(data.targets)
    for i in range(12):
        src, dst = quiz_parameters("replace_color", grids[i])
        assert data.classes[int(data.labels[i])] == dst
    # the answer is clean, the noised block (structure 2: f_B) carries noise elsewhere only
    from culture.quiz import ar_mask

    assert torch.equal(data.sequences[ar_mask(data.sequences)], data.targets[ar_mask(data.targets)])


def _canonical_grids(quizzes):
    from culture.quiz import canonical_grids

    return canonical_grids(quizzes).reshape(-1, 4, 10, 10).numpy()


def test_residual_activations_match_transformer_lens(source, gpt):
    from culture.hooked import load_hooked, to_hooked_tokens
    from culture.probes import position_mask, probe_set, residual_activations

    data = probe_set("replace_color", "dst", 5, seed=1)
    mask = position_mask(data.sequences, data.targets, "B")
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post"]
    feats, norms, _ = residual_activations(gpt, data.sequences, mask, hooks, batch_size=2)
    hooked = load_hooked(0, source)
    tokens = to_hooked_tokens(data.sequences)
    _, cache = hooked.run_with_cache(tokens, names_filter=hooks, attention_mask=torch.ones_like(tokens))
    m = mask.unsqueeze(-1).float()
    for h in hooks:
        expected = (cache[h] * m).sum(1) / m.sum(1)
        assert torch.allclose(feats[h].float(), expected, atol=1e-5), h
        assert norms[h] == pytest.approx(float(cache[h].norm(dim=-1)[mask].mean()), rel=1e-4)
    assert int(mask.sum()) == 5 * 100  # B's 100 cells per quiz


def test_fit_probe_separates_planted_classes_and_not_shuffled_ones():
    from culture.probes import fit_probe

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g, dtype=torch.float64) * 3
    y = torch.randint(4, (400,), generator=g)
    x = centres[y] + torch.randn(400, 16, generator=g, dtype=torch.float64)
    probe = fit_probe(x[:300], y[:300], 4)
    assert float((probe.predict(x[300:]) == y[300:]).double().mean()) > 0.95
    shuffled = y[torch.randperm(400, generator=g)]
    control = fit_probe(x[:300], shuffled[:300], 4)
    assert float((control.predict(x[300:]) == shuffled[300:]).double().mean()) < 0.45
    # the direction raises the target class against the source
    d = probe.direction(0, 2)
    z = x[:5] + 50 * d / d.norm()
    assert (probe.predict(z) == 2).all()


def test_run_probes_rows_controls_and_causal_check(gpt):
    from culture.probes import run_probes

    res = run_probes(gpt, "replace_color.dst", n=120, positions="transform-cells", causal=True,
                     causal_hook="blocks.0.hook_resid_pre", batch_size=40)
    assert [r["layer"] for r in res.rows] == ["embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    s = res.settings
    assert s["train"] + s["test"] == s["quizzes"] == 120 and s["classes"] == len(res.classes) >= 5
    for r in res.rows:
        for key in ("accuracy", "control_accuracy", "random_model_accuracy"):
            lo, hi = r[key]["ci95"]
            assert 0 <= lo <= r[key]["value"] <= hi <= 1 and r[key]["n"] == s["test"]
        assert r["selectivity"] == pytest.approx(r["accuracy"]["value"] - r["control_accuracy"]["value"])
    # the transform cells read the painted colour: decodable from the embedding, in any model
    embed = res.rows[0]
    assert embed["accuracy"]["value"] > 0.8 and embed["random_model_accuracy"]["value"] > 0.8
    assert embed["control_accuracy"]["value"] < 0.5
    c = res.causal
    assert c["layer"] == "embed" and c["changed_as_predicted"]["n"] == s["test"]
    json.dumps(res.to_dict())


def test_probe_cli_json_png_and_errors(source, tmp_path, capsys):
    from PIL import Image

    out, png = tmp_path / "p.json", tmp_path / "p.png"
    rc = exit_code(["probe", "--model", "0", "--source", source, "--target", "frame.color", "--positions", "A",
                    "-n", "40", "--hooks", "resid_mid", "--no-random-baseline", "--json", out, "--png", png])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Probes of frame.color at A" in printed and "control task acc" in printed
    d = json.loads(out.read_text())
    assert [r["hook"] for r in d["rows"]] == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    assert d["settings"]["model"] == 0 and d["majority_class"]["n"] == 10
    with Image.open(png) as img:
        assert img.size[0] > 300
    base = ["probe", "--model", "0", "--source", source, "-n", "20"]
    assert "TASK.PARAM" in error_line(capsys, *base, "--target", "replace_color")
    assert "unknown task" in error_line(capsys, *base, "--target", "nope.dst")
    assert "no parameter" in error_line(capsys, *base, "--target", "replace_color.nope")
    assert "categorical" in error_line(capsys, *base, "--target", "replace_color.rect_a")
    assert "unknown positions" in error_line(capsys, *base, "--target", "replace_color.dst", "--positions", "C")
    assert "unknown hook" in error_line(capsys, *base, "--target", "replace_color.dst", "--hooks", "attn_out")
    assert "2 blocks" in error_line(capsys, *base, "--target", "replace_color.dst", "--hooks",
                                    "blocks.5.hook_resid_post")
    assert "model 3" in error_line(capsys, "probe", "--model", "3", "--source", source, "--target",
                                   "replace_color.dst")


def test_split_draws_widen_every_accuracy_interval_around_its_value(gpt):
    """Further train / test splits refit every probe: each interval still holds
    the reported accuracy and now reaches every split's accuracy."""
    from culture.probes import run_probes

    one = run_probes(gpt, "replace_color.dst", n=60, hooks=["resid_pre"], batch_size=60, random_baseline=False)
    res = run_probes(gpt, "replace_color.dst", n=60, hooks=["resid_pre"], batch_size=60, random_baseline=False,
                     split_draws=3)
    assert res.settings["split_draws"] == 3 and "further train / test splits" in res.settings["intervals"]
    for r, r1 in zip(res.rows, one.rows):
        for key in ("accuracy", "control_accuracy"):
            acc = r[key]
            assert acc["value"] == r1[key]["value"] and len(acc["splits"]) == 4  # the reported split first
            lo, hi = acc["ci95"]
            assert lo <= min(acc["splits"]) <= acc["value"] <= max(acc["splits"]) <= hi
            assert lo <= r1[key]["ci95"][0] and hi >= r1[key]["ci95"][1]


def test_probe_help_is_light():
    from tests.cli import heavy_imports

    found, _, _ = heavy_imports([["probe", "--help"]], ["transformer_lens", "sae_lens", "culture.probes"])
    assert found == []

