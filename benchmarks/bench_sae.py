"""SAE training speed with SAELens's runner: set-up and steady state apart,
and the bound, the model forward to the hook.

Every training token needs one model forward up to the hooked block, so the
SAE trainer cannot beat the forward's own tokens/s. One run, side by side:

* model forward to the hook (``run_with_cache(..., stop_at_layer)``, what
  SAELens's ActivationsStore runs: the blocks after the hook are never
  computed), tokens/s;
* SAE set-up: from the ``train_sae`` call to the first step (quizzes
  generated, runner and SAE built, activation-norm estimate, first buffer
  fill), seconds; and the training itself (first step to last), seconds;
  their ratio is the figure of issue #27 (set-up <= 2x training);
* SAE training, steady state (from the end of the first step to the end of
  the last, timed after a device sync), tokens/s, and its ratio to the bound.

Random weights, quizzes generated on the fly, CPU by default. The norm
estimate follows the run's length (``--n-batches-for-norm-estimate``
default) unless ``--norm-batches`` is given.

    python benchmarks/bench_sae.py                 # 4M shape, mlp_out of block 3, 8x expansion, 16 steps
    python benchmarks/bench_sae.py --preset 37M --hook blocks.8.hook_mlp_out --expansion 32 --steps 10
    python benchmarks/bench_sae.py --device cuda --preset 37M --hook blocks.8.hook_mlp_out --expansion 32 --steps 10
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
from culture.hooks import act_name  # noqa: E402


def forward_bound(hooked, hook: str, store_batch: int, device: str, batches: int = 4) -> float:
    """Tokens/s of the model forward to ``hook`` on batches of ``store_batch`` quizzes (405 tokens: BOS + quiz)."""
    from culture.sae.common import hook_activations
    from culture.world import generate_quizzes

    quizzes = generate_quizzes(store_batch * batches, seed=0)
    tokens = torch.nn.functional.pad(quizzes, (1, 0)).to(device)
    hook_activations(hooked, tokens[:store_batch], hook)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for chunk in tokens.split(store_batch):
        hook_activations(hooked, chunk, hook)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return tokens.numel() / (time.perf_counter() - t0)


def flops_per_token(cfg, layer: int, d_sae: int, context: int = 405) -> tuple[float, float]:
    """(model forward to the end of block ``layer``, one SAE training step) in FLOPs per token.

    Forward, per block: the q, k, v, o projections (2 * 4 * D * D), the
    attention scores and their weighted sum over the whole context
    (TransformerLens computes the full T x T matrix and masks it: 2 * 2 * T * D)
    and the MLP (2 * 2 * D * H). SAE step: encoder and decoder forwards
    (2 * 2 * D * S) and their backward (weight gradients of both, input
    gradient of the decoder only: 3 * 2 * D * S); Adam, biases and
    elementwise terms are left out (per step, or O(S) per token)."""
    d, h = cfg.dim_model, cfg.dim_hidden
    block = 2 * 4 * d * d + 2 * 2 * context * d + 2 * 2 * d * h
    forward = (layer + 1) * block
    sae = 2 * 2 * d * d_sae + 3 * 2 * d * d_sae
    return float(forward), float(sae)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="4M", help="model shape (default 4M)")
    ap.add_argument("--hook", default=None, help="hook point (default: mlp_out of the middle block)")
    ap.add_argument("--expansion", type=int, default=8, help="SAE expansion factor (the earlier toolkit: 32)")
    ap.add_argument("--steps", type=int, default=16, help="training steps")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="tokens per training batch")
    ap.add_argument("--store-batch", type=int, default=16, help="quizzes per model forward (SAELens store)")
    ap.add_argument("--norm-batches", type=int, default=None,
                    help="batches of the norm estimate (default: the settings' rule, one per 10 steps)")
    ap.add_argument("--autocast", action="store_true", help="bfloat16 autocast of the SAE (sae train --autocast)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flops-only", action="store_true", help="print the FLOP counts and their bound, run nothing")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from culture.hooked import mygpt_to_hooked
    from culture.sae import SAETrainSettings, train_sae

    from culture.hooks import hook_layer

    cfg = PRESETS[args.preset]
    hook = args.hook or act_name("mlp_out", cfg.nb_blocks // 2)
    fwd_flops, sae_flops = flops_per_token(cfg, hook_layer(hook), args.expansion * cfg.dim_model)
    flop_line = (f"FLOPs per token: forward to the hook {fwd_flops / 1e6:.1f}M, SAE step {sae_flops / 1e6:.1f}M; at "
                 f"equal FLOP/s, steady SAE training / forward bound <= {fwd_flops / (fwd_flops + sae_flops):.2f}")
    if args.flops_only:
        print(f"{args.preset}, {hook}, SAE {args.expansion}x{cfg.dim_model}: {flop_line}")
        return
    model = MyGPT(cfg).eval().to(args.device)
    hooked = mygpt_to_hooked(model)
    settings = SAETrainSettings(hook_name=hook, expansion_factor=args.expansion, steps=args.steps,
                                train_batch_size_tokens=args.batch_tokens, store_batch_size_prompts=args.store_batch,
                                n_batches_for_norm_estimate=args.norm_batches, autocast=args.autocast,
                                device=args.device)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else platform.processor() or platform.machine())
    print(f"model {args.preset} ({model.num_parameters / 1e6:.1f}M parameters, random weights), hook {hook}, "
          f"SAE {args.expansion}x{cfg.dim_model} = {args.expansion * cfg.dim_model} features, "
          f"{args.steps} steps x {args.batch_tokens} tokens = {settings.total_tokens:,} tokens, "
          f"norm estimate {settings.norm_batches} batch(es), {args.device}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"{where}")

    fwd = forward_bound(hooked, hook, args.store_batch, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = train_sae(hooked, Path(tmp) / "sae", settings).summary
        total = time.perf_counter() - t0
    steady = s["steady_tokens_per_second"]
    rows = [("model forward to the hook (the bound)", f"{fwd:12,.0f} tokens/s"),
            ("SAE training, steady state", f"{steady:12,.0f} tokens/s" if steady else "           -"),
            ("SAE training, end to end (everything)", f"{s['training_tokens'] / total:12,.0f} tokens/s"),
            ("set-up (data, runner, norm estimate, buffer)", f"{s['setup_seconds']:12.2f} s"),
            ("training (first step to last)", f"{s['train_seconds']:12.2f} s")]
    width = max(len(r[0]) for r in rows)
    for name, v in rows:
        print(f"  {name:<{width}}  {v}")
    print(f"set-up / training: {s['setup_seconds'] / s['train_seconds']:.2f} (issue #27: <= 2)")
    if steady:
        print(f"steady SAE training / forward bound: {steady / fwd:.2f} (issue #22 asks >= 0.8)")
    print(flop_line)
    print(f"final: variance explained {s['explained_variance']:.3f}, L0 {s['l0']:.1f}, "
          f"dead {s['dead_features']} (random model, {args.steps} steps: not a quality figure)")


if __name__ == "__main__":
    main()
