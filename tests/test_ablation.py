"""Ablations (zero / mean, layers and heads) and attention patterns."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli import exit_code
from tests.helpers_sources import make_local_source

SHAPE = (32, 16, 64, 2, 2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_local_source(tmp_path_factory.mktemp("abl"), shapes=SHAPE, n_models=1)


def test_components_and_head_specs():
    from culture.ablation import AblationError, Component, list_components, parse_head

    comps = list_components(2, 3, heads=True)
    assert [c.name for c in comps[:4]] == ["attn 0", "mlp 0", "attn 1", "mlp 1"]
    assert len(comps) == 4 + 6 and comps[-1].name == "head 1.2"
    assert Component("mlp", 8).hook_name == "blocks.8.hook_mlp_out"
    assert Component("attn", 0).hook_name == "blocks.0.hook_attn_out"
    assert Component("head", 0, 1).hook_name == "blocks.0.attn.hook_z"
    assert parse_head("0.1") == (0, 1) and parse_head("3:2") == (3, 2)
    for bad in ("1", "a.b", "1.2.3", ""):
        with pytest.raises(AblationError):
            parse_head(bad)
    with pytest.raises(AblationError, match="out of range"):
        parse_head("2.0", n_layers=2, n_heads=2)


def test_zero_ablating_the_last_mlp_is_deleting_it(source):
    """Zero-ablating blocks.1.hook_mlp_out (the MLP feeding the readout) changes
    the loss, and equals a MyGPT whose last MLP outputs nothing."""
    from culture.ablation import Component, run_ablations, source_test_set
    from culture.evaluation import score_quizzes
    from culture.hooked import load_hooked
    from culture.sources import load_model

    ts = source_test_set(source, 8, seed=1)
    hooked = load_hooked(0, source)
    res = run_ablations(hooked, ts, components=[Component("mlp", 1)], batch_size=4)
    clean, ablated = res.clean["all"], res.rows[0]["metrics"]["all"]
    assert ablated["loss"] != pytest.approx(clean["loss"], rel=1e-3)

    model, _ = load_model(0, source)
    with torch.no_grad():
        model.trunk[3].down.weight.zero_()
        model.trunk[3].down.bias.zero_()
    scores = score_quizzes(model, ts)
    n_pred = 100
    assert float((-scores["log_prob"] / n_pred).double().mean()) == pytest.approx(ablated["loss"], rel=1e-5)
    assert float(scores["ce"].double().mean()) == pytest.approx(ablated["ce_all"], rel=1e-5)


def test_head_ablation_and_mean_ablation(source):
    from culture.ablation import Component, position_means, run_ablations, source_test_set
    from culture.hooked import load_hooked

    ts = source_test_set(source, 6, seed=2)
    hooked = load_hooked(0, source)
    comps = [Component("head", 0, 0), Component("attn", 1)]
    means = position_means(hooked, ts, comps, batch_size=3)
    assert means[comps[0]].shape == (404, hooked.cfg.d_head)
    assert means[comps[1]].shape == (404, hooked.cfg.d_model)
    res = run_ablations(hooked, ts, components=comps, modes=("zero", "mean"), batch_size=3)
    assert [(r["component"], r["mode"]) for r in res.rows] == [
        ("head 0.0", "zero"), ("head 0.0", "mean"), ("attn 1", "zero"), ("attn 1", "mean")]
    # zero-ablating every head of layer 1 = zero-ablating attention layer 1 (b_O is 0 in these models)
    both = run_ablations(hooked, ts, components=[Component("head", 1, 0), Component("head", 1, 1)],
                         batch_size=3)
    from culture.ablation import _score, component_hook, task_metrics
    from culture.quiz import ar_mask

    hooks = [component_hook(Component("head", 1, h)) for h in range(2)]
    scores = _score(hooked, ts, 3, None, hooks)
    all_heads = task_metrics(scores, ts.labels, ts.label_names, ar_mask(ts.targets).sum(1))["all"]
    attn1 = res.rows[2]["metrics"]["all"]
    assert all_heads["loss"] == pytest.approx(attn1["loss"], rel=1e-5)
    assert both.rows[0]["metrics"]["all"]["loss"] != pytest.approx(attn1["loss"], rel=1e-6)


def test_ablate_cli_table_heatmap_json(source, tmp_path, capsys):
    png, out = tmp_path / "abl.png", tmp_path / "abl.json"
    rc = exit_code(["ablate", "--model", "0", "--source", str(source), "-n", "6", "--heads", "--mean",
                    "--png", str(png), "--json", str(out), "--batch-size", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "attn 0" in printed and "head 1.1" in printed and "clean" in printed
    d = json.loads(out.read_text())
    assert len(d["ablations"]) == (4 + 4) * 2
    assert d["groups"][-1] == "all" and d["clean"]["all"]["n"] == 6
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_attention_pattern_png(source, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "att.png"
    rc = exit_code(["ablate", "--model", "0", "--source", str(source), "-n", "2", "--attention", "0.1",
                    "--png", str(png)])
    assert rc == 0
    assert "most attended offset" in capsys.readouterr().out
    with Image.open(png) as img:
        assert img.size[0] > 300
    from culture.ablation import attention_pattern, source_test_set
    from culture.hooked import load_hooked

    ts = source_test_set(source, 2, seed=0)
    pat = attention_pattern(load_hooked(0, source), ts.quizzes[0], 0, 1)
    assert pat.shape == (404, 404)
    assert torch.allclose(pat.sum(-1), torch.ones(404), atol=1e-5)
    assert float(pat.triu(1).abs().max()) == 0.0  # causal


def test_dominant_offset():
    from culture.ablation import dominant_offset

    n = 404
    pat = torch.zeros(n, n)
    for q in range(n):
        pat[q, max(0, q - 101)] = 1.0
    assert dominant_offset(pat) == (101, 1.0)


def test_ablate_cli_errors(source, tmp_path, capsys):
    cases = [
        (["ablate", "--model", "3", "--source", str(source)], "model 3"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "5.0", "--png", str(tmp_path / "a.png"),
          "-n", "2"], "out of range"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "x", "--png", str(tmp_path / "a.png")],
         "LAYER.HEAD"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "0.0"], "--png"),
        (["ablate", "--model", "0", "--source", str(source), "--tasks", "nope"], "unknown task"),
    ]
    for argv, needle in cases:
        assert exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], (argv, err)
