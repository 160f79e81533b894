"""SAEs: training with SAELens's runner, loading (directory and hub source),
evaluation metrics, feature dashboard, steering, CLI errors.

One tiny SAE is trained once per module through the CLI (a few dozen steps of
128 tokens on a 2-block model) and reused by the other tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from tests.cli import exit_code, heavy_imports
from tests.helpers_sources import make_local_source, make_offline_hub_cache, use_hub_env

SHAPE = (32, 16, 64, 2, 2)  # dim_model, dim_keys, dim_hidden, heads, blocks
HOOK = "blocks.1.hook_mlp_out"
TRAIN_ARGS = ["--hook", HOOK, "--steps", "30", "--batch-tokens", "128", "--expansion-factor", "2",
              "--n-batches-in-buffer", "4", "--store-batch-size", "2", "--n-batches-for-norm-estimate", "2",
              "--lr", "1e-3"]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae")
    source = make_local_source(root, shapes=SHAPE, n_models=1)
    out = root / "sae-out"
    rc = exit_code(["sae", "train", "--model", "0", "--source", str(source), "--out", str(out), *TRAIN_ARGS,
                    "--json", str(root / "summary.json")])
    assert rc == 0
    return {"root": root, "source": source, "sae": out}


def identity_sae(d: int, hook: str):
    """An SAE whose encoder and decoder are the identity (ReLU on top): on
    non-negative activations it gives its input back exactly."""
    from sae_lens import SAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d, d_sae=d)
    cfg.metadata.hook_name = hook
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


# ------------------------------------------------------------------ training


def test_train_writes_a_loadable_saelens_directory(trained):
    from sae_lens import SAE

    out = trained["sae"]
    names = {p.name for p in out.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "training_summary.json", "runner_cfg.json"} <= names
    # atomic: no temporary folder left beside it
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".sae-out.")]
    # with the usual modes, not the 0700 / 0600 of temporary files
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (out / "sae_weights.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.d_in == SHAPE[0] and sae.cfg.d_sae == 2 * SHAPE[0]
    assert sae.cfg.metadata.hook_name == HOOK
    assert sae.cfg.metadata.context_size == 405 and sae.cfg.metadata.prepend_bos is False
    assert sae.cfg.normalize_activations == "none"  # the norm scale is folded into the weights
    summary = json.loads((trained["root"] / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["training_tokens"] == 30 * 128
    assert summary["tokens_per_second"] > 0
    assert summary["l0"] >= 0 and summary["dead_features"] is not None
    assert summary["explained_variance"] is not None
    assert summary["model_id"] == 0


def test_defaults_are_the_earlier_toolkits_run():
    from culture.sae.training import SAETrainSettings, runner_config

    cfg = runner_config(SAETrainSettings(), 512, output_path=None)
    assert cfg.hook_name == "blocks.8.hook_mlp_out"
    assert cfg.sae.d_sae == 32 * 512 and cfg.sae.l1_coefficient == 5
    assert cfg.sae.l1_warm_up_steps == 30_000 // 20
    assert cfg.sae.normalize_activations == "expected_average_only_in"
    assert cfg.sae.decoder_init_norm == 0.1 and cfg.sae.apply_b_dec_to_input is False
    assert cfg.lr == 2e-5 and cfg.lr_scheduler_name == "constant" and cfg.lr_decay_steps == 30_000 // 5
    assert cfg.train_batch_size_tokens == 4096 and cfg.training_tokens == 30_000 * 4096
    assert cfg.context_size == 405 and cfg.prepend_bos is False and cfg.exclude_special_tokens is False
    assert cfg.dead_feature_window == 1000 and cfg.dead_feature_threshold == 1e-4
    assert cfg.feature_sampling_window == 1000
    assert cfg.logger.log_to_wandb is False


def test_train_from_a_dataset_directory(tmp_path):
    from culture.hooked import load_hooked
    from culture.sae import SAETrainSettings, generate_training_dataset, train_sae

    from culture.dataset import build_dataset

    source = make_local_source(tmp_path, shapes=SHAPE, n_models=1)
    ds = generate_training_dataset(12, seed=3)
    assert len(ds) == 12 and len(ds[0]["input_ids"]) == 405 and ds[0]["input_ids"][0] == 0
    assert ds[0]["input_ids"][1] in (11, 12, 13, 14)  # a marker starts the quiz
    build_dataset(tmp_path / "ds", 8, parquet=False)  # `culture-interp dataset build`'s layout
    settings = SAETrainSettings(hook_name="blocks.0.hook_resid_post", steps=4, train_batch_size_tokens=128,
                                expansion_factor=1, n_batches_in_buffer=2, store_batch_size_prompts=2,
                                normalize_activations="none")
    result = train_sae(load_hooked(0, source), tmp_path / "out", settings, dataset=tmp_path / "ds")
    assert result.summary["dataset_rows"] == 8
    assert result.sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert (tmp_path / "out" / "cfg.json").is_file()


def test_same_seed_same_sae(tmp_path):
    from culture.hooked import load_hooked
    from culture.sae import SAETrainSettings, train_sae

    source = make_local_source(tmp_path, shapes=SHAPE, n_models=1)
    hooked = load_hooked(0, source)
    settings = SAETrainSettings(hook_name=HOOK, steps=3, train_batch_size_tokens=64, expansion_factor=1,
                                n_batches_in_buffer=1, store_batch_size_prompts=1, n_batches_for_norm_estimate=1,
                                seed=5)
    a = train_sae(hooked, tmp_path / "a", settings, num_quizzes=8).sae
    b = train_sae(hooked, tmp_path / "b", settings, num_quizzes=8).sae
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.W_enc, b.W_enc)


# ------------------------------------------------------------------ metrics


def test_identity_sae_explains_everything(tmp_path):
    """W_enc = W_dec = I, b = 0 on post-ReLU activations: the splice is exact."""
    from culture.ablation import source_test_set
    from culture.hooked import load_hooked
    from culture.sae import evaluate_sae

    source = make_local_source(tmp_path, shapes=SHAPE, n_models=1)
    hooked = load_hooked(0, source, sae=True)
    hook = "blocks.1.mlp.hook_post"
    ts = source_test_set(source, 8, seed=1)
    res = evaluate_sae(hooked, identity_sae(SHAPE[2], hook), ts, batch_size=4)
    overall = res.overall
    assert overall["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert overall["mse"] == pytest.approx(0.0, abs=1e-9)
    assert overall["loss_sae"] == pytest.approx(overall["loss_clean"], abs=1e-6)
    assert overall["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert overall["ce_all_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert overall["accuracy_sae"] == overall["accuracy_clean"]
    assert overall["loss_zero"] != pytest.approx(overall["loss_clean"])
    # L0 of the identity SAE = the number of active ReLUs per position
    from culture.hooked import to_hooked_tokens

    _, cache = hooked.run_with_cache(to_hooked_tokens(ts.quizzes), names_filter=[hook])
    assert overall["l0"] == pytest.approx(float((cache[hook] > 0).float().sum(-1).mean()), rel=1e-6)
    assert set(res.groups) == set(ts.label_names) | {"all"}


def test_eval_cli_json(trained, capsys):
    out = trained["root"] / "eval.json"
    rc = exit_code(["sae", "eval", "--model", "0", "--source", str(trained["source"]), "--sae", str(trained["sae"]),
                    "-n", "8", "--json", str(out), "--quizzes", "world"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "loss recovered" in printed and "all" in printed
    d = json.loads(out.read_text())
    assert d["hook_name"] == HOOK and d["d_sae"] == 64
    assert d["settings"]["num_c_quizzes"] == 0 and "culture" not in d["groups"]
    overall = d["by_group"]["all"]
    assert overall["n"] == 8
    for key in ("explained_variance", "l0", "dead_features", "dense_features", "loss_clean", "loss_sae",
                "loss_zero", "loss_recovered", "accuracy_clean", "accuracy_sae", "accuracy_zero"):
        assert key in overall
    assert 0 <= overall["dead_features"] <= 64 and overall["l0"] > 0
    for family in ("all_cells", "transform_cells"):  # both metric families, intervals, the floor named
        f = overall[family]
        assert set(f) == {"clean", "sae", "zero", "loss_recovered"}
        assert f["loss_recovered"]["floor"] == "hook zero-ablated" and len(f["loss_recovered"]["ci95"]) == 2
        assert {"ce", "cell_accuracy", "grid_accuracy"} <= set(f["sae"]["change"])
    assert overall["all_cells"]["clean"]["grid_accuracy"]["value"] == overall["accuracy_clean"]
    assert overall["transform_cells"]["clean"]["cells"] < overall["all_cells"]["clean"]["cells"]


# ------------------------------------------------------------------ features


def test_features_cli_dashboard_and_steering(trained, capsys):
    out = trained["root"] / "dash"
    rc = exit_code(["sae", "features", "--model", "0", "--source", str(trained["source"]), "--sae", str(trained["sae"]),
                    "-n", "8", "--features", "1", "5", "--examples", "2", "--steer", "1=0", "5=@2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Steering" in printed
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "Feature 1" in page and "Feature 5" in page and 'id="f-5"' in page
    # self-contained: styles inline, pictures embedded, nothing fetched, no script
    assert "<style>" in page and "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert "<script" not in page and "<link" not in page
    report = json.loads((out / "report.json").read_text())
    assert [f["id"] for f in report["features"]] == [1, 5]
    f = report["features"][0]
    assert set(f["by_task"]) <= set(report["groups"])
    assert len(f["logit_effect"]) == 15 and len(f["promotes"]) == 3
    assert report["steering"]["specs"] == ["1=0", "5=@2"]
    assert report["steering"]["by_group"]["all"]["n"] == 8
    for family in ("all_cells", "transform_cells"):
        steered = report["steering"]["by_group"]["all"][family]["steered"]
        assert 0 <= steered["grid_accuracy"]["ci95"][0] <= steered["grid_accuracy"]["ci95"][1] <= 1
        assert "grid_accuracy" in steered["change"]
    for feat in report["features"]:
        if feat["examples"]:
            assert (out / f"feature_{feat['id']}.png").is_file()


def test_top_features_and_logit_effect(trained):
    from culture.ablation import source_test_set
    from culture.hooked import load_hooked
    from culture.sae import feature_report, load_sae

    hooked = load_hooked(0, trained["source"], sae=True)
    sae = load_sae(trained["sae"])
    ts = source_test_set(trained["source"], 6, seed=2)
    rep = feature_report(hooked, sae, ts, top=3, rank_by="frequency", n_examples=2, batch_size=3)
    freqs = [f["token_frequency"] for f in rep.features]
    assert freqs == sorted(freqs, reverse=True) and len(freqs) == 3
    fid = rep.features[0]["id"]
    expected = (sae.W_dec[fid] @ hooked.W_U).detach()
    got = torch.tensor(list(rep.features[0]["logit_effect"].values()))
    assert torch.allclose(got, expected, atol=1e-5)
    for f in rep.features:  # never a colour on the wrong side of zero; strongest first
        promoted, suppressed = [v for _, v in f["promotes"]], [v for _, v in f["suppresses"]]
        assert all(v > 0 for v in promoted) and all(v < 0 for v in suppressed)
        assert promoted == sorted(promoted, reverse=True) and suppressed == sorted(suppressed)
        colours = [v for k, v in f["logit_effect"].items() if k in {c for c, _ in f["promotes"] + f["suppresses"]}]
        assert len(colours) == len(promoted) + len(suppressed)
        if promoted:
            assert promoted[0] == max(v for k, v in list(f["logit_effect"].items())[:11])
    img = rep.image(fid)
    if rep.features[0]["examples"]:
        assert img is not None and img.size[0] > 100


def test_steering_without_change_is_clean(trained):
    from culture.ablation import source_test_set
    from culture.hooked import load_hooked
    from culture.sae import load_sae, parse_steer, steer_accuracy

    hooked = load_hooked(0, trained["source"], sae=True)
    sae = load_sae(trained["sae"])
    ts = source_test_set(trained["source"], 6, seed=4)
    res = steer_accuracy(hooked, sae, ts, parse_steer(["3=1"]), batch_size=3)  # scale by 1: nothing changes
    overall = res["by_group"]["all"]
    assert overall["changed"] == 0
    assert overall["loss_steered"] == pytest.approx(overall["loss_clean"], abs=1e-4)


def test_parse_steer():
    from culture.sae import SAEError, parse_steer

    specs = parse_steer(["10=0", "11=2.5", "12=@-1", "13=clamp:3", "14=x0.5"])
    assert [(s.feature, s.op, s.value) for s in specs] == [
        (10, "scale", 0.0), (11, "scale", 2.5), (12, "clamp", -1.0), (13, "clamp", 3.0), (14, "scale", 0.5)]
    acts = torch.ones(2, 3, 16)
    for s in specs:
        s.apply(acts)
    assert acts[..., 10].eq(0).all() and acts[..., 12].eq(-1).all() and acts[..., 0].eq(1).all()
    for bad in ("abc", "10", "=3", "10=", "10=foo", "-1=2"):
        with pytest.raises(SAEError):
            parse_steer([bad])
    with pytest.raises(SAEError, match="out of range"):
        parse_steer(["64=0"], d_sae=64)


# ------------------------------------------------------------------ loading


def test_load_sae_from_a_hub_source(trained, tmp_path, monkeypatch):
    from culture.errors import CultureError
    from culture.sae import load_sae

    files = {f"gpt-0/blocks_1_mlp_out/{p.name}": p for p in trained["sae"].iterdir() if p.is_file()}
    env = make_offline_hub_cache(tmp_path, "tommyp111/culture-sae", files)
    use_hub_env(monkeypatch, env)
    a = load_sae("tommyp111/culture-sae", "gpt-0/blocks_1_mlp_out")
    b = load_sae("tommyp111/culture-sae/gpt-0/blocks_1_mlp_out")
    assert torch.equal(a.W_dec, b.W_dec) and a.cfg.metadata.hook_name == HOOK
    with pytest.raises(CultureError):
        load_sae("tommyp111/culture-sae", "gpt-0/blocks_8_mlp_out")  # not cached, offline
    with pytest.raises(CultureError):
        load_sae("someone/not-cached")


def test_bundled_sae_loads_from_the_zoo_sae_folder(trained, tmp_path, monkeypatch):
    import culture.sources
    from culture.sae import SAEError, load_sae

    zoo = tmp_path / "zoo"
    monkeypatch.setattr(culture.sources, "ZOO_DIR", zoo)
    zoo.mkdir()
    with pytest.raises(SAEError, match="ships no SAE"):
        load_sae("bundled")
    shutil.copytree(trained["sae"], zoo / "sae" / "gpt-0" / "blocks_1_mlp_out")
    sae = load_sae("bundled")
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.d_sae == 64


def test_bundled_layout_one_sae_per_model_plus_a_second_seed(trained, tmp_path, monkeypatch, capsys):
    """culture/zoo/sae/gpt-K/<hook>/ per model and gpt-K-seedS/<hook>/ for a
    further seed: each found by load_sae("bundled", ...), by the CLI's
    --sae bundled (the model's own), and loadable with SAE.load_from_disk."""
    import culture.sources
    from sae_lens import SAE

    from culture.sae import SAEError, bundled_sae_folder, bundled_saes, load_sae

    zoo = tmp_path / "zoo"
    monkeypatch.setattr(culture.sources, "ZOO_DIR", zoo)
    for folder in ("gpt-0", "gpt-1", "gpt-0-seed43"):
        shutil.copytree(trained["sae"], zoo / "sae" / folder / "blocks_1_mlp_out")
    found = bundled_saes()
    assert [(b.model, b.seed, b.folder) for b in found] == [
        (0, None, "gpt-0/blocks_1_mlp_out"), (1, None, "gpt-1/blocks_1_mlp_out"),
        (0, 43, "gpt-0-seed43/blocks_1_mlp_out")]
    for b in found:
        assert load_sae("bundled", b.folder).cfg.d_sae == 64
        assert SAE.load_from_disk(str(b.path)).cfg.metadata.hook_name == HOOK
    assert load_sae("bundled", "gpt-1").culture_path.endswith("gpt-1/blocks_1_mlp_out")
    assert bundled_sae_folder(0, extra=True) == "gpt-0-seed43/blocks_1_mlp_out"
    with pytest.raises(SAEError, match="several SAEs"):
        load_sae("bundled")
    with pytest.raises(SAEError, match="no SAE of model 5"):
        bundled_sae_folder(5)
    # the CLI's --sae bundled picks the model's own SAE
    source = make_local_source(tmp_path, shapes=SHAPE, n_models=2)
    rc = exit_code(["sae", "eval", "--model", "1", "--source", str(source), "--sae", "bundled", "--num-samples", "4",
                    "--json", str(tmp_path / "e.json")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "e.json").read_text())["hook_name"] == HOOK


def test_the_package_zoo_ships_an_sae_per_model_and_a_ceiling_seed():
    """The real bundled zoo: one SAE per model at blocks.2.hook_mlp_out plus a
    second seed of model 0, each loading with SAE.load_from_disk and
    load_sae("bundled", ...), and their held-out figures in the model card."""
    from sae_lens import SAE

    from culture.bundle import ZOO_DIR
    from culture.sae import bundled_saes, load_sae

    found = {(b.model, b.seed): b for b in bundled_saes()}
    assert {(0, None), (1, None), (2, None), (3, None), (0, 43)} <= set(found)
    card = (ZOO_DIR / "MODEL_CARD.md").read_text()
    for b in found.values():
        sae = SAE.load_from_disk(str(b.path))
        assert sae.cfg.metadata.hook_name == "blocks.2.hook_mlp_out" and sae.cfg.d_sae == 1024
        assert load_sae("bundled", b.folder).cfg.d_sae == 1024
        assert f"`sae/{b.folder}`" in card
    assert "Zoo size:" in card


def test_load_sae_errors(tmp_path, trained):
    from culture.sae import SAEError, load_sae

    with pytest.raises(SAEError, match="not found"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEError, match="not an SAE directory"):
        load_sae(tmp_path / "empty")
    # a folder holding exactly one SAE is accepted
    assert load_sae(trained["sae"].parent / trained["sae"].name).cfg.d_sae == 64


def test_legacy_config_loads(tmp_path):
    """A pre-6.0 SAELens cfg.json (hook at top level, no architecture)."""
    from safetensors.torch import save_file

    from culture.sae import load_sae

    d = tmp_path / "legacy"
    d.mkdir()
    cfg = {"model_name": "culture-gpt-0-sae", "hook_name": HOOK, "hook_layer": 1, "hook_head_index": None,
           "d_in": 32, "d_sae": 64, "activation_fn_str": "relu", "apply_b_dec_to_input": False,
           "finetuning_scaling_factor": False, "context_size": 405, "dtype": "float32", "device": "cpu",
           "sae_lens_training_version": "3.22.2", "prepend_bos": True, "normalize_activations": "none"}
    (d / "cfg.json").write_text(json.dumps(cfg))
    save_file({"W_enc": torch.randn(32, 64), "W_dec": torch.randn(64, 32), "b_enc": torch.zeros(64),
               "b_dec": torch.zeros(32)}, str(d / "sae_weights.safetensors"))
    sae = load_sae(d)
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.d_sae == 64


# ------------------------------------------------------------------ CLI errors


def test_cli_bad_inputs_are_one_line(trained, tmp_path, capsys):
    src, sae = str(trained["source"]), str(trained["sae"])
    cases = [
        (["sae", "eval", "--model", "7", "--source", src, "--sae", sae], "model 7"),
        (["sae", "eval", "--model", "0", "--source", src, "--sae", str(tmp_path / "missing")], "not found"),
        (["sae", "train", "--model", "0", "--source", src, "--out", str(tmp_path / "o"), "--hook",
          "blocks.5.hook_mlp_out", "--steps", "2"], "not a hook point"),
        (["sae", "features", "--model", "0", "--source", src, "--sae", sae, "--features", "999",
          "--out", str(tmp_path / "f")], "out of range"),
        (["sae", "features", "--model", "0", "--source", src, "--sae", sae, "--steer", "1==2",
          "--out", str(tmp_path / "f")], "--steer"),
        (["sae", "features", "--model", "0", "--source", src, "--sae", sae, "--steer", "640=0",
          "--out", str(tmp_path / "f")], "out of range"),
        (["sae", "train", "--model", "0", "--source", src, "--out", str(trained["sae"]), "--steps", "2"],
         "not empty"),
        (["sae", "train", "--model", "0", "--source", src, "--out", str(tmp_path / "p"), "--steps", "2",
          "--push", "me/culture-sae"], "offline"),
        (["sae", "train", "--model", "0", "--source", src, "--out", str(tmp_path / "q"), "--steps", "2",
          "--option", "no_such_field=1", "--hook", HOOK], "unknown SAELens option"),
    ]
    for argv, needle in cases:
        assert exit_code(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert needle in line, (argv, line)
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_push_offline_is_one_error(tmp_path, monkeypatch, trained):
    from culture.sae import SAEError, push_sae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAEError, match="offline"):
        push_sae(trained["sae"], "me/culture-sae", "gpt-0/blocks_1_mlp_out")


def test_help_does_not_import_sae_lens():
    argvs = (["--help"], ["sae", "--help"], ["sae", "train", "--help"], ["sae", "eval", "--help"],
             ["sae", "features", "--help"], ["ablate", "--help"])
    heavy, out, err = heavy_imports(argvs, ("sae_lens", "transformer_lens"))
    assert heavy == [], out[-500:] + err[-500:]
    assert "Traceback" not in err, err[-800:]
    for word in ("--steer", "--features", "--attention", "--l1-coefficient", "--dense-threshold"):
        assert word in out


def _synthetic_report() -> dict:
    feature = {"id": 7, "token_frequency": 0.25, "quiz_frequency": 0.5, "mean_activation": 0.3,
               "max_activation": 2.0, "by_task": {"contact": {"token_frequency": 0.4, "quiz_frequency": 1.0},
                                                  "frame": {"token_frequency": 0.1, "quiz_frequency": 0.5}},
               "logit_effect": {"white": -0.2, "red": 0.5, "f_B": 0.0}, "promotes": [["red", 0.5]],
               "suppresses": [["white", -0.2]],
               "examples": [{"quiz_index": 3, "task": "contact", "activation": 2.0, "position": 310,
                             "reads": "f(B) r0 c5", "predicts": "f(B) r0 c6"}]}
    return {"hook_name": HOOK, "d_sae": 64, "groups": ["contact", "frame", "all"], "settings": {"x": 1},
            "features": [feature], "steering": None}


def test_dashboard_is_self_contained(tmp_path):
    from PIL import Image

    from culture.dashboard import write_dashboard

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    index = write_dashboard(tmp_path / "d", _synthetic_report(), {7: img}, {"model": 0}, title="t <&>")
    page = index.read_text()
    assert "Feature 7" in page and "t &lt;&amp;&gt;" in page and "f(B) r0 c5" in page
    assert "data:image/png;base64," in page and (tmp_path / "d" / "feature_7.png").is_file()
    assert json.loads((tmp_path / "d" / "report.json").read_text())["features"][0]["id"] == 7


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no headless Chromium")
def test_dashboard_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    from culture.dashboard import write_dashboard

    index = write_dashboard(tmp_path / "d", _synthetic_report(), {7: Image.new("RGB", (40, 20), (255, 0, 0))})
    shot = tmp_path / "shot.png"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=900,900",
                    f"--screenshot={shot}", index.resolve().as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (900, 900)
        colours = im.convert("RGB").getcolors(1 << 20)
        assert colours is not None and len(colours) > 20  # text, tables, bars: not a blank page
