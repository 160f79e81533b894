"""Universality comparison: memory does not grow with the tokens; time per pair.

Each measurement runs :func:`culture.universality.compare_models` in a fresh
subprocess (random MyGPT models of a small shape, world quizzes) and reports

* RSS after setup (imports, models) and the process's peak RSS
  (``ru_maxrss``): their difference is what the two streaming passes add, and
  it must stay flat as the token count grows (activations of one batch +
  float64 accumulators, which depend on the widths, not on the tokens);
* the accumulators' size (:func:`culture.universality.estimate_memory`);
* seconds per model pair per million tokens: wall time of the comparison /
  model pairs streamed (trained pairs + random-init pairs) / millions of tokens.
  This includes quiz generation and the forward passes, i.e. what a user waits.

    python benchmarks/bench_universality.py                      # 20k, 80k, 320k tokens
    python benchmarks/bench_universality.py --tokens 20000 80000 --threads 2
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
    from culture.universality import MIN_QUIZZES, compare_models, estimate_memory
    import culture.hooked  # noqa: F401 - import TransformerLens before measuring the setup

    cfg = GPTConfig(*args.shape)
    models = []
    for k in range(args.models):
        torch.manual_seed(1000 + k)
        models.append(MyGPT(cfg).eval())
    # warm up (first forward allocates; first TransformerLens model builds lazily)
    compare_models(models, n_tokens=MIN_QUIZZES * 404, random_init=args.baseline, cka=args.cka,
                   batch_size=args.batch_size, compute_dtype=getattr(torch, args.precision), cka_permutations=args.permutations)
    setup_rss = _rss_mib()
    t0 = time.perf_counter()
    report = compare_models(models, n_tokens=args.n_tokens, random_init=args.baseline, cka=args.cka,
                            batch_size=args.batch_size, compute_dtype=getattr(torch, args.precision), seed=1,
                            cka_permutations=args.permutations)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    pairs = args.models * (args.models - 1) // 2 * (2 if args.baseline else 1)
    tokens = report.settings["tokens"]
    print(json.dumps({
        "tokens": tokens, "seconds": seconds, "setup_rss_mib": setup_rss, "peak_rss_mib": peak,
        "accumulator_mib": estimate_memory(models, None, args.cka, None, args.baseline) / 2**20,
        "pass_seconds": report.settings["seconds"],
        "s_per_pair_per_mtok": seconds / pairs / (tokens / 1e6), "batch_size": report.settings["batch_size"],
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[20_000, 80_000, 320_000])
    p.add_argument("--shape", type=int, nargs=5, default=[64, 16, 256, 4, 4],
                   metavar=("D", "DK", "H", "HEADS", "BLOCKS"), help="GPTConfig of the random models")
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="quizzes per forward pass")
    p.add_argument("--precision", choices=("float64", "float32"), default="float64")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="no random-init models")
    p.add_argument("--permutations", type=int, default=19, help="CKA permutation test size")
    p.add_argument("--no-cka", dest="cka", action="store_false")
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
    for n in args.tokens:
        cmd = [sys.executable, __file__, "--child", "--n-tokens", str(n), "--shape", *map(str, args.shape),
               "--models", str(args.models), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--precision", args.precision, "--permutations", str(args.permutations)]
        if not args.baseline:
            cmd.append("--no-baseline")
        if not args.cka:
            cmd.append("--no-cka")
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            raise SystemExit(res.returncode)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    header = (f"{'tokens':>9} {'seconds':>8} {'setup RSS':>10} {'peak RSS':>9} {'peak-setup':>10} "
              f"{'accum.':>7} {'s/pair/Mtok':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['tokens']:>9,} {r['seconds']:>8.1f} {r['setup_rss_mib']:>8.0f}Mi {r['peak_rss_mib']:>7.0f}Mi "
              f"{r['peak_rss_mib'] - r['setup_rss_mib']:>8.0f}Mi {r['accumulator_mib']:>5.1f}Mi "
              f"{r['s_per_pair_per_mtok']:>12.1f}")
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    print(f"peak RSS change from {rows[0]['tokens']:,} to {rows[-1]['tokens']:,} tokens "
          f"({rows[-1]['tokens'] / rows[0]['tokens']:.0f}x): {growth:+.0f} MiB")


if __name__ == "__main__":
    main()
