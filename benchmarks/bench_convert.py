"""TransformerLens conversion at the real preset shapes: exactness and cost.

For each preset (random weights with the reference's layout; the published
models are 37M), builds a MyGPT, converts it with ``culture.hooked.mygpt_to_hooked``,
and reports the conversion time, the forward time of both models on n quizzes,
and the max |logit difference| (HookedTransformer(BOS + quiz[:-1]) vs MyGPT(quiz)),
plus the same after a save_converted / load_converted round trip.

    python benchmarks/bench_convert.py                       # 17K, 4M, 37M on CPU
    python benchmarks/bench_convert.py --presets 4M 37M 122M --device cuda --n 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["17K", "4M", "37M"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=4, help="quizzes in the check batch")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch

    from culture.hooked import hooked_logits, load_converted, mygpt_to_hooked, save_converted
    from culture.mygpt import PRESETS, MyGPT
    from culture.quiz import random_structures

    try:
        from culture.world import generate_quizzes

        quizzes = generate_quizzes(args.n, seed=0)
    except ImportError:
        from culture.quiz import grids_to_quizzes

        quizzes = grids_to_quizzes(torch.randint(0, 11, (args.n, 4, 10, 10)))
    quizzes = random_structures(quizzes, generator=torch.Generator().manual_seed(0))[0].to(args.device)

    rows = []
    for name in args.presets:
        torch.manual_seed(0)
        model = MyGPT(PRESETS[name]).to(args.device).eval()
        with torch.no_grad():  # LayerNorm/bias values away from their init, so every weight matters
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
        t0 = time.perf_counter()
        hooked = mygpt_to_hooked(model)
        t_convert = time.perf_counter() - t0

        def timed(f):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                y = f()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return y, time.perf_counter() - t

        ours, t_mygpt = timed(lambda: model(quizzes))
        theirs, t_hooked = timed(lambda: hooked_logits(hooked, quizzes))
        diff = (ours - theirs).abs().max().item()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            save_converted(hooked, Path(tmp) / "m")
            loaded = load_converted(Path(tmp) / "m", device=args.device)
            t_io = time.perf_counter() - t0
            diff_saved = (ours - hooked_logits(loaded, quizzes)).abs().max().item()
        row = {"preset": name, "params": model.num_parameters, "d_head": hooked.cfg.d_head,
               "attn_scale": hooked.cfg.attn_scale, "convert_s": round(t_convert, 3),
               "mygpt_forward_s": round(t_mygpt, 3), "hooked_forward_s": round(t_hooked, 3),
               "save_load_s": round(t_io, 3), "max_abs_logit_diff": diff, "after_save_load": diff_saved,
               "logit_scale": ours.abs().max().item()}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, hooked, loaded
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "n": args.n, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
