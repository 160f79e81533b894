"""Attribution patching vs activation patching: every head at every position
(n_layers x n_heads x 404 sites), time per pair, side by side in one run.

* attribution: one clean forward with cache, one corrupted forward and one
  backward (:func:`culture.circuits.attribution.activations_and_gradients`)
  give all head x position estimates at once;
* activation: one patched forward (from the patched layer on,
  :func:`culture.circuits.activation.patched_logits`) per site. Running all
  sites would take hours on a CPU, so ``--sample-sites`` sites drawn at random
  are timed and the time per site is multiplied by the number of sites (the
  cost of a site depends only on its layer; the sample is stratified by layer).

Also printed: the Pearson r between the two methods on the sampled sites.

    python benchmarks/bench_patching.py                          # bundled model 0, 20 pairs
    python benchmarks/bench_patching.py --pairs 50 --sample-sites 64 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="bundled")
    parser.add_argument("--model", type=int, default=0)
    parser.add_argument("--task", default="replace_color")
    parser.add_argument("--vary", default="dst")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--sample-sites", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from culture.circuits import make_pairs
    from culture.circuits.activation import patched_logits
    from culture.circuits.attribution import activations_and_gradients
    from culture.circuits.metric import readouts
    from culture.circuits.sites import Site
    from culture.hooks import act_name
    from culture.hooked import load_hooked, to_hooked_tokens
    from culture.quiz import QUIZ_LEN

    hooked = load_hooked(args.model, source=args.source)
    cfg = hooked.cfg
    L, H = cfg.n_layers, cfg.n_heads
    pairs = make_pairs(args.pairs, args.task, args.vary, seed=args.seed)
    clean_t, corr_t = to_hooked_tokens(pairs.clean), to_hooked_tokens(pairs.corrupted)
    z_names = [act_name("z", layer) for layer in range(L)]
    resid_names = [act_name("resid_pre", layer) for layer in range(L)]

    def ld(logits):
        return readouts(logits, pairs.clean, pairs.corrupted)["ld"]

    hooked(corr_t[:2])  # warm-up
    # ---- attribution: every head x position
    t0 = time.perf_counter()
    with torch.inference_mode():
        _, clean_cache = hooked.run_with_cache(clean_t, names_filter=lambda n: n in z_names)
    acts, grads, _ = activations_and_gradients(hooked, corr_t, z_names, ld)
    attribution = torch.stack([((clean_cache[n] - acts[n]) * grads[n]).sum(-1) for n in z_names], 1)  # (n, L, pos, H)
    t_attr = time.perf_counter() - t0
    n_sites = L * H * QUIZ_LEN

    # ---- activation: a layer-stratified sample of head x position sites
    rng = np.random.default_rng(args.seed)
    per_layer = max(1, args.sample_sites // L)
    sample = [(layer, int(rng.integers(H)), int(rng.integers(QUIZ_LEN))) for layer in range(L) for _ in range(per_layer)]
    with torch.inference_mode():
        base_logits, cache = hooked.run_with_cache(corr_t, names_filter=lambda n: n in resid_names)
        base = ld(base_logits)
        resid = {layer: cache[resid_names[layer]] for layer in range(L)}
        t0 = time.perf_counter()
        effects = []
        for layer, head, pos in sample:
            site = Site("head", layer, head, positions=(pos,))
            effects.append(ld(patched_logits(hooked, site, resid, clean_cache)) - base)
        t_sample = time.perf_counter() - t0
    t_act = t_sample / len(sample) * n_sites
    est = np.array([float(attribution[:, layer, pos, head].mean()) for layer, head, pos in sample])
    act = np.array([float(e.mean()) for e in effects])
    r = float(np.corrcoef(est, act)[0, 1]) if act.std() > 0 and est.std() > 0 else float("nan")

    n = len(pairs)
    print(f"model {args.model} ({args.source}), {L} layers x {H} heads x {QUIZ_LEN} positions = {n_sites} sites, "
          f"{n} pairs of {args.task} (vary {args.vary}), {args.threads} thread(s)")
    print(f"attribution patching, all sites: {t_attr:.2f} s = {1e3 * t_attr / n:.1f} ms per pair")
    print(f"activation patching, {len(sample)} sampled sites: {t_sample:.2f} s -> all sites ~{t_act:.0f} s "
          f"= {t_act / n:.1f} s per pair")
    print(f"ratio activation / attribution: {t_act / t_attr:.0f}x")
    print(f"Pearson r (attribution vs activation) on the sampled sites: {r:.3f}")


if __name__ == "__main__":
    main()
