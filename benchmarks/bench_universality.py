"""Universality comparison: memory does not grow with the tokens; time per pair.

Each measurement runs :func:`culture.universality.compare_models` in a fresh
subprocess (random MyGPT models of a small shape, world quizzes) and reports

* RSS after setup (imports, models) and the process's peak RSS
  (``ru_maxrss``): their difference is what the two streaming passes add, and
  it must stay flat as the token count grows (activations of one batch +
  float64 accumulators, which depend on the widths, not on the tokens);
* the memory plan (:func:`culture.universality.memory_plan`, printed beside the peak);
* seconds per model pair per million tokens: wall time of the comparison /
  model pairs streamed (trained pairs + random-init pairs) / millions of tokens.
  This includes quiz generation and the forward passes, i.e. what a user waits.

* the **bound**: the same products done once with plain torch, what the
  comparison could not do without, in two parts. The passes' products, on the
  same activations in the same dtype and batches: neuron co-moments of every
  pair over all compared layers, each layer's self product (rotation
  baseline), the CKA cross and self products of both passes, the permutation
  test's products. The rotation baseline's products, a fixed cost that does
  not grow with the tokens (:func:`rotation_bound_seconds`): a random
  orthogonal matrix per model and layer (QR), the self co-moments and the
  pairs' cross co-moments rotated, for the reported rotation and each
  further draw. The ratio (comparison / bound) says how much time goes
  outside them (forwards of both passes, quiz generation, group sums,
  correlations and maxima, bootstrap); "ratio w/o fwd" leaves out the seconds
  spent in the models' forwards. Each part's own ratio is printed below the
  table (the passes less every forward against the first; the analysis and
  the draws against the second), and the run against the passes' products
  alone (the ratio of the tables before 2026-12-08);
* the seconds of each phase (both groups summed): pass 1 (its forwards apart),
  the analysis under the reported rotation, the rotation draws, and pass 2
  with the rest (``--repeats N``: N fresh processes per token count, then the
  median and range of the seconds and ratios).

    python benchmarks/bench_universality.py                      # 20k, 80k, 320k tokens
    python benchmarks/bench_universality.py --tokens 20000 80000 --threads 2
    python benchmarks/bench_universality.py --tokens 40000 --threads 1 --repeats 3
    python benchmarks/bench_universality.py --shape 512 64 2048 8 12 --layers 0 --tokens 8000   # 37M, one layer
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    """Current resident set size (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from culture.mygpt import GPTConfig, MyGPT
    from culture.universality import MIN_QUIZZES, compare_models
    import culture.hooked  # noqa: F401 - import TransformerLens before measuring the setup

    cfg = GPTConfig(*args.shape)
    models = []
    for k in range(args.models):
        torch.manual_seed(1000 + k)
        models.append(MyGPT(cfg).eval())
    kw = dict(random_init=args.baseline, cka=args.cka, batch_size=args.batch_size, layers=args.layers,
              compute_dtype=getattr(torch, args.precision), cka_permutations=args.permutations, max_memory="1T")
    # warm up (first forward allocates; first TransformerLens model builds lazily)
    compare_models(models, n_tokens=MIN_QUIZZES * 404, **kw)
    from culture.universality import ModelRunner

    forward = [0.0]
    run = ModelRunner.run

    def timed_run(self, *a, **k):  # time spent in the models' forwards
        t = time.perf_counter()
        out = run(self, *a, **k)
        forward[0] += time.perf_counter() - t
        return out

    ModelRunner.run = timed_run
    phases = _time_phases(forward)
    setup_rss = _rss_mib()
    t0 = time.perf_counter()
    report = compare_models(models, n_tokens=args.n_tokens, seed=1, **kw)
    seconds = time.perf_counter() - t0
    ModelRunner.run = run
    phases["pass 2 and the rest"] = seconds - sum(phases.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    passes_bound = bound_seconds(models, report, args)
    rotation_bound = rotation_bound_seconds(report, args)
    bound = passes_bound + rotation_bound
    pairs = args.models * (args.models - 1) // 2 * (2 if args.baseline else 1)
    tokens = report.settings["tokens"]
    # the streaming passes without the models' forwards, against their products
    passes = phases["pass 1 rest"] + phases["pass 2 and the rest"] - (forward[0] - phases["pass 1 forwards"])
    print(json.dumps({
        "tokens": tokens, "seconds": seconds, "setup_rss_mib": setup_rss, "peak_rss_mib": peak,
        "plan_mib": report.settings["memory_plan"]["total_bytes"] / 2**20,
        "pass_seconds": report.settings["seconds"],
        "s_per_pair_per_mtok": seconds / pairs / (tokens / 1e6), "batch_size": report.settings["batch_size"],
        "bound_s_per_pair_per_mtok": bound / pairs / (tokens / 1e6), "ratio": seconds / bound,
        "forward_seconds": forward[0], "ratio_without_forwards": (seconds - forward[0]) / bound,
        "phase_seconds": phases, "bound_seconds": bound, "passes_bound_seconds": passes_bound,
        "rotation_bound_seconds": rotation_bound, "passes_ratio": passes / passes_bound,
        "rotation_ratio": (phases["analysis"] + phases["rotation draws"]) / rotation_bound,
        "ratio_passes_bound_only": seconds / passes_bound,
    }))


def _time_phases(forward: list[float]) -> dict[str, float]:
    """Wrap the comparison's phases (both groups summed) with wall-clock timers:
    pass 1 (its forwards counted apart), the analysis under the reported
    rotation, the rotation draws; what is left of the run is pass 2 and the
    results. Returns the dict the timers fill."""
    from culture.universality import compare

    phases = {"pass 1 forwards": 0.0, "pass 1 rest": 0.0, "analysis": 0.0, "rotation draws": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t, f = time.perf_counter(), forward[0]
            out = fn(*a, **k)
            if name == "pass 1":
                phases["pass 1 forwards"] += forward[0] - f
                phases["pass 1 rest"] += time.perf_counter() - t - (forward[0] - f)
            else:
                phases[name] += time.perf_counter() - t
            return out
        return wrapper

    compare._pass1 = timed("pass 1", compare._pass1)
    compare._Group.analyse = timed("analysis", compare._Group.analyse)
    compare.rotation_draw_shares = timed("rotation draws", compare.rotation_draw_shares)
    return phases


def bound_seconds(models, report, args) -> float:
    """Seconds of the comparison's products done once with plain torch on the
    same activations (same quizzes, batches and dtype): per group (trained,
    random-init), the all-layer neuron co-moment of every pair and each
    layer's self product (rotation baseline); the CKA cross and self products
    (pass 1), again with x^T x (pass 2), and the permutation test's products."""
    import torch

    from culture.hooked import to_hooked_tokens
    from culture.universality import ModelRunner, position_index, world_quiz_stream
    from culture.universality.runner import baseline_seed

    s = report.settings
    dt = getattr(torch, args.precision)
    layers = s["layers"]
    pos = position_index(s["positions"])
    runners = [ModelRunner(m, "cpu") for m in models]
    groups = [runners] + ([[r.random_like(baseline_seed(1, k)) for k, r in enumerate(runners)]]
                          if args.baseline else [])
    n_layers = runners[0].n_layers
    from culture.hooks import act_name

    neuron_hooks = [act_name("post", k) for k in layers]
    rows = [act_name("resid_pre", 0)] + [act_name("resid_post", k)
                                          for k in (range(n_layers) if args.layers is None else layers)]
    hooks = neuron_hooks + (rows if args.cka else [])
    total = 0.0
    batch = s["batch_size"]
    for g, group in enumerate(groups):
        for q, _ in world_quiz_stream(s["quizzes"], s["tasks"], seed=1, noise=s["noise"]):
            for start in range(0, q.shape[0], batch):
                tokens = to_hooked_tokens(q[start:start + batch])
                acts = [r.run(tokens, hooks, pos) for r in group]
                flat = [{h: a[h].reshape(-1, a[h].shape[-1]).to(dt) for h in hooks} for a in acts]
                xs = [torch.cat([f[h] for h in neuron_hooks], 1) for f in flat]
                rs = [torch.cat([f[h] for h in rows], 1) for f in flat] if args.cka else []
                t = xs[0].shape[0]
                perms = [torch.randperm(t) for _ in range(args.permutations if g == 0 else 0)]
                t0 = time.perf_counter()
                for i in range(len(xs)):
                    for j in range(i + 1, len(xs)):
                        xs[i].t() @ xs[j]
                        if args.cka:
                            for _ in range(2):  # pass 1 and pass 2
                                rs[i].t() @ rs[j]
                            d = rs[i].shape[1] // len(rows)
                            for p in perms:
                                for r in range(len(rows)):
                                    rs[i][:, r * d:(r + 1) * d].t() @ rs[j][p, r * d:(r + 1) * d]
                    h = xs[i].shape[1] // len(layers)
                    for k in range(len(layers)):
                        blk = xs[i][:, k * h:(k + 1) * h]
                        blk.t() @ blk
                    if args.cka:
                        d = rs[i].shape[1] // len(rows)
                        for r in range(len(rows)):
                            blk = rs[i][:, r * d:(r + 1) * d]
                            blk.t() @ blk
                        rs[i].t() @ rs[i]
                total += time.perf_counter() - t0
    return total


def rotation_bound_seconds(report, args) -> float:
    """Seconds of the rotation baseline's own arithmetic, done once with plain
    torch: per group (trained: two halves of the quizzes; random-init: one),
    for the reported rotation and each further draw, every compared layer of
    every model gets a random orthogonal matrix (Gaussian, QR, float64), its
    self co-moment rotated (R C, float64, per half: the rotated units'
    variances), and every pair's cross co-moment rotated on both sides (per
    half, per pair of layers, in the compute dtype). Left out, so that the
    bound is if anything too small: the products with the controls' group
    sums, the correlations and maxima, the reported rotation made again
    after the draws. The inputs are Gaussian (a product's time does not
    depend on its values)."""
    import torch

    s = report.settings
    h, n_layers = args.shape[2], len(s["layers"])
    dt = getattr(torch, args.precision)
    rotations = 1 + s["bootstrap"]["rotation_draws"]
    total = 0.0
    for halves in ((2, 1) if args.baseline else (2,)):
        self_co = torch.randn(h, h, dtype=torch.float64)
        rows = torch.randn(n_layers * h, h, dtype=dt)  # one model's rows against one layer of the other
        block = torch.randn(h, h, dtype=dt)
        for _ in range(rotations):
            t0 = time.perf_counter()
            for _ in range(args.models * n_layers):
                q, _ = torch.linalg.qr(torch.randn(h, h, dtype=torch.float64))
                for _ in range(halves):
                    q @ self_co
            rot = q.to(dt)
            for _ in range(args.models * (args.models - 1) // 2 * halves):
                for _ in range(n_layers):
                    rows @ rot.t()  # forward: rows of i against j's rotated layer
                    for _ in range(n_layers):
                        block @ rot.t()  # backward: j's layer against i's rotated layer
            total += time.perf_counter() - t0
    return total


def _spread(values: list[float]) -> str:
    import statistics

    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[20_000, 80_000, 320_000])
    p.add_argument("--shape", type=int, nargs=5, default=[64, 16, 256, 4, 4],
                   metavar=("D", "DK", "H", "HEADS", "BLOCKS"), help="GPTConfig of the random models")
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--layers", type=int, nargs="+", help="MLP layers compared (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="quizzes per forward pass")
    p.add_argument("--precision", choices=("float64", "float32"), default="float32",
                   help="dtype of the batch products (float32 here, as in every figure of the benchmarks "
                   "page; the command's default is float64)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="no random-init models")
    p.add_argument("--permutations", type=int, default=19, help="CKA permutation test size")
    p.add_argument("--no-cka", dest="cka", action="store_false")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per token count, each in a fresh process (the summary gives median and range)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n-tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    d, dk, h, heads, blocks = args.shape
    print(f"universality compare: {args.models} random MyGPT({d}, {dk}, {h}, {heads}, {blocks}), "
          f"baseline {'on' if args.baseline else 'off'}, CKA {'on' if args.cka else 'off'}, "
          f"{args.precision} products, batch {args.batch_size} quizzes, {args.threads} thread(s)")
    rows = []
    for n in [n for n in args.tokens for _ in range(args.repeats)]:
        cmd = [sys.executable, __file__, "--child", "--n-tokens", str(n), "--shape", *map(str, args.shape),
               "--models", str(args.models), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--precision", args.precision, "--permutations", str(args.permutations)]
        if args.layers is not None:
            cmd += ["--layers", *map(str, args.layers)]
        if not args.baseline:
            cmd.append("--no-baseline")
        if not args.cka:
            cmd.append("--no-cka")
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            raise SystemExit(res.returncode)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    header = (f"{'tokens':>9} {'seconds':>8} {'setup RSS':>10} {'peak RSS':>9} {'plan':>8} "
              f"{'s/pair/Mtok':>12} {'bound':>8} {'ratio':>6} {'forwards':>9} {'ratio w/o fwd':>13}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['tokens']:>9,} {r['seconds']:>8.1f} {r['setup_rss_mib']:>8.0f}Mi {r['peak_rss_mib']:>7.0f}Mi "
              f"{r['plan_mib']:>6.0f}Mi {r['s_per_pair_per_mtok']:>12.1f} {r['bound_s_per_pair_per_mtok']:>8.1f} "
              f"{r['ratio']:>6.1f} {r['forward_seconds']:>8.1f}s {r['ratio_without_forwards']:>13.1f}")
    print("\nseconds per phase (both groups; pass 1's forwards apart):")
    for r in rows:
        print(f"{r['tokens']:>9,}  " + ", ".join(f"{k} {v:.1f}" for k, v in r["phase_seconds"].items())
              + f"; bound {r['bound_seconds']:.1f}")
    print("\nthe bound's two parts: the passes' products (per batch) and the rotation baseline's "
          "(fixed: QR, rotated co-moments);\nratio of each: the passes' seconds less all forwards, "
          "the analysis and rotation draws' seconds; last, the run against the passes' bound alone:")
    for r in rows:
        print(f"{r['tokens']:>9,}  passes bound {r['passes_bound_seconds']:.1f} s, ratio {r['passes_ratio']:.1f}; "
              f"rotation bound {r['rotation_bound_seconds']:.1f} s, ratio {r['rotation_ratio']:.1f}; "
              f"run / passes bound {r['ratio_passes_bound_only']:.1f}")
    if args.repeats > 1:
        print(f"\nover {args.repeats} runs per token count: median (min-max)")
        for n in sorted({r["tokens"] for r in rows}):
            same = [r for r in rows if r["tokens"] == n]
            print(f"{n:>9,}  " + ", ".join(f"{k} {_spread([r[k] for r in same])}"
                                           for k in ("seconds", "bound_seconds", "ratio", "ratio_without_forwards",
                                                     "passes_ratio", "rotation_ratio")))
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    print(f"peak RSS change from {rows[0]['tokens']:,} to {rows[-1]['tokens']:,} tokens "
          f"({rows[-1]['tokens'] / rows[0]['tokens']:.0f}x): {growth:+.0f} MiB")


if __name__ == "__main__":
    main()
