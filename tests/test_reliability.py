"""Every command keeps its promise under bad input and interruption (issue 17).

* the output matrix: every registered command with an output option (found in
  the Typer app, so commands added later are covered) x {its parent is a file,
  a file where a folder is expected or the reverse, an unwritable place} ->
  exit 2, one ``error:`` line, nothing written, the command's body never run;
* outputs all or nothing (convert with a corrupt model, a train that cannot
  start, OutputSet, atomic writes under Ctrl-C), temporary files and their
  cleanup after a SIGKILL;
* refused values, broken weights, one-line usage errors, honest help;
* SAE training stopped half-way and resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cli import error_line, exit_code, run_cli
from tests.helpers_sources import TINY, make_local_source

ROOT = Path(__file__).resolve().parents[1]


class BodyReached(BaseException):
    """A command's body ran although its output check should have refused it
    (a BaseException: main() must not turn it into an error line)."""


# ------------------------------------------------------------------ the output matrix


def _writing_commands():
    from culture_cli.common import output_options
    from culture_cli.main import iter_commands

    out = []
    for path, command in iter_commands():
        for name, flag, kind in output_options(command):
            out.append((path, command, name, flag, kind))
    return out


def _dummy_args(command, skip: str) -> list[str]:
    """Values for the command's required options (any value click accepts:
    the body must never see them)."""
    import typing

    args = []
    for param in command.params:
        if not getattr(param, "required", False) or param.name == skip:
            continue
        if getattr(param, "param_type_name", "") == "argument":
            args.append("input-that-does-not-exist")
            continue
        flag = max(param.opts, key=len)
        annotation = param.type_descriptor.annotation
        base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
        low = getattr(param, "min", None)
        value = {int: str(max(0, low or 0)), float: "0.5"}.get(base, "x")
        args += [flag, value]
    return args


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


WRITING = _writing_commands()
CASES = ("parent-is-a-file", "wrong-kind", "unwritable")


def test_the_matrix_covers_every_writing_command():
    names = {" ".join(path) for path, *_ in WRITING}
    for expected in ("ablate", "convert", "dataset build", "eval", "generate", "sae eval", "sae features",
                     "sae train", "show-quiz", "tokenizer build", "train", "universality compare", "zoo pack"):
        assert expected in names, names
    kinds = {(" ".join(p), flag): kind for p, _, _, flag, kind in WRITING}
    assert kinds[("sae train", "--json")] == "file" and kinds[("sae train", "--out")] == "dir"
    assert kinds[("universality compare", "--png")] == "merge" and kinds[("ablate", "--png")] == "file"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path,command,name,flag,kind", WRITING,
                         ids=[f"{' '.join(p)} {f}" for p, _, _, f, _ in WRITING])
def test_bad_output_path_is_refused_before_any_work(path, command, name, flag, kind, case, tmp_path, monkeypatch,
                                                    capsys):
    import culture.mygpt
    import culture.sources

    def reached(*args, **kwargs):
        raise BodyReached(f"{' '.join(path)} ran with a bad {flag}")

    monkeypatch.setattr(command, "culture_body", reached)
    monkeypatch.setattr(culture.sources, "resolve_source", reached)
    monkeypatch.setattr(culture.mygpt, "load_mygpt", reached)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-dir" / "keep").write_text("x")
    if case == "parent-is-a-file":
        target = tmp_path / "a-file" / "out"
    elif case == "wrong-kind":
        target = tmp_path / ("a-dir" if kind == "file" else "a-file")
    else:
        target = Path(f"/proc/culture-test-{os.getpid()}/out")
    before = _tree(tmp_path)
    line = error_line(capsys, *path, *_dummy_args(command, name), flag, str(target))
    assert flag in line and str(target) in line
    assert _tree(tmp_path) == before  # nothing written, no temporary file left


def test_two_outputs_on_one_path_and_an_output_over_an_input(tmp_path, capsys):
    src = make_local_source(tmp_path)
    same = tmp_path / "x.png"
    assert "same path" in error_line(capsys, "ablate", "--model", "0", "--source", str(src), "--png", str(same),
                                     "--json", str(same))
    quizzes = tmp_path / "c.pth"
    torch.save(torch.zeros(1, 404, dtype=torch.long), quizzes)
    assert "overwrite the input --file" in error_line(capsys, "show-quiz", "--file", str(quizzes), "--png",
                                                      str(quizzes))
    assert quizzes.stat().st_size > 0


def test_a_full_output_folder_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "dash"
    out.mkdir()
    (out / "feature_1.png").write_text("old")
    line = error_line(capsys, "sae", "features", "--model", "0", "--sae", "x", "--out", str(out))
    assert "--overwrite" in line
    assert (out / "feature_1.png").read_text() == "old"


# ------------------------------------------------------------------ all or nothing


def _nan_checkpoint(src: Path, k: int) -> None:
    state, acc = torch.load(src / f"gpt_{k:03d}.pth", weights_only=True)
    state = dict(state)
    state["trunk.0.f.1.w_q"] = torch.full_like(state["trunk.0.f.1.w_q"], float("nan"))
    torch.save((state, acc), src / f"gpt_{k:03d}.pth")


def test_convert_with_a_broken_model_leaves_nothing(tmp_path, capsys):
    src = make_local_source(tmp_path)
    _nan_checkpoint(src, 1)
    out = tmp_path / "converted"
    line = error_line(capsys, "convert", "--models", "0", "1", "--source", str(src), "--out", str(out),
                      "--n-quizzes", "2")
    assert "gpt_001.pth" in line and "trunk.0.f.1.w_q" in line and "NaN" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".culture-tmp")]


def test_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path, capsys):
    src = make_local_source(tmp_path)
    _nan_checkpoint(src, 0)
    line = error_line(capsys, "eval", "--models", "0", "--source", str(src), "--num-samples", "4")
    assert "trunk.0.f.1.w_q" in line and "NaN or infinite" in line


def test_bad_checkpoint_files_are_one_line(tmp_path, capsys):
    import pickle

    src = make_local_source(tmp_path)
    cases = {
        "empty file": b"",
        "plain pickle": pickle.dumps(({"a": 1}, 0.5), protocol=4),
        "zip archive": b"PK\x03\x04" + b"\0" * 64,
    }
    for expected, payload in cases.items():
        (src / "gpt_001.pth").write_bytes(payload)
        code, out, err = run_cli(capsys, "eval", "--models", "1", "--source", str(src), "--num-samples", "4")
        assert code == 2 and len(err.strip().splitlines()) == 1, err  # no torch warning before it
        assert err.startswith("error: ") and not err.rstrip().endswith(("(", "If yo"))
    state, acc = torch.load(src / "gpt_000.pth", weights_only=True)
    torch.save(({k: v.long() for k, v in state.items()}, acc), src / "gpt_001.pth")
    assert "dtype int64" in error_line(capsys, "eval", "--models", "1", "--source", str(src))
    torch.save((state, float("nan")), src / "gpt_001.pth")
    assert "accuracy" in error_line(capsys, "eval", "--models", "1", "--source", str(src))


def test_nan_sae_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from culture.sae import load_sae
    from culture.sae.common import SAEError
    from culture.sources import ZOO_DIR

    src = ZOO_DIR / "sae" / "gpt-0" / "blocks_2_mlp_out"
    if not src.is_dir():
        pytest.skip("the bundled zoo ships no SAE")
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text((src / "cfg.json").read_text())
    weights = load_file(str(src / "sae_weights.safetensors"))
    weights["W_dec"][3, 0] = float("inf")
    save_file(weights, str(sae / "sae_weights.safetensors"))
    with pytest.raises(SAEError, match="W_dec"):
        load_sae(sae)


def test_a_train_that_cannot_start_leaves_no_out(tmp_path, capsys):
    other = make_local_source(tmp_path, shapes=(64, 16, 64, 4, 2), n_models=2)  # not the 17K shape
    out = tmp_path / "runs" / "demo"
    line = error_line(capsys, "train", "--out", str(out), "--nb-models", "2", "--model", "17K", "--init-from",
                      str(other), "--train-samples", "4", "--test-samples", "4", "--max-rounds", "1")
    assert "architecture" in line
    assert not (tmp_path / "runs").exists()
    assert "unknown model size" in error_line(capsys, "train", "--out", str(out), "--model", "5X")
    assert not (tmp_path / "runs").exists()


def test_output_set_is_all_or_nothing(tmp_path):
    from culture.io import OutputSet

    with pytest.raises(RuntimeError):
        with OutputSet() as outputs:
            outputs.file(tmp_path / "new" / "a.json").write_text("{}")
            (outputs.dir(tmp_path / "figs", merge=True) / "f.png").write_text("png")
            raise RuntimeError("the second output failed")
    assert list(tmp_path.iterdir()) == []  # no file, no staging folder, no parent made for them
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "other.txt").write_text("kept")
    with OutputSet() as outputs:
        outputs.file(tmp_path / "new" / "a.json").write_text("{}")
        (outputs.dir(tmp_path / "figs", merge=True) / "f.png").write_text("png")
    assert (tmp_path / "new" / "a.json").is_file()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["f.png", "other.txt"]
    assert not [p for p in tmp_path.rglob(".culture-tmp*")]


def test_ctrl_c_while_writing_leaves_no_file(tmp_path):
    from culture.io import atomic_path

    target = tmp_path / "deep" / "er" / "x.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_a_command_cleanly(tmp_path, monkeypatch, capsys):
    from culture_cli.main import iter_commands

    command = dict(iter_commands())[("show-quiz",)]
    target = tmp_path / "q.png"

    def body(**values):
        from culture.io import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    monkeypatch.setattr(command, "culture_body", body)
    code, _, err = run_cli(capsys, "show-quiz", "--png", str(target))
    assert code == 143 and "terminated" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ temporary files


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path):
    from culture.io import TMP_PREFIX, clean_stale, host_tag, temp_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = tmp_path / f"{TMP_PREFIX}{host_tag()}.{dead.pid}.123.abcd.data"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("x")
    stale_file = tmp_path / f"{TMP_PREFIX}{host_tag()}.{dead.pid}.123.abcd.r.json"
    stale_file.write_text("x")
    elsewhere = tmp_path / f"{TMP_PREFIX}0badc0de.{dead.pid}.123.abcd.r.json"  # another machine's
    elsewhere.write_text("x")
    mine = tmp_path / temp_name("live.json")
    mine.write_text("x")
    other = tmp_path / ".not-ours.tmp"
    other.write_text("x")
    removed = clean_stale(tmp_path)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert mine.exists() and other.exists() and elsewhere.exists()


def test_a_killed_dataset_build_is_cleaned_by_the_next_one(tmp_path, capsys):
    parent = tmp_path / "data"
    parent.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from culture_cli.main import main; "
            f"main(['dataset', 'build', '--n', '3000000', '--num-proc', '1', '--out', {str(parent / 'big')!r}])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(parent.glob(".culture-tmp.*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        staged = list(parent.glob(".culture-tmp.*"))
        assert staged, "the build never staged anything"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert all(p.exists() for p in staged) and not (parent / "big").exists()  # SIGKILL: nothing could clean up
    assert exit_code(["dataset", "build", "--n", "8", "--tasks", "frame", "--no-parquet", "--out",
                      str(parent / "small")]) == 0
    capsys.readouterr()
    assert not list(parent.glob(".culture-tmp.*"))  # the next build removed the dead one's staging
    assert (parent / "small" / "build.json").is_file()


# ------------------------------------------------------------------ values, errors, help


@pytest.mark.parametrize("args,expected", [
    (["--max-rounds", "-1"], "--max-rounds"),
    (["--threshold", "2"], "--threshold"),
    (["--target-accuracy", "5"], "--target-accuracy"),
    (["--target-greedy-accuracy", "-0.1"], "--target-greedy-accuracy"),
    (["--lr", "0"], "--lr"),
    (["--dropout", "1.5"], "--dropout"),
    (["--nb-heads", "0"], "--nb-heads"),
    (["--train-structures", "0"], "--train-structures"),
    (["--prompt-noise", "nan"], "--prompt-noise"),
])
def test_train_refuses_nonsense_values(args, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert expected in error_line(capsys, "train", "--out", str(out), *args)
    assert not out.exists()


def test_resume_refuses_what_it_cannot_change(tmp_path, capsys):
    line = error_line(capsys, "train", "--out", str(tmp_path), "--resume", "--model", "4M", "--nb-models", "3")
    assert "--model" in line and "--nb-models" in line and "--max-rounds" in line and "--threshold" in line
    assert "nothing to resume" in error_line(capsys, "sae", "train", "--out", str(tmp_path / "s"), "--resume")
    assert "--steps" in error_line(capsys, "sae", "train", "--out", str(tmp_path / "s"), "--resume", "--steps", "3")


@pytest.mark.parametrize("argv", [
    ["eval", "--no-such-option"],
    ["eval", "--num-samples", "many"],
    ["sae", "train", "--model", "0"],
    ["no-such-command"],
    ["universality", "compare", "--models"],
])
def test_usage_errors_are_one_line_with_a_hint(argv, capsys):
    line = error_line(capsys, *argv)
    assert "--help" in line


def test_every_command_refuses_an_unknown_option_in_one_line(capsys):
    from culture_cli.main import iter_commands

    for path, _ in iter_commands():
        line = error_line(capsys, *path, "--no-such-option")
        assert "No such option" in line and f"culture-interp {' '.join(path)} --help" in line


def test_help_helps(capsys):
    from culture_cli.common import is_option
    from culture_cli.main import iter_commands

    for path, command in iter_commands():
        code, out, _ = run_cli(capsys, *path, "--help")
        assert code == 0
        assert "<bool>" not in out and "REFERENCE" not in out and "list[" not in out, (path, out)
        for param in command.params:
            if is_option(param) and not param.hidden:
                assert (param.help or "").strip(), f"culture-interp {' '.join(path)} {param.opts}: no help"
    code, out, _ = run_cli(capsys, "eval", "--help")
    assert "<int> ..." in out


def test_zoo_pack_does_not_overwrite_the_package_zoo_by_default(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert "--dest" in error_line(capsys, "zoo", "pack", "--run", str(run))


# ------------------------------------------------------------------ TransformerLens speed path


def test_fused_attention_matches_transformer_lens_own(tmp_path):
    from culture.hooked import mygpt_to_hooked, to_hooked_tokens
    from culture.mygpt import mygpt_from_state_dict, read_checkpoint
    from tests.helpers_sources import TINY_4M_LIKE, random_quizzes

    src = make_local_source(tmp_path, shapes=TINY_4M_LIKE, n_models=1)
    model = mygpt_from_state_dict(read_checkpoint(src / "gpt_000.pth")[0]).eval()
    fused, plain = mygpt_to_hooked(model), mygpt_to_hooked(model, fused=False)
    tokens = to_hooked_tokens(random_quizzes(3))
    with torch.inference_mode():
        a, b = fused(tokens), plain(tokens)
        assert (a - b).abs().max().item() < 1e-5
        _, cache = fused.run_with_cache(tokens)  # pattern hooks: TransformerLens's own path, all hooks there
        assert cache["blocks.0.attn.hook_pattern"].shape == (3, TINY_4M_LIKE[3], 404, 404)
        assert (cache["blocks.1.hook_resid_post"] - plain.run_with_cache(tokens)[1]["blocks.1.hook_resid_post"]
                ).abs().max().item() < 1e-5
        mask = torch.ones_like(tokens)
        mask[0, :5] = 0  # padding: TransformerLens's masking
        assert (fused(tokens, attention_mask=mask) - plain(tokens, attention_mask=mask)).abs().max().item() < 1e-5
        z = {}
        fused.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda t, hook: z.setdefault("z", t))])
        assert z["z"].shape == (3, 404, TINY_4M_LIKE[3], fused.cfg.d_head)
        fused.set_use_attn_result(True)  # switched on later: TransformerLens's path, hook_result fires
        _, cache = fused.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_result"])
        assert cache["blocks.0.attn.hook_result"].shape == (3, 404, TINY_4M_LIKE[3], TINY_4M_LIKE[0])


# ------------------------------------------------------------------ SAE training resumes


def test_sae_training_stopped_half_way_resumes(tmp_path, monkeypatch, capsys):
    import culture.sae.training as training

    src = make_local_source(tmp_path, shapes=TINY, n_models=1)
    out = tmp_path / "sae"
    args = ["sae", "train", "--model", "0", "--source", str(src), "--out", str(out), "--steps", "8",
            "--batch-tokens", "128", "--expansion-factor", "2", "--n-batches-in-buffer", "2", "--store-batch-size",
            "2", "--n-batches-for-norm-estimate", "1"]
    wrap = training._StepStats.wrap

    def stop_at_step_3(self, fn):
        inner = wrap(self, fn)

        def step(step_input):
            if self.step == 3:
                raise KeyboardInterrupt  # as Ctrl-C would
            return inner(step_input)

        return step

    monkeypatch.setattr(training._StepStats, "wrap", stop_at_step_3)
    code, _, err = run_cli(capsys, *args)
    assert code == 130 and "interrupted" in err
    assert not out.exists() and training.latest_checkpoint(out) is not None
    monkeypatch.setattr(training._StepStats, "wrap", wrap)
    code, _, err = run_cli(capsys, "sae", "train", "--out", str(out), "--resume", "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    assert (out / "sae_weights.safetensors").is_file() and (tmp_path / "s.json").is_file()
    assert not training.checkpoint_dir(out).exists()  # finished: the checkpoints are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".culture-tmp")]
