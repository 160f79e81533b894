"""World-quiz generation speed: the batch generator (culture.world) against the
one-quiz-at-a-time baseline in the reference's style (culture.world.scalar),
on one core, measured side by side in the same run.

    python benchmarks/bench_world.py            # default eight tasks + every task (~25 s)
    python benchmarks/bench_world.py --quick    # fewer repeats, default tasks only

Each line alternates baseline and batch runs ``--repeats`` times and keeps the
best time of each. Times are CPU seconds of this (single-threaded) process,
``time.process_time``, so other load on the machine does not count against
either side; ``--wall`` uses wall-clock time instead. The
batch generator is timed on batches of ``--batch`` quizzes for the mix of the
eight default tasks and ``--task-batch`` for a single task (about a task's
share of a dataset chunk), the baseline on about ``--scalar-seconds`` worth of
quizzes. REFERENCE.md section 2 gives the
reference generator's own speed on this machine (~2,700 quizzes/s over the
eight tasks); the ratio to that figure is printed too.
"""

from __future__ import annotations

import argparse
import time

import torch

from culture.world import DEFAULT_TASKS, TASKS, generate_quizzes, scalar

REFERENCE_RATE = 2700.0  # quizzes/s, reference generator, eight tasks (REFERENCE.md section 2)


CLOCK = time.process_time


def rate(fn, n: int) -> float:
    t = CLOCK()
    fn(n)
    return n / max(CLOCK() - t, 1e-9)


def side_by_side(tasks, batch: int, scalar_seconds: float, repeats: int) -> tuple[float, float]:
    # warm-up (tables built on first use) and calibration of the baseline size
    generate_quizzes(64, tasks, seed=0)
    n_scalar = max(50, int(scalar_seconds * rate(lambda n: scalar.generate_quizzes(n, tasks, seed=0), 50)))

    fast = slow = 0.0
    for r in range(repeats):
        slow = max(slow, rate(lambda n: scalar.generate_quizzes(n, tasks, seed=r), n_scalar))
        fast = max(fast, rate(lambda n: generate_quizzes(n, tasks, seed=r), batch))
    return fast, slow


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=20000, help="quizzes per call, eight-task mix")
    p.add_argument("--task-batch", type=int, default=5000, help="quizzes per call, single task")
    p.add_argument("--scalar-seconds", type=float, default=0.2, help="approximate baseline time per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one repeat, default tasks only")
    p.add_argument("--wall", action="store_true", help="wall-clock instead of process CPU time")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    if args.wall:
        global CLOCK
        CLOCK = time.perf_counter

    torch.set_num_threads(1)
    clock = "wall-clock" if args.wall else "process CPU"
    print(f"one thread; batches of {args.batch} (mix) / {args.task_batch} (one task); {clock} time, best of {args.repeats}")
    print(f"{'tasks':<16}{'batch q/s':>12}{'baseline q/s':>14}{'ratio':>8}{'vs ref 2.7k':>13}")

    def line(label, tasks, batch):
        fast, slow = side_by_side(tasks, batch, args.scalar_seconds, args.repeats)
        print(f"{label:<16}{fast:>12,.0f}{slow:>14,.0f}{fast / slow:>7.1f}x{fast / REFERENCE_RATE:>12.1f}x", flush=True)

    line("default eight", DEFAULT_TASKS, args.batch)
    for task in DEFAULT_TASKS if args.quick else TASKS:
        line(task if task in DEFAULT_TASKS else task + " *", [task], args.task_batch)
    if not args.quick:
        print("* not one of the eight default tasks (the 2.7k reference figure is for the eight)")


if __name__ == "__main__":
    main()
