"""Tables of the world generator's ground truth, as Markdown:

    python -m culture.world parameters        # PARAMETERS: per-quiz parameters of every task
    python -m culture.world factors [--n N]   # PAIR_FACTORS but `example`, with the share of clean quizzes kept
"""

from __future__ import annotations

import argparse

from culture.world import PAIR_FACTORS, PARAMETERS, TASKS
from culture.world.pairs import factor_table


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m culture.world", description=__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=["parameters", "factors"])
    ap.add_argument("--n", type=int, default=2000, help="factors: quizzes per factor to measure the kept share")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.table == "parameters":
        print(_row(["task", "parameter", "meaning"]))
        print(_row(["---"] * 3))
        for t in TASKS:
            for name, text in PARAMETERS[t].items():
                print(_row([t, f"`{name}`", text]))
        return
    print(_row(["task", "factor", "what the corrupted side changes", f"clean quizzes kept (of {args.n})"]))
    print(_row(["---"] * 4))
    rows = factor_table(args.n, args.seed)
    for t in TASKS:
        mine = [r for r in rows if r[0] == t and r[1] != "example"]
        for task, factor, text, kept in mine:
            print(_row([task, f"`{factor}`", text, kept]))
        if not mine:
            print(_row([t, "-", "none: every parameter of the rule shows in B", "-"]))
    print()
    print(f"Every task also has `example`: {PAIR_FACTORS[TASKS[0]]['example']}.")

if __name__ == "__main__":
    main()
