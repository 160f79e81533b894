"""SAE training speed with SAELens's runner, and its bound: the model forward.

Every training token needs one model forward up to the hooked block, so the
SAE trainer cannot beat the forward's own tokens/s. One run, side by side:

* model forward to the hook (``run_with_cache(..., stop_at_layer)``, what
  SAELens's ActivationsStore runs), tokens/s;
* SAE training, steady state (from the first to the last step, timed through
  the progress callback), tokens/s;
* SAE training end to end (runner set-up, norm estimate, data included).

Random weights, quizzes generated on the fly, CPU by default.

    python benchmarks/bench_sae.py                 # 4M shape, mlp_out of block 3, 8x expansion, 16 steps
    python benchmarks/bench_sae.py --preset 37M --hook blocks.8.hook_mlp_out --expansion 32 --steps 20
    python benchmarks/bench_sae.py --device cuda --preset 37M --expansion 32 --steps 200
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from culture.mygpt import PRESETS, MyGPT  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="4M", help="model shape (default 4M)")
    ap.add_argument("--hook", default=None, help="hook point (default: mlp_out of the middle block)")
    ap.add_argument("--expansion", type=int, default=8, help="SAE expansion factor (the earlier toolkit: 32)")
    ap.add_argument("--steps", type=int, default=16, help="training steps")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="tokens per training batch")
    ap.add_argument("--store-batch", type=int, default=16, help="quizzes per model forward (SAELens store)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from culture.hooked import mygpt_to_hooked
    from culture.sae import SAETrainSettings, train_sae
    from culture.sae.common import hook_activations
    from culture.world import generate_quizzes

    cfg = PRESETS[args.preset]
    hook = args.hook or f"blocks.{cfg.nb_blocks // 2}.hook_mlp_out"
    model = MyGPT(cfg).eval().to(args.device)
    hooked = mygpt_to_hooked(model)
    print(f"model {args.preset} ({model.num_parameters / 1e6:.1f}M parameters, random weights), hook {hook}, "
          f"SAE {args.expansion}x{cfg.dim_model} = {args.expansion * cfg.dim_model} features, "
          f"{args.steps} steps x {args.batch_tokens} tokens, {args.device}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")

    # 1. the bound: forward to the hook, batches of store_batch quizzes (405 tokens: BOS + quiz, as SAELens reads)
    quizzes = generate_quizzes(args.store_batch * 4, seed=0)
    tokens = torch.nn.functional.pad(quizzes, (1, 0)).to(args.device)
    hook_activations(hooked, tokens[: args.store_batch], hook)  # warm-up
    t0 = time.perf_counter()
    for chunk in tokens.split(args.store_batch):
        hook_activations(hooked, chunk, hook)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    fwd = tokens.numel() / (time.perf_counter() - t0)

    # 2. SAELens's runner
    marks: dict[int, float] = {}

    def progress(phase, done, total, info):
        if phase == "train" and (done == 1 or done == total):
            marks[done] = time.perf_counter()

    settings = SAETrainSettings(hook_name=hook, expansion_factor=args.expansion, steps=args.steps,
                                train_batch_size_tokens=args.batch_tokens, store_batch_size_prompts=args.store_batch,
                                n_batches_for_norm_estimate=5, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train_sae(hooked, Path(tmp) / "sae", settings, progress=progress)
        total = time.perf_counter() - t0
    steady = (args.steps - 1) * args.batch_tokens / (marks[args.steps] - marks[1]) if args.steps > 1 else None
    e2e = args.steps * args.batch_tokens / total

    rows = [("model forward to the hook (the bound)", fwd),
            ("SAE training, steady state (SAELens runner)", steady),
            ("SAE training, end to end (set-up, norm estimate, data)", e2e)]
    width = max(len(r[0]) for r in rows)
    for name, v in rows:
        print(f"  {name:<{width}}  {v:12,.0f} tokens/s" if v else f"  {name:<{width}}  -")
    if steady:
        print(f"steady SAE training / forward bound: {steady / fwd:.2f}")
    s = result.summary
    print(f"final: variance explained {s['explained_variance']:.3f}, L0 {s['l0']:.1f}, "
          f"dead {s['dead_features']} (random model, {args.steps} steps: not a quality figure)")


if __name__ == "__main__":
    main()
