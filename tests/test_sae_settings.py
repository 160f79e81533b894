"""SAE training settings: one dataclass (culture.sae.settings), the CLI's
options are its fields with its defaults, its bounds checked once, the
norm-estimate rule. Fast: nothing is trained here."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from culture.sae.settings import (
    NORM_ESTIMATE_MAX_BATCHES,
    SAETrainSettings,
    SAETrainSettingsError,
    norm_estimate_batches,
)
from culture.settings import default_of


def test_sae_train_options_are_the_settings_fields_with_their_defaults():
    from culture_cli.commands.sae import TRAIN_INPUTS, train

    params = inspect.signature(train).parameters
    names = [f.name for f in fields(SAETrainSettings)]
    assert set(params) - set(names) == set(TRAIN_INPUTS)
    assert set(names) <= set(params)
    # every option defaults to the field's default, but two: the hook is the model's middle block
    # (the library's default is the published SAEs' blocks.8), and --extra is a list of KEY=VALUE
    for name in names:
        if name in ("hook_name", "extra"):
            continue
        assert params[name].default == default_of(SAETrainSettings, name), name
    assert params["hook_name"].default is None and params["extra"].default is None


def test_sae_train_options_have_the_fields_names():
    """--train-batch-size-tokens for train_batch_size_tokens...; the former spellings still work."""
    import typer.main

    from culture_cli.commands.sae import sae_app

    command = typer.main.get_command(sae_app).commands["train"]
    flags = {p.name: p.opts for p in command.params}
    for f in fields(SAETrainSettings):
        if f.name in ("extra",):
            continue
        want = "--" + f.name.replace("_", "-")
        assert want in flags[f.name] or f"{want}/--no-{want[2:]}" in flags[f.name], (f.name, flags[f.name])
    for old, name in (("--batch-tokens", "train_batch_size_tokens"), ("--store-batch-size", "store_batch_size_prompts"),
                      ("--lr-scheduler", "lr_scheduler_name"), ("--hook", "hook_name"), ("--option", "extra")):
        assert old in flags[name]


def test_bounds_live_in_the_dataclass():
    SAETrainSettings().check()
    cases = [({"lr": 0.0}, "lr: must be > 0"), ({"expansion_factor": 0}, "expansion_factor"),
             ({"context_size": 406}, "context_size: must be in [1, 405]"), ({"noise": 1.5}, "noise"),
             ({"dtype": "int8"}, "dtype"), ({"adam_beta1": 1.0}, "adam_beta1: must be < 1"),
             ({"training_tokens": 10, "train_batch_size_tokens": 64}, "at least one step"),
             ({"steps": 10, "lr_warm_up_steps": 9}, "exceed the 10 training steps"),
             ({"n_batches_in_buffer": 1, "train_batch_size_tokens": 4096}, "must hold at least one training batch"),
             ({"tasks": ("frame", "nope")}, "unknown task 'nope'"), ({"num_quizzes": 0}, "num_quizzes"),
             ({"n_batches_for_norm_estimate": 0}, "n_batches_for_norm_estimate")]
    for kwargs, needle in cases:
        with pytest.raises(SAETrainSettingsError, match=None) as info:
            SAETrainSettings(**kwargs).check()
        assert needle in str(info.value), (kwargs, str(info.value))


def test_cli_reports_a_bound_under_the_option_name(tmp_path, capsys):
    from tests.cli import exit_code

    argv = ["sae", "train", "--model", "0", "--source", "bundled", "--out", str(tmp_path / "o"), "--lr", "0"]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "--lr: must be > 0" in err and "Traceback" not in err
    argv = ["sae", "train", "--model", "0", "--source", "bundled", "--out", str(tmp_path / "o"), "--batch-tokens",
            "0"]
    assert exit_code(argv) == 2
    assert "--train-batch-size-tokens: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_norm_estimate_follows_the_training_budget():
    assert norm_estimate_batches(30_000) == NORM_ESTIMATE_MAX_BATCHES == 1000  # the earlier toolkit's run: as before
    assert norm_estimate_batches(10) == 1 and norm_estimate_batches(1) == 1
    assert norm_estimate_batches(2000) == 200 and norm_estimate_batches(10**7) == 1000
    assert SAETrainSettings(steps=50).norm_batches == 5
    assert SAETrainSettings(training_tokens=40_960).norm_batches == 1  # 10 steps of 4,096 tokens
    assert SAETrainSettings(steps=50, n_batches_for_norm_estimate=7).norm_batches == 7  # asked: as asked
    assert SAETrainSettings(steps=50, normalize_activations="none").norm_batches == 0
    assert SAETrainSettings().resolved()["n_batches_for_norm_estimate"] == 1000


def test_library_settings_round_trip_and_reach_saelens():
    pytest.importorskip("sae_lens")
    from culture.sae.training import runner_config

    s = SAETrainSettings(steps=40, train_batch_size_tokens=128, k=8, architecture="topk", tasks=("frame",),
                         decoder_init_norm=0.0)
    assert SAETrainSettings.from_dict(s.to_dict()) == s
    cfg = runner_config(s, 32, output_path=None)
    assert cfg.sae.k == 8 and cfg.n_batches_for_norm_estimate == 4 and cfg.train_batch_size_tokens == 128
    assert cfg.sae.decoder_init_norm is None  # 0: no heuristic init, as the CLI's --decoder-init-norm 0


def test_seq_len_is_the_datasets():
    pytest.importorskip("torch")
    from culture.dataset import SEQ_LEN
    from culture.sae.settings import SEQ_LEN as SAE_SEQ_LEN

    assert SAE_SEQ_LEN == SEQ_LEN


def test_training_forward_stops_at_the_hook_and_times_setup_apart(tmp_path):
    """SAELens's store runs the model up to the hooked block only; the summary
    gives the set-up (to the first step) and the training time apart."""
    pytest.importorskip("sae_lens")
    import torch

    from culture.hooked import mygpt_to_hooked
    from culture.mygpt import GPTConfig, MyGPT
    from culture.sae import train_sae

    torch.manual_seed(0)
    hooked = mygpt_to_hooked(MyGPT(GPTConfig(vocabulary_size=15, dim_model=16, dim_keys=8, dim_hidden=32,
                                             nb_heads=2, nb_blocks=2)).eval())
    calls = {0: 0, 1: 0}
    for i in calls:
        hooked.blocks[i].register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    settings = SAETrainSettings(hook_name="blocks.0.hook_mlp_out", steps=3, train_batch_size_tokens=64,
                                expansion_factor=1, n_batches_in_buffer=1, store_batch_size_prompts=1,
                                num_quizzes=8)
    s = train_sae(hooked, tmp_path / "sae", settings).summary
    assert calls[0] > 0 and calls[1] == 0  # block 1 comes after the hook: never computed
    assert s["norm_estimate_batches"] == 1 and s["settings"]["n_batches_for_norm_estimate"] == 1
    assert 0 < s["setup_seconds"] < s["seconds"] + s["setup_seconds"] and 0 < s["train_seconds"] < s["seconds"]
    assert s["steady_tokens_per_second"] > 0
