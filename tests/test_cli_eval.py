"""``culture-interp eval`` and ``culture-interp generate``: tables, JSON, PNG,
and bad inputs (one line on stderr, exit code 2)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.cli import error_line, run_cli
from tests.helpers_sources import accuracy_of, make_local_source

pytest.importorskip("culture.world")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two tiny models (accuracies 0.5, 0.625) and c_quizzes.pth (2 test c-quizzes)."""
    return make_local_source(tmp_path_factory.mktemp("src"), n_models=2)


# ---------------------------------------------------------------------- eval


def test_eval_tables_and_json(capsys, source, tmp_path):
    path = tmp_path / "out" / "eval.json"
    code, out, err = run_cli(capsys, "eval", "--models", 0, 1, "--source", source, "--num-samples", 12,
                             "--generate", "--json", path, "--batch-size", 5, "--seed", 3)
    assert code == 0, err
    for text in ("perplexity", "greedy acc", "expected", "checkpoint", "By task", "By structure",
                 "culture", "50.0%", "62.5%"):
        assert text in out
    assert "model 0: teacher-forced" in err and "model 1: sampling" in err  # progress on stderr
    data = json.loads(path.read_text())
    s = data["settings"]
    assert s["num_samples"] == 12 and s["num_c_quizzes"] == 2 and s["seed"] == 3
    assert s["generate"] is True and s["models"] == [0, 1] and s["prompt_noise"] == 0.05
    assert [m["model"] for m in data["models"]] == ["0", "1"]
    for k, m in enumerate(data["models"]):
        assert m["checkpoint_accuracy"] == accuracy_of(k)
        assert m["perplexity"] > 1 and 0 <= m["greedy_accuracy"] <= 1
        assert m["generated_accuracy"] is not None
        assert "culture" in m["by_task"] and sum(e["n"] for e in m["by_task"].values()) == 12
        # both metric families and the intervals of every accuracy
        lo, hi = m["greedy_accuracy_ci95"]
        assert lo <= m["greedy_accuracy"] <= hi and m["generated_accuracy_ci95"] is not None
        for entry in (m, m["by_task"]["culture"], m["by_structure"]["1"]):
            for family in ("all_cells", "transform_cells"):
                assert {"ce", "cell_accuracy", "grid_accuracy", "expected_grid_accuracy"} <= set(entry[family])
        assert m["all_cells"]["grid_accuracy"]["value"] == m["greedy_accuracy"]
    assert not list(path.parent.glob(".*tmp"))  # atomic write left nothing behind


def test_eval_same_seed_same_numbers(capsys, source, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        code, _, err = run_cli(capsys, "eval", "--models", 1, "--source", source, "-n", 6, "--no-c-quizzes",
                               "--tasks", "contact", "frame", "--json", p)
        assert code == 0, err
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da["models"] == db["models"]
    assert da["settings"]["num_c_quizzes"] == 0
    assert set(da["models"][0]["by_task"]) <= {"contact", "frame"}


def test_eval_default_models_are_all_of_the_source(capsys, source, tmp_path):
    p = tmp_path / "e.json"
    code, _, err = run_cli(capsys, "eval", "--source", source, "-n", 4, "--json", p)
    assert code == 0, err
    assert json.loads(p.read_text())["settings"]["models"] == [0, 1]


@pytest.mark.parametrize("args", [
    ["--models", 5],
    ["--models", "x"],
    ["--num-samples", 0],
    ["--batch-size", 0],
    ["--tasks", "no_such_task"],
    ["--device", "tpu"],
    ["--noise", 2],
    ["--seed", -1],
])
def test_eval_bad_inputs(capsys, source, args):
    error_line(capsys, "eval", "--source", source, "-n", 4, *args)


def test_eval_missing_source(capsys, tmp_path):
    error_line(capsys, "eval", "--models", 0, "--source", tmp_path / "nowhere", "-n", 4)


def test_eval_cuda_unavailable(capsys, source):
    import torch

    if torch.cuda.is_available():
        pytest.skip("cuda is available here")
    assert "cuda" in error_line(capsys, "eval", "--source", source, "-n", 4, "--device", "cuda")


# ------------------------------------------------------------------ generate


def test_generate_prints_solutions(capsys, source, tmp_path):
    png = tmp_path / "g.png"
    code, out, err = run_cli(capsys, "generate", "--model", 1, "--source", source, "--n", 2, "--task", "contact",
                             "--greedy", "--structure", 2, "--png", png)
    assert code == 0, err
    assert "f(B) target" in out or "B target" in out
    assert "quiz 0 (contact):" in out and "quiz 1 (contact):" in out
    assert out.rstrip().endswith("/2 correct")
    assert "greedy" in out and "[structure 2]" in out
    assert Image.open(png).size[0] > 100


def test_generate_sampling_is_seeded(capsys, source):
    outs = []
    for _ in range(2):
        code, out, err = run_cli(capsys, "generate", "--model", 0, "--source", source, "--n", 1, "--seed", 4,
                                 "--temperature", 1.5, "--plain")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args", [
    ["--structure", 5],
    ["--structure", "9"],
    ["--temperature", -1],
    ["--n", 0],
    ["--model", 9],
    ["--task", "nope"],
    ["--device", "tpu"],
])
def test_generate_bad_inputs(capsys, source, args):
    error_line(capsys, "generate", "--source", source, *args)


def test_test_set_options_default_to_the_settings_dataclass():
    import inspect

    from culture.settings import TestSetSettings
    from culture_cli.commands import ablate, evaluate, logit_lens

    def option_defaults(fn):
        return {n: p.default for n, p in inspect.signature(fn).parameters.items()}

    cases = [(evaluate.eval_command, TestSetSettings()), (ablate.ablate_command, ablate.TEST_SET),
             (logit_lens.logit_lens_command, logit_lens.TEST_SET)]
    for fn, settings in cases:
        defaults = option_defaults(fn)
        for name in ("num_samples", "c_quizzes", "quizzes", "seed", "noise"):
            if name in defaults:
                assert defaults[name] == getattr(settings, name), (fn.__name__, name)
    # the commands differ from the protocol only in size (and logit-lens in leaving the c-quizzes out)
    base = TestSetSettings()
    assert (ablate.TEST_SET.noise, ablate.TEST_SET.seed, ablate.TEST_SET.quizzes) == (base.noise, base.seed, "both")
    assert base.num_samples == 2000 and base.noise == 0.05


def test_help_show_quiz_and_eval_do_not_import_scipy():
    from tests.cli import heavy_imports

    heavy, out, err = heavy_imports([["--help"], ["eval", "--help"], ["show-quiz", "--task", "frame"],
                                     ["eval", "--models", "0", "--source", "bundled", "--num-samples", "10"]],
                                    ("scipy", "scipy.stats", "transformer_lens", "sae_lens"))
    assert heavy == [], heavy
    assert "accuracy" in out.lower(), out[-500:] + err[-500:]
