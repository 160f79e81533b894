"""Universality under float32 products: how far from float64 are its neuron figures?

Runs :func:`culture.universality.compare_models` twice on the same random
MyGPT models and world quizzes, once with float64 batch products (the
default) and once with float32 (``--precision float32``), and prints per
control and model:

* the units alive under each precision, and how many differ;
* among the units alive under both, how many have an excess (max-corr less
  the rotation baseline) off by more than 1e-3, and the largest difference.

Under both precisions a unit must keep ``stats.WITHIN_DEAD_RELATIVE`` of
its variance within a control's groups to count as alive (1,000 float32
epsilons, 1.2e-4); ``--dead-share 1e-10`` puts back the floor used until
2026-12-07, to see what the new one guards against. Each control is run on
its own (a report's neuron tables are those of its first control), with the
rotation baseline, no CKA and no random-init models.

    python benchmarks/precision_universality.py                       # zoo shape, 3,232 tokens
    python benchmarks/precision_universality.py --tokens 40400 --dead-share 1e-10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=3232)
    p.add_argument("--shape", type=int, nargs=5, default=[64, 16, 256, 4, 4],
                   metavar=("D", "DK", "H", "HEADS", "BLOCKS"), help="GPTConfig of the random models")
    p.add_argument("--controls", nargs="+", default=["position_structure", "position", "none"])
    p.add_argument("--dead-share", type=float, help="within-group share of variance under which a unit is dead "
                   "(default: stats.WITHIN_DEAD_RELATIVE)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from culture.mygpt import GPTConfig, MyGPT
    from culture.universality import compare_models, stats

    if args.dead_share is not None:
        stats.WITHIN_DEAD_RELATIVE = args.dead_share
    models = []
    for k in range(2):
        torch.manual_seed(50 + k)
        models.append(MyGPT(GPTConfig(*args.shape)).eval())
    reports = {}
    for dtype in (torch.float64, torch.float32):
        runs = {}
        for control in args.controls:  # the report's neuron layers are those of its first control
            runs[control] = compare_models(models, n_tokens=args.tokens, baseline="rotation", controls=(control,),
                                           cka=False, n_resamples=10, compute_dtype=dtype, random_init=False, seed=1)
        reports[dtype] = runs
    print(f"float32 against float64 products: 2 random MyGPT{tuple(args.shape)}, {args.tokens:,} tokens, "
          f"dead below {stats.WITHIN_DEAD_RELATIVE:.2g} of the variance within groups")
    header = (f"{'control':<20} {'model':>5} {'alive f64':>9} {'alive f32':>9} {'differ':>6} "
              f"{'excess off >1e-3':>16} {'largest':>8}")
    print(header)
    print("-" * len(header))
    for control in args.controls:
        a64, a32 = reports[torch.float64][control].neurons, reports[torch.float32][control].neurons
        for i in range(2):
            alive64 = np.concatenate([nl.alive(i) for nl in a64])
            alive32 = np.concatenate([nl.alive(i) for nl in a32])
            both = alive64 & alive32
            diff = np.abs(np.concatenate([nl.excess(i) for nl in a64]) - np.concatenate([nl.excess(i) for nl in a32]))
            diff = diff[both]
            print(f"{control:<20} {i:>5} {int(alive64.sum()):>9} {int(alive32.sum()):>9} "
                  f"{int((alive64 != alive32).sum()):>6} {int((diff > 1e-3).sum()):>16} "
                  f"{(diff.max() if diff.size else 0.0):>8.4f}")


if __name__ == "__main__":
    main()
