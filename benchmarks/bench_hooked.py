"""TransformerLens-based analyses beside the MyGPT forward, side by side in one run.

Per quiz, teacher-forced scoring (``culture.evaluation.score_quizzes``, what
``eval``, ``ablate``, ``sae eval`` and ``patch`` run per batch):

* **MyGPT forward** -- the culture GPT itself (``eval``);
* **TL forward** -- the same model as a TransformerLens ``HookedTransformer``
  (``culture.hooked``: fused attention and LayerNorm while their inner hooks
  are unused), and, for comparison, with TransformerLens's own attention
  (``mygpt_to_hooked(fused=False)``);
* **ablate** -- ``culture.ablation.run_ablations`` (every attention and MLP
  layer zeroed in turn, clean run included): seconds per quiz per forward pass.

Ratios are to the MyGPT forward (the goal: TL forward and ablate within 1.5x).

    python benchmarks/bench_hooked.py                      # bundled zoo model 0 and the 37M shape, CPU
    python benchmarks/bench_hooked.py --shapes zoo --n 200 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _best(fns: dict, repeats: int) -> dict:
    """Best time of each function over ``repeats`` rounds, the functions
    interleaved in each round (so a change in machine load hits all alike)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["zoo", "37M"], help="zoo (bundled model 0) or presets")
    parser.add_argument("--n", type=int, default=None, help="quizzes (default: 100 for the zoo, 16 otherwise)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 50 for the zoo, 8 otherwise")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (load on shared machines)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch

    from culture.ablation import list_components, run_ablations
    from culture.evaluation import make_test_set, score_quizzes
    from culture.hooked import mygpt_to_hooked
    from culture.mygpt import PRESETS, MyGPT
    from culture.sources import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"device {dev}, {torch.get_num_threads()} thread(s); seconds per quiz, best of {args.repeats}")
    header = f"{'shape':>6} {'n':>4} {'MyGPT fwd':>10} {'TL fwd':>10} {'ratio':>6} {'TL own attn':>11} {'ratio':>6} " \
             f"{'ablate/fwd':>10} {'ratio':>6}"
    print(header)
    for shape in args.shapes:
        if shape == "zoo":
            model, _ = load_model(0, "bundled", device=dev)
        else:
            torch.manual_seed(0)
            model = MyGPT(PRESETS[shape]).to(dev).eval()
        small = shape == "zoo"
        n = args.n or (100 if small else 16)
        bs = args.batch_size or (50 if small else 8)
        ts = make_test_set(n=n, seed=0)
        hooked = mygpt_to_hooked(model)
        plain = mygpt_to_hooked(model, fused=False)
        comps = list_components(hooked.cfg.n_layers, hooked.cfg.n_heads)
        forwards = 1 + len(comps)  # the clean run, then one per component
        score_quizzes(hooked, ts, batch_size=bs, device=dev)  # warm-up
        t = _best({
            "mygpt": lambda: score_quizzes(model, ts, batch_size=bs, device=dev),
            "tl": lambda: score_quizzes(hooked, ts, batch_size=bs, device=dev),
            "plain": lambda: score_quizzes(plain, ts, batch_size=bs, device=dev),
            "ablate": lambda: run_ablations(hooked, ts, components=comps, batch_size=bs, device=dev),
        }, args.repeats)
        t_my, t_tl, t_plain, t_ab = t["mygpt"] / n, t["tl"] / n, t["plain"] / n, t["ablate"] / (n * forwards)
        print(f"{shape:>6} {n:>4} {t_my:>10.4f} {t_tl:>10.4f} {t_tl / t_my:>6.2f} {t_plain:>11.4f} "
              f"{t_plain / t_my:>6.2f} {t_ab:>10.4f} {t_ab / t_my:>6.2f}")


if __name__ == "__main__":
    main()
