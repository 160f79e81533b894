"""``culture-interp train`` end to end: create, stop, resume with a new lr and
stopping rule (recorded), and its one-line errors."""

from __future__ import annotations

import json

import torch

from tests.cli import error_line, run_cli

TINY = ["--nb-models", "2", "--model", "17K", "--tasks", "frame", "--train-samples", "20", "--test-samples", "10",
        "--batch-size", "10", "--no-culture", "--seed", "5"]


def test_train_then_resume_with_a_new_lr_and_target(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(out), *TINY, "--lr", "2e-3", "--max-rounds", "2")
    assert code == 0, err
    record = json.loads((out / "train_config.json").read_text())
    assert record["lr"] == 2e-3 and record["tasks"] == ["frame"] and "--max-rounds 2" in record["command"]
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["round"] == 2 and len(state["greedy_accuracies"]) == 2

    code, _, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--lr", "1e-4", "--max-rounds", "3")
    assert code == 0, err
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["round"] == 3
    assert all(g["lr"] == 1e-4 for opt in state["optimizers"] if opt for g in opt["param_groups"])

    code, _, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--target-greedy-accuracy", "0",
                           "--max-rounds", "10")
    assert code == 0, err
    record = json.loads((out / "train_config.json").read_text())
    assert record["lr"] == 1e-4 and record["target_greedy_accuracy"] == 0.0 and record["max_rounds"] == 10
    assert [r["round"] for r in record["resumes"]] == [2, 3]
    assert "--lr 1e-4" in record["resumes"][0]["command"] and record["command"].startswith("culture-interp train")
    assert torch.load(out / "train_state.pth", weights_only=True)["round"] == 3  # the target held at once

    # weight averaging turned on at a resume: recorded, raw weights kept in the state
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--ema-decay", "0.99", "--max-rounds", "4",
                           "--target-greedy-accuracy", "1", "--train-structures", "1", "2")
    assert code == 0, err
    record = json.loads((out / "train_config.json").read_text())
    assert record["ema_decay"] == 0.99 and record["train_structures"] == [1, 2]
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["round"] == 4 and len(state["raw_weights"]) == 2

def test_train_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in error_line(capsys, "train", "--out", str(tmp_path / "full"), *TINY)
    assert "no resumable run" in error_line(capsys, "train", "--out", str(tmp_path / "none"), "--resume")
    assert "unknown" in error_line(capsys, "train", "--out", str(tmp_path / "t"), *TINY, "--tasks", "nope")
    line = error_line(capsys, "train", "--out", str(tmp_path / "s"), *TINY, "--train-structures", "1", "7")
    assert "--train-structures" in line and "5" in line


def test_train_options_are_the_train_config_fields_with_their_defaults():
    import inspect
    from dataclasses import fields

    import pytest

    from culture.settings import default_of
    from culture.train_config import TrainConfig, TrainingSettingsError
    from culture_cli.commands.train import train

    params = inspect.signature(train).parameters
    names = [f.name for f in fields(TrainConfig)]
    assert set(params) - set(names) == {"out", "resume", "init_from"}
    for name in names:
        assert params[name].default.default == default_of(TrainConfig, name), name
    # the bounds live in the dataclass: the library checks them ...
    with pytest.raises(TrainingSettingsError, match="lr: must be > 0"):
        TrainConfig(lr=0.0).check()
    with pytest.raises(TrainingSettingsError, match="dropout"):
        TrainConfig(dropout=1.5).check()
    TrainConfig().check()


def test_train_option_bounds_are_one_line_errors(tmp_path, capsys):
    # ... and the CLI reports them under the option's name
    assert "--lr: must be > 0" in error_line(capsys, "train", "--out", str(tmp_path / "a"), *TINY, "--lr", "0")
    line = error_line(capsys, "train", "--out", str(tmp_path / "b"), *TINY, "--prompt-noise", "2")
    assert "--prompt-noise" in line and "[0, 1]" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
