"""``culture-interp patch`` / ``circuit`` / ``logit-lens`` on the bundled zoo
(offline), tiny sizes; bad input gives one error line."""

from __future__ import annotations

import json

import pytest

from tests.cli import error_line, heavy_imports, run_cli


def test_patch_cli_table_json_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    code, out, err = run_cli(capsys, "patch", "--model", 0, "--source", "bundled", "--task", "replace_color",
                             "--vary", "dst", "--what", "heads", "--layers", 3, "--num-pairs", 3, "--control-pairs", 2,
                             "--json", out_json, "--png", out_png, "--batch-size", 3)
    assert code == 0, err
    assert "Top sites" in out and "Pearson r" in out
    report = json.loads(out_json.read_text())
    assert report["settings"]["what"] == "heads" and report["settings"]["vary"] == "dst"
    assert report["baseline"]["n_pairs"] == 3 and report["control_baseline"]["n_pairs"] == 2
    sites = report["sites"]
    assert [s["site"] for s in sites[:2]] == ["head 3.0", "head 3.1"]
    assert {"recovery", "ci95", "control"} <= set(sites[0]["activation"]) and "accuracy" in sites[0]["activation"]
    assert "recovery" in sites[0]["attribution"] and report["agreement"]["n_sites"] == len(sites)
    for family in ("all_cells", "transform_cells"):  # both metric families, patched runs and baselines
        assert {"ce", "cell_accuracy", "grid_accuracy", "change"} <= set(sites[0]["activation"][family])
        assert {"ce", "cell_accuracy"} <= set(report["baseline"]["corrupted_run"][family])
    assert "transform cells right" in out
    assert out_png.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--task", "nope", "--vary", "task"], "nope"),
    (["--task", "frame", "--vary", "dst"], "unknown factor 'dst' for task frame"),
    (["--task", "frame", "--vary", "example"], "keeps f(B)"),
    (["--task", "frame", "--vary", "color", "--what", "neurons"], "--what"),
    (["--task", "frame", "--vary", "color", "--direction", "sideways"], "--direction"),
    (["--task", "frame", "--vary", "color", "--method", "magic"], "--method"),
    (["--task", "frame", "--vary", "color", "--num-pairs", 1], "--num-pairs"),
    (["--task", "frame", "--vary", "color", "--block", "C"], "--block"),
    (["--task", "frame", "--vary", "color", "--model", 99], "99"),
])
def test_patch_cli_errors(capsys, args, message):
    argv = ["patch", "--source", "bundled"] + (["--model", 0] if "--model" not in args else []) + args
    assert message in error_line(capsys, *argv)


def test_circuit_cli(tmp_path, capsys):
    out_json, out_png = tmp_path / "c.json", tmp_path / "c.png"
    code, out, err = run_cli(capsys, "circuit", "--model", 0, "--source", "bundled", "--task", "frame",
                             "--vary", "color", "--num-pairs", 2, "--sizes", 1, 3, "--random-circuits", 1,
                             "--json", out_json, "--png", out_png, "--batch-size", 2, "--threshold", 0.99)
    assert code == 0, err
    assert "Faithfulness vs size" in out and "Top edges" in out
    report = json.loads(out_json.read_text())
    sizes = [p["size"] for p in report["curve"]]
    assert sizes == sorted(sizes) and {1, 3} <= set(sizes)
    assert report["settings"]["rest_of_model"].startswith("patched from the corrupted run")
    assert len(report["edges"]) == report["n_edges"] and report["random_curve"]
    assert report["reached"] == (report["chosen_size"] is not None)
    assert out_png.stat().st_size > 1000
    assert "--threshold" in error_line(capsys, "circuit", "--model", 0, "--source", "bundled", "--task", "frame",
                                       "--vary", "color", "--threshold", 1.5)


def test_logit_lens_cli(tmp_path, capsys):
    out_json, out_png = tmp_path / "l.json", tmp_path / "l.png"
    code, out, err = run_cli(capsys, "logit-lens", "--model", 0, "--source", "bundled", "--tasks", "detect",
                             "-n", 6, "--no-baseline", "--json", out_json, "--png", out_png)
    assert code == 0, err
    assert "Logit lens" in out and "Direct logit" in out
    report = json.loads(out_json.read_text())
    assert report["groups"] == ["detect", "all"] and report["random_init_accuracy"] is None
    assert report["layers"][0] == "embed" and len(report["accuracy"]["all"]) == len(report["layers"])
    assert out_png.stat().st_size > 1000
    assert "--num-samples" in error_line(capsys, "logit-lens", "--model", 0, "--source", "bundled", "-n", 0)


def test_circuit_commands_help_imports_nothing_heavy():
    heavy, out, err = heavy_imports([["patch", "--help"], ["circuit", "--help"], ["logit-lens", "--help"]],
                                    ("transformer_lens", "sae_lens", "matplotlib"))
    assert heavy == [], heavy


def test_patch_and_circuit_options_default_to_the_settings_dataclasses():
    import inspect
    from dataclasses import fields

    from culture.circuit_settings import CircuitSettings, CircuitSettingsError, PatchSettings
    from culture.settings import default_of
    from culture_cli.commands.circuit import circuit_command
    from culture_cli.commands.patch import patch_command

    for command, cls, others in ((patch_command, PatchSettings, {"model", "task", "vary", "source", "png",
                                                                  "json_path", "device"}),
                                 (circuit_command, CircuitSettings, {"model", "task", "vary", "source", "png",
                                                                     "json_path", "device"})):
        params = inspect.signature(command).parameters
        names = [f.name for f in fields(cls)]
        assert set(params) - set(names) == others, command.__name__
        for name in names:
            assert params[name].default == default_of(cls, name), (command.__name__, name)
    # the bounds live in the dataclasses: the library checks them
    with pytest.raises(CircuitSettingsError, match="num_pairs: must be in"):
        PatchSettings(num_pairs=10**6).check()
    with pytest.raises(CircuitSettingsError, match="control_pairs"):
        PatchSettings(control_pairs=1).check()
    with pytest.raises(CircuitSettingsError, match="threshold: must be > 0"):
        CircuitSettings(threshold=0.0).check()
    PatchSettings().check(), CircuitSettings().check()


@pytest.mark.parametrize("argv, flag", [
    (["patch", "--task", "frame", "--vary", "color", "--num-pairs", 10**6], "--num-pairs"),
    (["patch", "--task", "frame", "--vary", "color", "--batch-size", 10**6], "--batch-size"),
    (["circuit", "--task", "frame", "--vary", "color", "--ig-steps", 10**4], "--ig-steps"),
])
def test_size_options_have_upper_bounds(capsys, argv, flag):
    assert flag in error_line(capsys, *argv[:1], "--model", 0, "--source", "bundled", *argv[1:])


def test_circuit_sizes_are_checked_before_the_edge_scores(capsys):
    # the bound depends on the model (its edges): checked once it is loaded, before any pass over the pairs
    code, out, err = run_cli(capsys, "circuit", "--model", 0, "--source", "bundled", "--task", "frame",
                             "--vary", "color", "--sizes", 10**9)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: circuit sizes must be in 0..")
