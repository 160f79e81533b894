"""CUDA result = CPU result, for each library entry point, on the bundled zoo.

Marked ``cuda``: each test runs only where ``torch.cuda.is_available()``
(skipped elsewhere, CI included). ``CULTURE_CUDA_TEST_DEVICE=cpu`` runs them
with the CPU standing in for the GPU (CPU vs CPU: what
``benchmarks/gpu_check.sh --device cpu`` does, so that the tests themselves
are exercised where no GPU is).

Tolerances (CUDA's kernels sum in another order than the CPU's; TF32 is off
in PyTorch by default for float32 matrix products):

* logits of the hooked conversion: 1e-4 absolute;
* every number of the commands' JSON (losses, logit differences, recoveries,
  intervals, shares): 1e-3 relative or 1e-3 absolute, strings and counts
  equal -- a greedy decision that flips on a near-tie fails the test, and
  says where;
* greedy generation: the same tokens;
* a training step (two Adam steps, dropout 0): parameters within 2e-3
  (Adam's normalised update can move a parameter whose gradient is about 0
  by up to 2 x lr either way), training loss within 1e-3 relative;
* SAE training draws its initialisation with the device's generator, so the
  two SAEs differ: each trains, and the CPU-trained SAE evaluates the same
  on both devices (the JSON rule above);
* probes (L-BFGS on each device): accuracies within 1 quiz of the held-out set.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

from tests.cli import exit_code

pytestmark = pytest.mark.cuda

#: JSON keys that may differ between devices (where, when, how long, how the memory was budgeted)
IGNORED_KEYS = re.compile(r"device|seconds|elapsed|time|speed|per_second|path|^out$|json|png|dashboard|command|"
                          r"created|date|version|invocation|memory_plan", re.I)
RTOL = ATOL = 1e-3


def _device() -> str:
    forced = os.environ.get("CULTURE_CUDA_TEST_DEVICE")
    if forced:
        return forced
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (CULTURE_CUDA_TEST_DEVICE=cpu runs these tests CPU vs CPU)")
    return "cuda"


@pytest.fixture
def device() -> str:
    return _device()


def assert_close(a, b, where: str = "$", rtol: float = RTOL, atol: float = ATOL, ignore=IGNORED_KEYS):
    """Two JSON values equal up to the tolerances (module docstring); the
    first difference is named by its path."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys differ: {set(a) ^ set(b)}"
        for k in a:
            if not ignore.search(str(k)):
                assert_close(a[k], b[k], f"{where}.{k}", rtol, atol, ignore)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]", rtol, atol, ignore)
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), f"{where}: {a} != {b}"
        else:
            assert math.isclose(a, b, rel_tol=rtol, abs_tol=atol), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def json_on(tmp_path, device: str, argv, name: str) -> dict:
    out = tmp_path / f"{name}-{device}.json"
    code = exit_code([*argv, "--device", device, "--json", out])
    assert code == 0, f"{' '.join(map(str, argv))} --device {device}"
    return json.loads(out.read_text())


def same_json(tmp_path, device, argv, name, **tol):
    a = json_on(tmp_path, "cpu", argv, f"{name}-a")
    b = json_on(tmp_path, device, argv, f"{name}-b")
    assert_close(a, b, **tol)
    return a, b


# ------------------------------------------------------------------ library entry points


def test_hooked_conversion(device):
    from culture import sources
    from culture.hooked import load_hooked, to_hooked_tokens
    from culture.world import generate_quizzes

    src = sources.resolve_source("bundled")
    q = generate_quizzes(8, ["frame", "detect"], seed=0)
    tokens = to_hooked_tokens(q)
    cpu = load_hooked(0, src, device="cpu")(tokens, return_type="logits")
    dev = load_hooked(0, src, device=device)(tokens.to(device), return_type="logits").cpu()
    assert (cpu - dev).abs().max().item() < 1e-4


def test_greedy_generation(device):
    from culture import sources
    from culture.generation import generate
    from culture.world import generate_quizzes

    src = sources.resolve_source("bundled")
    q = generate_quizzes(8, ["frame", "replace_color"], seed=1)
    model, _ = sources.load_model(0, src)
    cpu = generate(model, q, greedy=True)
    dev = generate(model.to(device), q.to(device), greedy=True).cpu()
    assert torch.equal(cpu, dev)


def test_train_step(device, tmp_path):
    args = ["train", "--model", "17K", "--nb-models", "1", "--train-samples", "50", "--test-samples", "10",
            "--batch-size", "25", "--max-rounds", "1", "--dropout", "0", "--no-culture", "--tasks", "frame",
            "--seed", "0"]
    states = []
    for name, dev in (("a", "cpu"), ("b", device)):
        out = tmp_path / name
        assert exit_code([*args, "--out", out, "--device", dev]) == 0
        state, _ = torch.load(out / "gpt_000.pth", weights_only=True)
        log = (out / "train.log").read_text()
        losses = [float(x) for x in re.findall(r"train_loss ([0-9.]+)", log)]
        states.append((state, losses))
    (s0, l0), (s1, l1) = states
    assert l0 and len(l0) == len(l1)
    assert all(math.isclose(x, y, rel_tol=1e-3) for x, y in zip(l0, l1)), (l0, l1)
    for k in s0:
        assert (s0[k].float() - s1[k].float()).abs().max().item() < 2e-3, k


# ------------------------------------------------------------------ commands (their JSON)


def test_eval(device, tmp_path):
    same_json(tmp_path, device, ["eval", "--models", "0", "1", "--source", "bundled", "-n", "20"], "eval")


def test_patch_both_methods(device, tmp_path):
    same_json(tmp_path, device, ["patch", "--model", "0", "--source", "bundled", "--task", "replace_color",
                                 "--vary", "dst", "--what", "layers", "--num-pairs", "4", "--control-pairs", "2",
                                 "--method", "both", "--batch-size", "2"], "patch")


def test_logit_lens(device, tmp_path):
    same_json(tmp_path, device, ["logit-lens", "--model", "0", "--source", "bundled", "-n", "8", "--tasks", "detect",
                                 "--no-baseline"], "lens")


def test_ablate(device, tmp_path):
    same_json(tmp_path, device, ["ablate", "--model", "0", "--source", "bundled", "-n", "8", "--tasks", "frame"],
              "ablate")


def test_probe(device, tmp_path):
    a = json_on(tmp_path, "cpu", ["probe", "--model", "0", "--source", "bundled", "--target", "frame.color",
                                  "--positions", "A", "-n", "40", "--no-random-baseline"], "probe-a")
    b = json_on(tmp_path, device, ["probe", "--model", "0", "--source", "bundled", "--target", "frame.color",
                                   "--positions", "A", "-n", "40", "--no-random-baseline"], "probe-b")
    assert [r["hook"] for r in a["rows"]] == [r["hook"] for r in b["rows"]]
    for ra, rb in zip(a["rows"], b["rows"]):
        n = ra["accuracy"].get("n") or 1
        assert abs(ra["accuracy"]["value"] - rb["accuracy"]["value"]) <= 1 / n + 1e-9, ra["hook"]


def test_sae_train_and_eval(device, tmp_path):

    train = ["sae", "train", "--model", "0", "--source", "bundled", "--hook", "blocks.1.hook_mlp_out",
             "--steps", "20", "--batch-tokens", "128", "--expansion-factor", "2", "--n-batches-in-buffer", "4",
             "--store-batch-size", "2", "--n-batches-for-norm-estimate", "2", "--lr", "1e-3"]
    for name, dev in (("a", "cpu"), ("b", device)):
        assert exit_code([*train, "--out", tmp_path / f"sae-{name}", "--device", dev]) == 0
    same_json(tmp_path, device, ["sae", "eval", "--model", "0", "--source", "bundled", "--sae", tmp_path / "sae-a",
                                 "-n", "8", "--quizzes", "world"], "sae-eval")


def test_universality(device, tmp_path):
    same_json(tmp_path, device, ["universality", "compare", "--models", "0", "1", "--source", "bundled",
                                 "--layers", "0", "--tokens", "3232", "--no-random-init", "--resamples", "50",
                                 "--cka-permutations", "4"], "univ")
