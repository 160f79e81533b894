"""What the rotation draws of the universality intervals cost.

Runs :func:`culture.universality.compare_models` on the bundled zoo's four
models (8 quizzes, control none, no CKA, no random-init models) with
``rotation_draws`` 0 and 4, twice each, and prints the CPU seconds and
the ratio. The draws re-analyse the pass-1 moments (no extra pass over the
quizzes), so their cost does not grow with the tokens, but does with the
controls and with the random-init models (each analysed under every draw).

    python benchmarks/bench_rotation_draws.py
"""

from __future__ import annotations

import time


def main() -> None:
    from culture.sources import load_culture
    from culture.universality import MIN_QUIZZES, compare_models

    models = load_culture([0, 1, 2, 3], "bundled")
    seconds = {0: [], 4: []}
    for draws in (0, 4, 0, 4):
        t = time.process_time()  # CPU seconds: steadier than wall time on a shared machine
        compare_models(models, tokens=MIN_QUIZZES * 404, cka=False, controls=("none",), rotation_draws=draws,
                       resamples=200, random_init=False)
        seconds[draws].append(time.process_time() - t)
    best = {d: min(v) for d, v in seconds.items()}
    print(f"CPU seconds, rotation_draws 0: {best[0]:.1f}, rotation_draws 4: {best[4]:.1f}, "
          f"ratio {best[4] / best[0]:.2f}")


if __name__ == "__main__":
    main()
