"""Training step speed: culture.mygpt.MyGPT + fused Adam vs the reference style.

Both models hold the same weights; one step = forward, per-token
cross-entropy over all 404 tokens, backward, Adam step (dropout 0.1, as in
training). Measured side by side in one run, alternating, median of N steps.

    python benchmarks/bench_train.py                 # 0.79M-parameter config and 4M preset, batch 32
    python benchmarks/bench_train.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from culture.mygpt import PRESETS, GPTConfig, MyGPT  # noqa: E402
from reference_style_gpt import ReferenceStyleGPT  # noqa: E402

CONFIGS = {
    # ~0.79M parameters (the reference figure's size): 128/32/512/4/4
    "0.79M": GPTConfig(128, 32, 512, 4, 4, dropout=0.1),
    "4M": GPTConfig(**{**PRESETS["4M"].to_dict(), "dropout": 0.1}),
}


def step_fn(model, opt):
    def step(x):
        logits = model(x)
        loss = F.cross_entropy(logits.transpose(1, 2), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def measure(name, cfg, batch, steps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = MyGPT(cfg).train()
    ref = ReferenceStyleGPT(cfg).load_mygpt_state(ours.state_dict()).train()
    try:
        opt_ours = torch.optim.Adam(ours.parameters(), lr=5e-4, fused=True)
    except (RuntimeError, TypeError):
        opt_ours = torch.optim.Adam(ours.parameters(), lr=5e-4, foreach=True)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=5e-4, foreach=False)
    x = torch.randint(0, 15, (batch, 404))
    with torch.no_grad():  # same function
        ours.eval(), ref.eval()
        diff = (ours(x[:2]) - ref(x[:2])).abs().max().item()
        ours.train(), ref.train()
    s_ours, s_ref = step_fn(ours, opt_ours), step_fn(ref, opt_ref)
    s_ours(x), s_ref(x)  # warm-up
    t_ours, t_ref = [], []
    for _ in range(steps):
        for fn, times in ((s_ref, t_ref), (s_ours, t_ours)):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    a, b = statistics.median(t_ref), statistics.median(t_ours)
    params = sum(p.numel() for p in ours.parameters())
    print(f"{name:>6} ({params / 1e6:.2f}M params, batch {batch}, {threads} threads): "
          f"reference-style {a:.3f} s/step, culture-interp {b:.3f} s/step, speed-up {a / b:.2f}x "
          f"(same logits: max diff {diff:.1e})")
    return a / b


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="small config, batch 8, 2 steps")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = p.parse_args()
    if args.quick:
        args.batch, args.steps, args.configs = 8, 2, ["0.79M"]
    print("training step, forward + backward + Adam, CPU")
    for name in args.configs:
        measure(name, CONFIGS[name], args.batch, args.steps, args.threads)


if __name__ == "__main__":
    main()
