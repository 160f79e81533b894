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


def _adam(model):
    try:  # fused Adam: one kernel for all parameters
        return torch.optim.Adam(model.parameters(), lr=5e-4, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=5e-4, foreach=True)


def measure(name, cfg, batch, steps, threads):
    """Reference style vs culture-interp with the reference's dropout
    everywhere, and culture-interp with --attention-dropout 0 (fused kernel)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = MyGPT(cfg).train()
    fast = MyGPT(GPTConfig(**{**cfg.to_dict(), "attention_dropout": 0.0})).train()
    fast.load_state_dict(ours.state_dict())
    ref = ReferenceStyleGPT(cfg).load_mygpt_state(ours.state_dict()).train()
    x = torch.randint(0, 15, (batch, 404))
    with torch.no_grad():  # same function
        ours.eval(), ref.eval()
        diff = (ours(x[:2]) - ref(x[:2])).abs().max().item()
        ours.train(), ref.train()
    runs = {
        "reference-style": step_fn(ref, torch.optim.Adam(ref.parameters(), lr=5e-4, foreach=False)),
        "culture-interp": step_fn(ours, _adam(ours)),
        "culture-interp, attention dropout 0": step_fn(fast, _adam(fast)),
    }
    for fn in runs.values():
        fn(x)  # warm-up
    times = {k: [] for k in runs}
    for _ in range(steps):  # alternate, so load changes hit every variant alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn(x)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    params = sum(p.numel() for p in ours.parameters())
    base = med["reference-style"]
    print(f"{name} ({params / 1e6:.2f}M params, batch {batch}, dropout {cfg.dropout}, {threads} threads; "
          f"same logits: max diff {diff:.1e})")
    for k, v in med.items():
        print(f"  {k:<38} {v:7.3f} s/step   speed-up {base / v:5.2f}x")
    return med


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
