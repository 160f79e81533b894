"""Every analysis command at the shape of the published models (37M: dim 512,
12 blocks x 8 heads, MLP 2048, 404-token quizzes), on random weights saved in
the reference format (fp16), with the smallest workloads: exit code 0 and a
bound on how far the process's peak memory rises during the command, measured
in-process (Linux: VmHWM, reset through /proc/self/clear_refs, minus the RSS
before the command).

Marked ``scale`` (deselect with ``-m "not scale"``): the 37M checkpoints are
built once per session and each command runs a forward pass or a few of the
37M model on one or two quizzes; the file takes about 100 s on the
development machine (2 cores, lightly loaded), half of it ``circuit``. The
bounds are about 1.5x the rises measured there, so that a workload whose memory grows with the model squared, or
with a size it should not hold, fails here.
"""

from __future__ import annotations

import ctypes
import json
import re
import time
from pathlib import Path

import pytest
import torch

from tests.cli import exit_code
from tests.reference_forward import random_reference_state, write_reference_checkpoint

pytestmark = pytest.mark.scale

#: the published models' shape (dim_model, dim_keys, dim_hidden, nb_heads, nb_blocks)
SHAPE_37M = (512, 64, 2048, 8, 12)
STATUS = Path("/proc/self/status")


@pytest.fixture(scope="session")
def source_37m(tmp_path_factory) -> Path:
    """Two random 37M models (gpt_000.pth, gpt_001.pth) in the reference format, fp16."""
    root = tmp_path_factory.mktemp("scale37m")
    for k in range(2):
        state = {name: v.half() for name, v in random_reference_state(*SHAPE_37M, seed=k).items()}
        write_reference_checkpoint(root / f"gpt_{k:03d}.pth", state, accuracy=0.5)
    return root


def _vm_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", STATUS.read_text()).group(1))


def _reset_peak() -> bool:
    """Give freed heap back to the system and reset the peak RSS (VmHWM) to the current RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_measured(argv) -> tuple[int, float | None, float]:
    """(exit code, how far the process's RSS rose above its level before the
    command, in MiB -- peak minus start, None where it cannot be measured --,
    process CPU seconds) of ``culture-interp argv`` in process. The rise, not
    the peak, so that what earlier tests left in the heap does not count."""
    measurable = STATUS.exists() and _reset_peak()
    start = _vm_kib("VmRSS") / 1024 if measurable else 0.0
    cpu = time.process_time()
    code = exit_code(argv)
    cpu = time.process_time() - cpu
    rise = _vm_kib("VmHWM") / 1024 - start if measurable else None
    return code, rise, cpu


def check(argv, bound_mib: float, capsys=None):
    code, peak, cpu = run_measured(argv)
    err = capsys.readouterr().err if capsys is not None else ""
    assert code == 0, err[-2000:]
    line = f"{argv[0]} {argv[1]}: peak rise {peak and round(peak)} MiB, {cpu:.1f} s CPU"
    if capsys is not None:
        with capsys.disabled():
            print(line)
    if peak is not None:
        assert peak < bound_mib, f"peak RSS rose {peak:.0f} MiB, over the bound {bound_mib} MiB"
    return peak


def test_eval(source_37m, capsys):
    check(["eval", "--models", "0", "--source", source_37m, "--num-samples", "2", "--tasks", "frame",
           "--batch-size", "2"], 700, capsys)


def test_patch_smallest(source_37m, tmp_path, capsys):
    out = tmp_path / "patch.json"
    check(["patch", "--model", "0", "--source", source_37m, "--task", "frame", "--vary", "color", "--num-pairs", "2",
           "--control-pairs", "0", "--what", "layers", "--layers", "11", "--batch-size", "2", "--json", out],
          1200, capsys)
    assert json.loads(out.read_text())["settings"]["n_pairs"] == 2


def test_patch_refuses_a_model_without_a_gap_before_the_scan(source_37m, capsys):
    # issue #22: this ran 7 minutes on random 37M weights before failing; the unpatched runs come first now
    code, peak, cpu = run_measured(["patch", "--model", "0", "--source", source_37m, "--task", "frame",
                                    "--vary", "color", "--what", "heads", "--method", "activation",
                                    "--num-pairs", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "does not prefer the clean answer" in err, err[-1000:]
    assert "activation patching" not in err  # refused before the scan started
    assert cpu < 60


def test_circuit_smallest(source_37m, capsys):
    # the node outputs and input gradients of one pair are about 2 GB at this shape: one pair a batch
    check(["circuit", "--model", "0", "--source", source_37m, "--task", "frame", "--vary", "color",
           "--num-pairs", "2", "--sizes", "1", "--random-circuits", "0", "--ig-steps", "0", "--batch-size", "1"],
          3500, capsys)


def test_logit_lens(source_37m, capsys):
    check(["logit-lens", "--model", "0", "--source", source_37m, "--num-samples", "2", "--tasks", "frame",
           "--no-baseline", "--batch-size", "2"], 700, capsys)


def test_ablate(source_37m, capsys):
    check(["ablate", "--model", "0", "--source", source_37m, "--num-samples", "1", "--tasks", "frame",
           "--no-c-quizzes"], 750, capsys)


def test_probe(source_37m, capsys):
    check(["probe", "--model", "0", "--source", source_37m, "--target", "frame.color", "--positions", "A",
           "-n", "10", "--hooks", "resid_post", "--no-random-baseline", "--batch-size", "10"], 600, capsys)


@pytest.fixture(scope="module")
def sae_37m(source_37m, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae37m") / "sae"
    code, peak, cpu = run_measured(["sae", "train", "--model", "0", "--source", source_37m, "--out", out,
                                    "--hook", "blocks.0.hook_mlp_out", "--steps", "2", "--batch-tokens", "128",
                                    "--expansion-factor", "1", "--n-batches-in-buffer", "2",
                                    "--store-batch-size", "1", "--n-batches-for-norm-estimate", "1",
                                    "--num-quizzes", "4"])
    assert code == 0
    return out, peak


def test_sae_train(sae_37m):
    out, peak = sae_37m
    assert peak is None or peak < 1500


def test_sae_eval_and_features(source_37m, sae_37m, tmp_path, capsys):
    sae, _ = sae_37m
    check(["sae", "eval", "--model", "0", "--source", source_37m, "--sae", sae, "-n", "1", "--quizzes", "world",
           "--batch-size", "1"], 750, capsys)
    check(["sae", "features", "--model", "0", "--source", source_37m, "--sae", sae, "-n", "1", "--quizzes", "world",
           "--features", "0", "--examples", "1", "--batch-size", "1", "--out", tmp_path / "dash"], 750, capsys)


def test_universality(source_37m, capsys):
    # two layers, pass 1 in row blocks of one (two sweeps, the co-moment rows spilled to disk and read back),
    # the analysis tiles sized by --max-memory: this process's memory now (what earlier tests left) + 1.2 GiB
    limit = _vm_kib("VmRSS") * 1024 + int(1.2 * 2**30)
    check(["universality", "compare", "--models", "0", "1", "--source", source_37m, "--layers", "0", "1",
           "--tokens", "3232", "--no-random-init", "--no-cka", "--resamples", "10", "--controls", "none",
           "--rotation-draws", "0", "--batch-size", "1", "--block-layers", "1", "--max-memory", str(limit)], 1600,
          capsys)


def test_fixture_is_the_published_shape(source_37m):
    from culture.mygpt import PRESETS

    state, _ = torch.load(source_37m / "gpt_000.pth", weights_only=True)
    assert state["trunk.0.f.1.w_q"].shape == (8, 64, 512) and state["trunk.23.f.f.2.weight"].shape == (2048, 512)
    assert state["embedding.0.f.0.weight"].dtype == torch.float16
    assert PRESETS["37M"].dim_model == 512 and PRESETS["37M"].nb_blocks == 12
