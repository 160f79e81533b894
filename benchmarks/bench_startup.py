"""CLI start-up: seconds spent importing modules on the paths that must start fast.

Each path runs in fresh subprocesses (``python -X importtime``, CPython's own
per-module import timer) several times; the script prints per path the median
and range of the total import time (the sum of the top-level imports'
cumulative times, i.e. every module the command loaded, ours included), the
process's wall time, and which heavy packages were loaded (with the median
seconds of each one's import). The goal
(issue 27): ``eval --models 0 --source bundled --num-samples 10`` imports in
at most 1.5 s on an idle machine, and ``--help`` / ``show-quiz`` load neither
TransformerLens, SAELens nor scipy.

    python benchmarks/bench_startup.py               # 5 runs per path
    python benchmarks/bench_startup.py --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PATHS = {
    "--help": ["--help"],
    "show-quiz": ["show-quiz", "--task", "translate", "--seed", "0"],
    "eval": ["eval", "--models", "0", "--source", "bundled", "--num-samples", "10"],
}
HEAVY = ("torch", "transformer_lens", "sae_lens", "scipy", "datasets", "matplotlib")


def import_profile(argv: list[str]) -> tuple[float, float, dict[str, float]]:
    """(seconds importing, seconds of wall time, {top-level package loaded:
    seconds its first import took}) of one CLI run in a fresh interpreter."""
    code = ("import sys; sys.argv = ['culture-interp', *sys.argv[1:]]\n"
            "from culture_cli.main import main\nmain()")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *argv], cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"culture-interp {' '.join(argv)} failed:\n{res.stderr[-2000:]}")
    total_us, loaded = 0, {}
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cumulative, name = line.split("|")
        package = name.strip().split(".")[0]
        if name.strip() == package:  # a package's own entry: the time of its whole first import
            loaded[package] = max(loaded.get(package, 0.0), int(cumulative) / 1e6)
        else:
            loaded.setdefault(package, 0.0)
        if name.startswith(" ") and not name.startswith("  "):  # a top-level import: its cumulative time
            total_us += int(cumulative)
    return total_us / 1e6, wall, loaded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs per path (the first warms the file cache)")
    args = p.parse_args()
    print(f"{'path':<10} {'imports (median, min-max)':>27} {'wall (median)':>14}  heavy packages loaded")
    for label, argv in PATHS.items():
        import_profile(argv)  # warm the file cache
        runs = [import_profile(argv) for _ in range(args.repeats)]
        imports = [r[0] for r in runs]
        walls = [r[1] for r in runs]
        heavy = [h for h in HEAVY if any(h in r[2] for r in runs)]
        shown = [f"{h} {statistics.median(r[2].get(h, 0.0) for r in runs):.2f} s" for h in heavy]
        print(f"{label:<10} {statistics.median(imports):>10.2f} s ({min(imports):.2f}-{max(imports):.2f} s) "
              f"{statistics.median(walls):>12.2f} s  {', '.join(shown) or '-'}")


if __name__ == "__main__":
    main()
