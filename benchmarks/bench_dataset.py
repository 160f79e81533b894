"""Dataset build speed and memory: ``culture.dataset.build_dataset`` at scale.

Builds n world quizzes (the eight default tasks, equal counts) into a
temporary folder, as ``culture-interp dataset build`` does, and reports the
wall time, quizzes/s (whole build, and the generation phase alone), the peak
resident memory of this process and of the largest worker
(``resource.getrusage`` ru_maxrss; the workers report their own; it counts
the file pages mapped in too, such as the staging file), and the size on disk.

    python benchmarks/bench_dataset.py                      # 1,000,000 quizzes, one process per core
    python benchmarks/bench_dataset.py --n 100000 --num-proc 1
    python benchmarks/bench_dataset.py --partitioned --keep /data/culture-1M
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="world quizzes to build (default 1,000,000)")
    parser.add_argument("--num-proc", type=int, default=None, help="generation processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partitioned", action="store_true", help="also write the per-label DatasetDict")
    parser.add_argument("--no-parquet", action="store_true", help="skip the parquet copy")
    parser.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp dir, deleted)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from culture.dataset import build_dataset

    num_proc = args.num_proc or os.cpu_count() or 1
    base = Path(tempfile.mkdtemp(prefix="bench-dataset-")) if args.keep is None else None
    out = args.keep if args.keep is not None else base / "ds"
    try:
        t0 = time.perf_counter()
        report = build_dataset(out, args.n, seed=args.seed, num_proc=num_proc, partitioned=args.partitioned,
                               parquet=not args.no_parquet, overwrite=args.keep is not None)
        wall = time.perf_counter() - t0
        size = _du(out)
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    child_rss = report.extra.get("worker_peak_rss_mib") or 0  # workers report their own ru_maxrss
    figures = {
        "n": report.rows,
        "num_proc": report.num_proc,
        "partitioned": args.partitioned,
        "parquet": not args.no_parquet,
        "seconds": round(wall, 2),
        "quizzes_per_second": round(report.rows / wall),
        "generate_seconds": round(report.generate_seconds, 2),
        "generate_quizzes_per_second": round(report.generate_per_second),
        "write_seconds": round(report.write_seconds, 2),
        "peak_rss_mib_main": round(self_rss),
        "peak_rss_mib_largest_worker": round(child_rss),
        "disk_mib": round(size / 2**20),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"built {report.rows:,} quizzes in {wall:.1f} s: {report.rows / wall:,.0f} quizzes/s "
          f"({report.num_proc} process(es), {os.cpu_count()} cores)")
    print(f"  generation {report.generate_seconds:.1f} s ({report.generate_per_second:,.0f} quizzes/s), "
          f"writing {report.write_seconds:.1f} s")
    print(f"  peak RSS: main {self_rss:,.0f} MiB, largest worker {child_rss:,.0f} MiB; on disk {size / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
