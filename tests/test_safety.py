"""No command destroys its own input; refusals cover the model's vocabulary,
stdout, worker processes and full disks (issue 26).

* outputs never touch inputs (every writing command; links resolved);
* ``--json -`` is stdout, ``-`` elsewhere refused;
* a checkpoint whose vocabulary is not the quiz format's 15 tokens is refused;
* sizes no one means (show-quiz --n) are refused;
* interrupts and faults: pool workers leave Ctrl-C to the main process,
  SIGTERM of sae train exits 143 and leaves a resumable run, a fresh run does
  not delete an interrupted one's checkpoints, a file-size limit is one error
  line and leaves nothing --resume cannot use, a killed run's temporary
  folder is removed by the next run;
* newcomer papercuts (choices in --help, --models 0 0, spaced PNG titles,
  circuit labels that fit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.cli import error_line, run_cli
from tests.helpers_sources import TINY, make_local_source
from tests.test_reliability import _dummy_args, _writing_commands

SAE_ARGS = ["--steps", "8", "--batch-tokens", "128", "--expansion-factor", "2", "--n-batches-in-buffer", "2",
            "--store-batch-size", "2", "--n-batches-for-norm-estimate", "1"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. outputs never touch inputs


def _input_option(command) -> str | None:
    names = {max(p.opts, key=len) for p in command.params if getattr(p, "opts", None)}
    for flag in ("--source", "--file", "--run", "--sae", "--init-from"):
        if flag in names:
            return flag
    return None


def _cases():
    out = []
    for path, command, name, flag, kind in _writing_commands():
        if _input_option(command) is not None:
            out.append(pytest.param(path, command, name, flag, kind, id=f"{' '.join(path)} {flag}"))
    return out


@pytest.mark.parametrize("path, command, name, flag, kind", _cases())
def test_every_writing_command_refuses_an_output_inside_its_input(tmp_path, monkeypatch, capsys,
                                                                 path, command, name, flag, kind):
    src = make_local_source(tmp_path / "made", shapes=TINY, n_models=1)
    monkeypatch.chdir(tmp_path)
    reached = []
    monkeypatch.setattr(command, "culture_body", lambda **kw: reached.append(kw))
    given = _input_option(command)
    value = str(src / "c_quizzes.pth") if given == "--file" else str(src)
    if given == "--file":  # the quiz file itself, or a folder holding it
        target = Path(value) if kind == "file" else src
    else:  # a checkpoint, or a folder inside the source
        target = src / "gpt_000.pth" if kind == "file" else src / "sub"
    before = _tree(src)
    dummies = _dummy_args(command, skip=name)
    dummies = [a for k in range(0, len(dummies), 2) if dummies[k] != given for a in dummies[k:k + 2]]
    line = error_line(capsys, *path, given, value, flag, str(target), *dummies)
    assert "input" in line and given in line, line
    assert not reached and _tree(src) == before


def test_eval_json_over_a_checkpoint_the_bundled_zoo_and_through_a_link(tmp_path, capsys):
    from culture.sources import ZOO_DIR

    src = make_local_source(tmp_path, shapes=TINY, n_models=1)
    before = _tree(src)
    line = error_line(capsys, "eval", "--source", src, "--models", "0", "--json", src / "gpt_000.pth")
    assert "--json" in line and "input --source" in line
    zoo_before = (ZOO_DIR / "gpt_000.pth").read_bytes()
    line = error_line(capsys, "eval", "--source", "bundled", "--models", "0", "--json", ZOO_DIR / "gpt_000.pth")
    assert "bundled" in line
    assert (ZOO_DIR / "gpt_000.pth").read_bytes() == zoo_before
    link = tmp_path / "results.json"
    link.symlink_to(src / "gpt_000.pth")
    assert "input" in error_line(capsys, "eval", "--source", src, "--models", "0", "--json", link)
    # an output folder that holds the input
    line = error_line(capsys, "dataset", "build", "--n", "8", "--source", src / "c_quizzes.pth", "--out", src,
                      "--overwrite")
    assert "contains the input" in line
    assert _tree(src) == before


def test_sae_outputs_never_touch_the_sae_or_the_checkpoints(tmp_path, capsys):
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text("{}")
    line = error_line(capsys, "sae", "eval", "--model", "0", "--source", "bundled", "--sae", sae,
                      "--json", sae / "cfg.json")
    assert "lies inside the input --sae" in line and (sae / "cfg.json").read_text() == "{}"
    out = tmp_path / "run"
    line = error_line(capsys, "sae", "train", "--model", "0", "--source", "bundled", "--out", out,
                      "--json", tmp_path / "run.checkpoints" / "s.json", *SAE_ARGS)
    assert "checkpoints" in line
    assert not (tmp_path / "run.checkpoints").exists()


# ------------------------------------------------------------------ 2. --json - is stdout


def test_json_dash_is_stdout_and_dash_is_refused_elsewhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    src = make_local_source(tmp_path / "m", shapes=TINY, n_models=1)
    code, out, err = run_cli(capsys, "eval", "--source", src, "-n", "4", "--json", "-")
    assert code == 0, err
    data = json.loads(out)  # stdout is the JSON alone; the tables went to stderr
    assert data["settings"]["num_samples"] == 4 and "Evaluation" in err
    assert not (tmp_path / "-").exists()
    from culture_cli.common import console

    assert console._file is None  # back to following sys.stdout, not pinned to this test's stream
    line = error_line(capsys, "show-quiz", "--png", "-")
    assert "--json only" in line and not (tmp_path / "-").exists()


# ------------------------------------------------------------------ 3. the vocabulary of a checkpoint


@pytest.mark.parametrize("vocab", [14, 16])
def test_a_checkpoint_with_another_vocabulary_is_refused_before_any_test_set(tmp_path, monkeypatch, capsys, vocab):
    import culture.evaluation as evaluation
    from culture.mygpt import CheckpointError, read_checkpoint

    src = make_local_source(tmp_path, shapes=TINY, n_models=1, with_c_quizzes=False)
    state, acc = torch.load(src / "gpt_000.pth", weights_only=True)
    for key in ("embedding.0.f.0.weight", "readout.f.weight", "readout.f.bias"):
        t = state[key]
        state[key] = t[:vocab] if vocab < t.shape[0] else torch.cat([t, t[:vocab - t.shape[0]]])
    torch.save((state, acc), src / "gpt_000.pth")
    with pytest.raises(CheckpointError, match=f"{vocab} tokens"):
        read_checkpoint(src / "gpt_000.pth")
    built = []
    monkeypatch.setattr(evaluation, "make_test_set", lambda *a, **k: built.append(1))
    line = error_line(capsys, "eval", "--source", src, "-n", "4")
    assert f"{vocab} tokens" in line and "15" in line and not built


# ------------------------------------------------------------------ 4. sizes no one means


def test_show_quiz_refuses_absurd_counts(capsys):
    assert "at most 10,000" in error_line(capsys, "show-quiz", "--n", str(10**12))
    assert "at most 250" in error_line(capsys, "show-quiz", "--n", "251", "--png", "x.png")


# ------------------------------------------------------------------ 5. interrupts and faults


def _pid(_):
    return os.getpid()


def _ignores_sigint(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_pool_workers_and_forkserver_leave_ctrl_c_to_the_main_process():
    import multiprocessing
    from multiprocessing import forkserver

    from culture.workers import quiet_pool

    assert not _ignores_sigint(os.getpid())
    for method in ("fork", "forkserver"):
        pool = quiet_pool(multiprocessing.get_context(method), 2)
        try:
            pids = set(pool.map(_pid, range(8), chunksize=1))
        finally:
            pool.terminate()
            pool.join()
        assert pids and all(_ignores_sigint(p) for p in pids if Path(f"/proc/{p}").exists()) or not pids
        if method == "forkserver":
            assert _ignores_sigint(forkserver._forkserver._forkserver_pid)
    assert not _ignores_sigint(os.getpid())  # the main process still takes Ctrl-C


def test_sae_train_sigterm_exits_143_resumable_and_kept_from_a_fresh_run(tmp_path, monkeypatch, capsys):
    import culture.sae.training as training

    src = make_local_source(tmp_path, shapes=TINY, n_models=1)
    out = tmp_path / "sae"
    wrap = training._StepStats.wrap

    def terminate_at_step_3(self, fn):
        inner = wrap(self, fn)

        def step(step_input):
            if self.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return inner(step_input)

        return step

    monkeypatch.setattr(training._StepStats, "wrap", terminate_at_step_3)
    args = ["sae", "train", "--model", "0", "--source", str(src), "--out", str(out), *SAE_ARGS]
    code, _, err = run_cli(capsys, *args)
    assert code == 143 and "terminated" in err, err
    assert training.latest_checkpoint(out) is not None  # --resume can continue it
    monkeypatch.setattr(training._StepStats, "wrap", wrap)
    line = error_line(capsys, *args)  # a fresh run would delete that checkpoint
    assert "interrupted run" in line and "--resume" in line and "--overwrite" in line
    assert training.latest_checkpoint(out) is not None


def test_a_file_size_limit_is_one_error_line_and_leaves_no_unusable_run(tmp_path, capsys):
    resource = pytest.importorskip("resource")
    import culture.sae.training as training

    src = make_local_source(tmp_path, shapes=TINY, n_models=1)
    out = tmp_path / "sae"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))  # the SAE's weights do not fit
    try:
        code, _, err = run_cli(capsys, "sae", "train", "--model", "0", "--source", src, "--out", out, *SAE_ARGS)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert "training SAE" in err  # the limit hit the SAE's files, after the run record was written
    assert code == 2 and len(lines) == 1 and "file too large" in lines[0] and "unexpected" not in lines[0], err
    assert not out.exists() and not training.checkpoint_dir(out).exists()


def test_write_failures_of_torch_and_safetensors_read_as_one_line():
    import errno

    from culture_cli.main import _unexpected

    full = OSError(errno.ENOSPC, "No space left on device", "/x/y.pth")
    assert _unexpected(full) == "cannot write /x/y.pth: no space left on the device"
    torch_error = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")
    assert "disk full, or a file-size limit" in _unexpected(torch_error)
    assert "file too large" in _unexpected(RuntimeError('IoError(Os { code: 27, kind: FileTooLarge })'))


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path, monkeypatch, capsys):
    import tempfile

    from culture import io

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    base = tmp_path / "culture-interp"
    stale = base / f"{io.TMP_PREFIX}{io.host_tag()}.999999999.1.abcd1234.run"
    (stale / "pymp-x1y2").mkdir(parents=True)
    (stale / "wandb").mkdir()
    seen = []

    from culture_cli import main as cli_main

    command = dict(cli_main.iter_commands())[("show-quiz",)]
    monkeypatch.setattr(command, "culture_body", lambda **kw: seen.append(tempfile.gettempdir()))
    code, _, err = run_cli(capsys, "show-quiz")
    assert code == 0, err
    assert not stale.exists()  # the killed run's folder
    assert seen and Path(seen[0]).parent == base and Path(seen[0]).name.startswith(io.TMP_PREFIX)
    assert not Path(seen[0]).exists()  # this run's own, removed at the end
    assert tempfile.tempdir == str(tmp_path) and os.environ["TMPDIR"] == str(tmp_path)


# ------------------------------------------------------------------ 6. papercuts


def test_fixed_values_are_shown_in_help_and_quizzes_precedence_is_stated(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    expected = {
        ("sae", "features"): ["[mean|frequency|max]"],
        ("show-quiz",): ["[train|test]"],
        ("patch",): ["[resid|layers|heads|heads-by-block|cells]", "[activation|attribution|both]",
                     "[denoise|noise]"],
    }
    for path, needles in expected.items():
        code, out, _ = run_cli(capsys, *path, "--help")
        assert code == 0
        for needle in needles:
            assert needle in out, (path, needle)
    code, out, _ = run_cli(capsys, "ablate", "--help")
    assert "--c-quizzes is then ignored" in " ".join(out.split()).replace("│", "").replace("  ", " ") or \
        "is then ignored" in out


def test_the_choices_shown_are_the_librarys():
    from culture.circuits import DIRECTIONS, METHODS, WHAT
    from culture.sae.features import RANKINGS
    from culture_cli.main import iter_commands

    metavars = {(path, max(p.opts, key=len)): p.metavar for path, c in iter_commands() for p in c.params
                if getattr(p, "opts", None)}
    one = lambda values: "[" + "|".join(values) + "]"  # noqa: E731
    assert metavars[(("patch",), "--what")] == one(WHAT)
    assert metavars[(("patch",), "--method")] == one(METHODS)
    assert metavars[(("patch",), "--direction")] == one(DIRECTIONS)
    assert metavars[(("sae", "features"), "--rank-by")] == one(RANKINGS)


def test_models_given_twice_are_refused(capsys):
    assert "given twice" in error_line(capsys, "eval", "--source", "bundled", "--models", "0", "0")
    assert "given twice" in error_line(capsys, "convert", "--source", "bundled", "--models", "1", "1", "--out", "x")


def test_png_titles_keep_their_spaces():
    from PIL import Image, ImageDraw

    from culture.render import _font, draw_spaced_text

    font = _font(14)
    img = Image.new("RGB", (600, 30), "white")
    draw = ImageDraw.Draw(img)
    draw_spaced_text(draw, (0, 0), "#3 frame", font, fill=(0, 0, 0))
    ink = [x for x in range(600) if any(img.getpixel((x, y)) != (255, 255, 255) for y in range(30))]
    gaps = [b - a for a, b in zip(ink, ink[1:])]
    assert max(gaps) >= draw.textlength("n", font=font)  # a visible space between "#3" and "frame"


def test_circuit_node_labels_fit_their_circles():
    import math

    from culture.circuits.plots import NODE_SIZE, node_fontsize, node_label
    from culture.figures import new_figure

    fig = new_figure(4, 4)
    ax = fig.add_subplot(1, 1, 1)
    renderer = fig.canvas.get_renderer()
    diameter_px = math.sqrt(NODE_SIZE) * fig.dpi / 72
    for node in ("embed", "readout", "mlp 11", "head 11.7", "head 0.1"):
        label = node_label(node)
        text = ax.text(0.5, 0.5, label, fontsize=node_fontsize(label))
        assert text.get_window_extent(renderer).width <= diameter_px * 0.9, (node, label)


def test_no_blank_line_before_an_error_raised_before_the_first_bar(capsys):
    from culture_cli.common import progress

    with pytest.raises(ValueError):
        with progress():
            raise ValueError("bad input found before any work")
    assert capsys.readouterr().err == ""
    with progress() as bar:
        bar.update(bar.add_task("work", total=1), completed=1)
    assert "work" in capsys.readouterr().err
