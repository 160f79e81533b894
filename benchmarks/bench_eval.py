"""Evaluation speed: teacher-forced scoring vs autoregressive generation.

On the 37M shape (random weights, the published models' architecture), a few
quizzes, CPU, one run, three timings side by side:

* teacher-forced: one forward over the whole quiz gives greedy correctness and
  the exact probability of the answer (culture.evaluation.score_quizzes);
* uncached generation: the earlier toolkit's way, a full forward over the
  prefix for each of the 100 generated tokens;
* cached generation: the prompt once, then one token per step (MyGPT KV cache).

Goals: uncached / teacher-forced >= 50x, uncached / cached >= 5x.

    python benchmarks/bench_eval.py            # 37M, 4 quizzes, 1 thread (a few minutes)
    python benchmarks/bench_eval.py --quick    # 4M shape, 2 quizzes (seconds)
    python benchmarks/bench_eval.py --hooked   # also TransformerLens, cached and uncached
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from culture.evaluation import score_quizzes  # noqa: E402
from culture.generation import generate  # noqa: E402
from culture.mygpt import PRESETS, MyGPT  # noqa: E402


def timed(fn, repeats: int = 1):
    """(best wall time over repeats, result of the last call)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def test_quizzes(n: int) -> torch.Tensor:
    try:
        from culture.world import generate_quizzes

        return generate_quizzes(n, seed=0)
    except ImportError:  # pragma: no cover
        from culture.quiz import grids_to_quizzes

        return grids_to_quizzes(torch.randint(0, 11, (n, 4, 10, 10), generator=torch.Generator().manual_seed(0)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, help="model shape (default 37M; 4M with --quick)")
    ap.add_argument("--quizzes", type=int, default=None, help="quizzes (default 4; 2 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="small shape, 2 quizzes")
    ap.add_argument("--hooked", action="store_true", help="also time the TransformerLens model")
    args = ap.parse_args(argv)
    preset = args.preset or ("4M" if args.quick else "37M")
    n = args.quizzes or (2 if args.quick else 4)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = MyGPT(PRESETS[preset]).eval()
    quizzes = test_quizzes(n)
    print(f"model {preset} ({model.num_parameters / 1e6:.1f}M parameters, random weights), {n} quizzes, "
          f"100 generated tokens each, CPU, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")

    score_quizzes(model, quizzes[:1])  # warm-up
    t_tf, scores = timed(lambda: score_quizzes(model, quizzes, batch_size=n), repeats=3)
    t_cached, gen_c = timed(lambda: generate(model, quizzes, greedy=True, batch_size=n), repeats=2)
    t_uncached, gen_u = timed(lambda: generate(model, quizzes, greedy=True, use_cache=False, batch_size=n))
    same = bool(torch.equal(gen_c, gen_u))
    agree = bool(torch.equal((gen_c == quizzes).all(1), scores["greedy_correct"]))

    rows = [("teacher-forced (1 forward)", t_tf), ("generation, KV cache", t_cached),
            ("generation, no cache (earlier toolkit)", t_uncached)]
    if args.hooked:
        from culture.hooked import mygpt_to_hooked

        hooked = mygpt_to_hooked(model)
        t_h_tf, _ = timed(lambda: score_quizzes(hooked, quizzes, batch_size=n), repeats=2)
        t_h_c, gen_hc = timed(lambda: generate(hooked, quizzes, greedy=True, batch_size=n))
        t_h_u, gen_hu = timed(lambda: generate(hooked, quizzes, greedy=True, use_cache=False, batch_size=n))
        same = same and torch.equal(gen_hc, gen_c) and torch.equal(gen_hu, gen_c)
        rows += [("TransformerLens teacher-forced", t_h_tf), ("TransformerLens generation, KV cache", t_h_c),
                 ("TransformerLens generation, no cache", t_h_u)]

    width = max(len(r[0]) for r in rows)
    for name, t in rows:
        print(f"  {name:<{width}}  {t:9.3f} s")
    r1, r2 = t_uncached / t_tf, t_uncached / t_cached
    print(f"uncached generation / teacher-forced: {r1:7.1f}x  (goal >= 50x) {'ok' if r1 >= 50 else 'MISSED'}")
    print(f"uncached / cached generation:         {r2:7.1f}x  (goal >= 5x)  {'ok' if r2 >= 5 else 'MISSED'}")
    if args.hooked:
        print(f"TransformerLens uncached / cached:    {t_h_u / t_h_c:7.1f}x")
    print(f"greedy tokens identical across paths: {same}; "
          f"teacher-forced greedy correctness == generated: {agree}")


if __name__ == "__main__":
    main()
