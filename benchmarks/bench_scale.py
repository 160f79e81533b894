"""Time and peak memory of the published workloads at the 37M shape.

The workloads of the published analyses (issue #22), on random 37M models
(the published architecture; random weights cost the same time):

* ``eval``: 2,000 quizzes x 4 models (``culture-interp eval``, teacher-forced);
* ``patch``: heads, both methods, 200 pairs + 50 control pairs (the loops of
  ``culture-interp patch --what heads``, called directly: random weights may
  fail the clean/corrupted gap check the command makes first);
* ``sae``: an SAE on blocks.8.hook_mlp_out, expansion 32, 4,096 tokens a
  batch, for 1M tokens, extrapolated to the published 30,000 x 4,096 tokens
  (the activation-norm estimate shortened to 10 batches: see ``run_sae``);
* ``universality``: 4 models, 1M tokens, MLP layer 8 (``--univ-layers``; all
  12 layers at once run pass 1 in row blocks at this shape: the memory plan
  is about 20 GiB for 4 models, with 54 GiB of co-moment rows on disk, and the
  analysis alone is hours of CPU -- see docs/guides/scale.md).

Each workload runs in this process: its wall time and its peak memory (GPU:
``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS, reset
before each workload through /proc/self/clear_refs on Linux).

    python benchmarks/bench_scale.py --device cuda --json $OUT/scale.json   # the GPU check (minutes)
    python benchmarks/bench_scale.py --device cpu --tiny                     # the bundled zoo, tiny counts (a minute)
    python benchmarks/bench_scale.py --device cpu --only eval --eval-samples 50   # one workload, smaller

``--tiny`` runs the same code on the bundled zoo with tiny counts: it checks
the script, not the speed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

#: the published SAE run: 30,000 steps of 4,096 tokens
PUBLISHED_SAE_TOKENS = 30_000 * 4_096
WORKLOADS = ("eval", "patch", "sae", "universality")
#: batches of the activation-norm estimate before SAE training (see run_sae)
SAE_NORM_BATCHES = 10


def build_37m_source(root: Path, n_models: int = 4) -> Path:
    """``n_models`` random 37M models (gpt_000.pth...) in the reference format, fp16."""
    from culture.mygpt import PRESETS, MyGPT, save_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_models):
        path = root / f"gpt_{k:03d}.pth"
        if not path.exists():
            torch.manual_seed(k)
            save_checkpoint(MyGPT(PRESETS["37M"]), 0.5, path, half=True)
    return root


class Peak:
    """Peak memory of a block: GPU allocations on CUDA, else the process's RSS."""

    def __init__(self, device: str):
        self.device = device
        self.mib: float | None = None

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                Path("/proc/self/clear_refs").write_text("5")
            except (OSError, AttributeError):
                pass
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            status = Path("/proc/self/status")
            if status.exists():
                self.mib = int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1)) / 1024
        return False


def cli(argv) -> None:
    from culture_cli.main import main

    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"culture-interp {' '.join(map(str, argv))} exited with {exc.code}") from None


def run_eval(source, device, sizes):
    cli(["eval", "--models", *map(str, range(sizes["models"])), "--source", source, "-n", sizes["eval_samples"],
         "--device", device])


def run_patch(source, device, sizes):
    from culture import sources
    from culture.circuits import control_pairs, make_pairs, site_table
    from culture.circuits.activation import activation_patching
    from culture.circuits.attribution import attribution_patching
    from culture.hooked import load_hooked

    hooked = load_hooked(0, sources.resolve_source(source), device=device)
    pairs = make_pairs(sizes["pairs"], "replace_color", "dst", seed=0)
    ctrl = control_pairs(sizes["control_pairs"], "replace_color", seed=0)
    sites = site_table("heads", hooked.cfg.n_layers, hooked.cfg.n_heads).sites
    for p in (pairs, ctrl):
        activation_patching(hooked, p, sites, batch_size=50)
        attribution_patching(hooked, p, sites, batch_size=50, key="ld" if p is pairs else "margin")


def run_sae(source, device, sizes, out: Path):
    # the activation norm is estimated on SAE_NORM_BATCHES batches (SAELens's default, 1,000 batches of 16
    # quizzes, is a fixed cost of 16,000 quizzes' forward passes: left out here so that the time scales with
    # the tokens; add it to the extrapolation when comparing with a run that keeps the default)
    cli(["sae", "train", "--model", "0", "--source", source, "--out", out / "sae", "--overwrite",
         "--hook", sizes["sae_hook"], "--training-tokens", sizes["sae_tokens"], "--batch-tokens",
         sizes["sae_batch_tokens"], "--expansion-factor", sizes["sae_expansion"], "--device", device,
         "--n-batches-for-norm-estimate", SAE_NORM_BATCHES, "--n-batches-in-buffer", sizes["sae_buffer"]])


def run_universality(source, device, sizes):
    layers = ["--layers", *map(str, sizes["univ_layers"])] if sizes["univ_layers"] else []
    cli(["universality", "compare", "--models", *map(str, range(sizes["models"])), "--source", source,
         "--tokens", sizes["univ_tokens"], *layers, "--device", device])


def sizes_for(args) -> dict:
    if args.tiny:
        return {"models": 2, "eval_samples": 20, "pairs": 4, "control_pairs": 2, "sae_hook": "blocks.1.hook_mlp_out",
                "sae_tokens": 4096, "sae_batch_tokens": 1024, "sae_expansion": 2, "sae_buffer": 4, "univ_tokens": 3232,
                "univ_layers": None}
    return {"models": 4, "eval_samples": args.eval_samples, "pairs": args.pairs, "control_pairs": args.control_pairs,
            "sae_hook": "blocks.8.hook_mlp_out", "sae_tokens": args.sae_tokens, "sae_batch_tokens": 4096,
            "sae_expansion": 32, "sae_buffer": args.sae_buffer, "univ_tokens": args.univ_tokens,
            "univ_layers": args.univ_layers}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--tiny", action="store_true", help="the bundled zoo and tiny counts (checks the script)")
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--source", help="a folder of 37M checkpoints (default: 4 random ones, built in a temp folder)")
    ap.add_argument("--eval-samples", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--control-pairs", type=int, default=50)
    ap.add_argument("--sae-tokens", type=int, default=1_000_000)
    ap.add_argument("--sae-buffer", type=int, default=64, help="n_batches_in_buffer of the SAE's activation store")
    ap.add_argument("--univ-tokens", type=int, default=1_000_000)
    ap.add_argument("--univ-layers", type=int, nargs="*", default=[8],
                    help="MLP layers universality compares (none given: all -- at the 37M shape 4 models plan "
                         "about 20 GiB with pass 1 in row blocks and 54 GiB on disk; one layer about 3 GiB)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    sizes = sizes_for(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    t0 = time.perf_counter()
    source = "bundled" if args.tiny else str(args.source or build_37m_source(work / "models", sizes["models"]))
    build_s = time.perf_counter() - t0
    runners = {"eval": lambda: run_eval(source, args.device, sizes),
               "patch": lambda: run_patch(source, args.device, sizes),
               "sae": lambda: run_sae(source, args.device, sizes, work),
               "universality": lambda: run_universality(source, args.device, sizes)}
    results: list[dict] = []
    report = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "tiny": args.tiny, "sizes": sizes, "source": source, "build_seconds": round(build_s, 1),
              "results": results, "date": time.strftime("%Y-%m-%d")}
    for name in args.only:
        with Peak(args.device) as peak:
            t = time.perf_counter()
            runners[name]()
            seconds = time.perf_counter() - t
        row = {"workload": name, "seconds": round(seconds, 2), "peak_mib": peak.mib and round(peak.mib)}
        if name == "sae":
            row["extrapolated_published_seconds"] = round(seconds * PUBLISHED_SAE_TOKENS / sizes["sae_tokens"])
        results.append(row)
        print(f"== {name}: {row}", flush=True)
        write(args.json, report)  # after each workload: a run stopped by a time limit keeps what it measured
    print(json.dumps(report, indent=1))
    return report


def write(path: Path | None, report: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    main()
