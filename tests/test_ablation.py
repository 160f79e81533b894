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
    from culture.ablation import _score, component_hook
    from culture.evaluation import group_metrics

    hooks = [component_hook(Component("head", 1, h)) for h in range(2)]
    scores = _score(hooked, ts, 3, None, hooks)
    all_heads = group_metrics(scores, ts.labels, ts.label_names)["all"]
    attn1 = res.rows[2]["metrics"]["all"]
    assert all_heads["loss"] == pytest.approx(attn1["loss"], rel=1e-5)
    assert both.rows[0]["metrics"]["all"]["loss"] != pytest.approx(attn1["loss"], rel=1e-6)


def test_ablate_cli_table_heatmap_json(source, tmp_path, capsys):
    png, out = tmp_path / "abl.png", tmp_path / "abl.json"
    rc = exit_code(["ablate", "--model", "0", "--source", str(source), "-n", "6", "--heads", "--mean",
                    "--png", str(png), "--json", str(out), "--batch-size", "3", "--quizzes", "world"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "attn 0" in printed and "head 1.1" in printed and "clean" in printed
    d = json.loads(out.read_text())
    assert len(d["ablations"]) == (4 + 4) * 2
    assert d["groups"][-1] == "all" and d["clean"]["all"]["n"] == 6
    assert d["settings"]["quizzes"] == "world" and d["settings"]["num_c_quizzes"] == 0
    # both metric families, with intervals, and the paired change against clean
    for entry in (d["clean"]["all"], d["ablations"][0]["metrics"]["frame"] if "frame" in d["groups"]
                  else d["ablations"][0]["metrics"]["all"]):
        for family in ("all_cells", "transform_cells"):
            f = entry[family]
            assert {"ce", "cell_accuracy", "grid_accuracy", "expected_grid_accuracy"} <= set(f)
            lo, hi = f["grid_accuracy"]["ci95"]
            assert 0.0 <= lo <= f["grid_accuracy"]["value"] <= hi <= 1.0
    change = d["ablations"][0]["metrics"]["all"]["transform_cells"]["change"]
    assert {"ce", "cell_accuracy", "grid_accuracy"} <= set(change)
    assert d["clean"]["all"]["transform_cells"]["cells"] < d["clean"]["all"]["all_cells"]["cells"]
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_attention_statistics_cli(source, tmp_path, capsys):
    from PIL import Image

    png, out = tmp_path / "att.png", tmp_path / "att.json"
    rc = exit_code(["ablate", "--model", "0", "--source", str(source), "-n", "4", "--attention", "0.1",
                    "--png", str(png), "--json", str(out), "--batch-size", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Look-back offsets" in printed and "paired grid" in printed
    d = json.loads(out.read_text())
    assert d["n"] == 4 and len(d["offsets"]) == 8
    # the attention of a query sums to 1 over the key groups
    for row in d["by_block"].values():
        assert sum(v["value"] for v in row.values()) == pytest.approx(1.0, abs=1e-5)
    with Image.open(png) as img:
        assert img.size[0] > 300
    png1 = tmp_path / "one.png"
    assert exit_code(["ablate", "--model", "0", "--source", str(source), "-n", "2", "--attention", "0.1",
                      "--quiz", "1", "--png", str(png1)]) == 0
    assert png1.exists()


def test_attention_statistics_match_one_quiz_patterns(source):
    """By-block masses and offset masses equal those computed by hand from
    each quiz's pattern (attention_pattern)."""
    from culture.ablation import attention_pattern, attention_statistics, source_test_set
    from culture.hooked import load_hooked
    from culture.quiz import ar_mask

    ts = source_test_set(source, 3, seed=4)
    hooked = load_hooked(0, source)
    stats = attention_statistics(hooked, ts, 1, 0, batch_size=2, top_offsets=404)
    seq = torch.where(ar_mask(ts.quizzes), ts.targets, ts.quizzes)
    pats = [attention_pattern(hooked, seq[i], 1, 0).double() for i in range(3)]
    mask = ar_mask(seq)
    # mass at offset d over the answer queries, mean per quiz then over quizzes
    for entry in stats.offsets[:5]:
        d = entry["offset"]
        per_quiz = []
        for i, p in enumerate(pats):
            q = mask[i].nonzero().flatten()
            per_quiz.append(float(p[q, q - d].mean()))
        assert entry["mass"]["value"] == pytest.approx(sum(per_quiz) / 3, abs=1e-6)
    # the answer queries' mass on their own grid (block 3 in every eval structure)
    own = [float(p[mask[i]][:, 304:].sum(1).mean()) for i, p in enumerate(pats)]
    assert stats.by_block["answer"]["same grid"]["value"] == pytest.approx(sum(own) / 3, abs=1e-6)
    pattern = stats.mean_patterns
    assert all(v.shape == (404, 404) for v in pattern.values())


def test_dominant_offset():
    from culture.ablation import dominant_offset

    n = 404
    pat = torch.zeros(n, n)
    for q in range(n):
        pat[q, max(0, q - 101)] = 1.0
    assert dominant_offset(pat) == (101, 1.0)
    from culture.ablation import describe_offset

    assert describe_offset(100) == "1 grid back, same cell" and describe_offset(9) == "same grid, 1 row up"
    assert describe_offset(201) == "2 grids back, same cell" and describe_offset(99) == "1 grid back, 1 column right"


def test_ablate_cli_errors(source, tmp_path, capsys):
    cases = [
        (["ablate", "--model", "3", "--source", str(source)], "model 3"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "5.0", "--png", str(tmp_path / "a.png"),
          "-n", "2"], "out of range"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "x", "--png", str(tmp_path / "a.png")],
         "LAYER.HEAD"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "0.0", "--quiz", "0"], "--png"),
        (["ablate", "--model", "0", "--source", str(source), "--attention", "0.0", "--mean"], "--attention"),
        (["ablate", "--model", "0", "--source", str(source), "--tasks", "nope"], "unknown task"),
    ]
    for argv, needle in cases:
        assert exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], (argv, err)


# ------------------------------------------------------------------ nulls: mean per structure, resample


@pytest.fixture(scope="module")
def one_task_set(source):
    from culture.ablation import source_test_set

    return source_test_set(source, 16, ["replace_color", "frame"], seed=5, c_quizzes=False)


def _hand_scores(hooked, ts, hook_name, replace):
    """score the test set in one batch, replacing the activation at hook_name
    by replace(act) (the hand-made ablation)."""
    from culture.evaluation import cell_scores
    from culture.hooked import to_hooked_tokens
    from culture.quiz import ar_mask, transform_mask

    seq = torch.where(ar_mask(ts.quizzes), ts.targets, ts.quizzes)
    tokens = to_hooked_tokens(seq)
    with torch.inference_mode():
        logits = hooked.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: replace(act))],
                                       attention_mask=torch.ones_like(tokens))
    return cell_scores(logits, seq, ar_mask(seq), transform_mask(seq, paired=ts.targets))


def _clean_activations(hooked, ts, hook_name):
    from culture.hooked import to_hooked_tokens
    from culture.quiz import ar_mask

    seq = torch.where(ar_mask(ts.quizzes), ts.targets, ts.quizzes)
    tokens = to_hooked_tokens(seq)
    with torch.inference_mode():
        _, cache = hooked.run_with_cache(tokens, names_filter=[hook_name], attention_mask=torch.ones_like(tokens))
    return cache[hook_name].clone()


def test_mean_ablation_is_the_hand_computed_per_structure_mean(source, one_task_set):
    from culture.ablation import Component, run_ablations, structure_position_means
    from culture.hooked import load_hooked

    ts = one_task_set
    assert len(set(ts.structures.tolist())) >= 3  # the means differ by structure
    hooked = load_hooked(0, source)
    comp = Component("mlp", 0)
    act = _clean_activations(hooked, ts, comp.hook_name)  # (16, 404, d)
    by_hand = torch.zeros_like(act)
    for s in set(ts.structures.tolist()):
        rows = ts.structures == s
        by_hand[rows] = act[rows].double().mean(0).float()
    table = structure_position_means(hooked, ts, [comp], batch_size=5)[comp]
    assert torch.allclose(table[ts.structures.long()], by_hand, atol=1e-6)

    res = run_ablations(hooked, ts, components=[comp], modes=("mean", "pooled_mean"), batch_size=5)
    mean_row, pooled_row = res.rows
    expect = _hand_scores(hooked, ts, comp.hook_name, lambda a: by_hand.to(a))
    nll = -expect["log_prob"].double().sum() / expect["n_predicted"].sum()
    assert mean_row["metrics"]["all"]["loss"] == pytest.approx(float(nll), rel=1e-5)
    # pooling the structures is a different null (the random model's loss barely cares, its activations do)
    pooled = act.double().mean(0).float()
    assert float((by_hand - pooled).abs().max()) > 1e-2
    assert pooled_row["metrics"]["all"]["loss"] != pytest.approx(mean_row["metrics"]["all"]["loss"], rel=1e-6)


def test_resample_draws_from_the_same_structure_and_task(source, one_task_set):
    from culture.ablation import Component, resample_donors, run_ablations
    from culture.hooked import load_hooked

    ts = one_task_set
    donors = resample_donors(ts, seed=3)
    assert sorted(donors.tolist()) == list(range(len(ts)))  # every quiz donates once
    groups = {}
    for i in range(len(ts)):
        groups.setdefault((ts.labels[i], int(ts.structures[i])), []).append(i)
    for i, j in enumerate(donors.tolist()):
        assert ts.labels[j] == ts.labels[i] and int(ts.structures[j]) == int(ts.structures[i])
        alone = len(groups[(ts.labels[i], int(ts.structures[i]))]) == 1
        assert (j == i) == alone
    assert any(len(g) > 1 for g in groups.values())
    assert not torch.equal(resample_donors(ts, seed=3), resample_donors(ts, seed=4)) or all(
        len(g) <= 2 for g in groups.values())

    hooked = load_hooked(0, source)
    comp = Component("head", 1, 1)
    act = _clean_activations(hooked, ts, comp.hook_name)  # (16, 404, heads, d_head)

    def swap(a):
        a = a.clone()
        a[:, :, 1] = act[donors][:, :, 1].to(a)
        return a

    expect = _hand_scores(hooked, ts, comp.hook_name, swap)
    res = run_ablations(hooked, ts, components=[comp], modes=("resample",), batch_size=5, seed=3)
    nll = -expect["transform_log_prob"].double().sum() / expect["n_transform"].sum()
    got = res.rows[0]["metrics"]["all"]["transform_cells"]["ce"]["value"]
    assert got == pytest.approx(float(nll), rel=1e-5)
    assert res.settings["resample_self_donors"] == int((donors == torch.arange(len(ts))).sum())
