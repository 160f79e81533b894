"""Counterfactual quiz pairs from the generator, for activation patching.

A pair is two quizzes that share the B grid: the clean quiz is an ordinary
world quiz of a task; in the corrupted one the example pair (A, f(A)) follows
the same task with another value of one factor (the new colour, the move,
which rectangle...), so f(B) differs. Each task's factors
(:data:`PAIR_FACTORS`) are the parameters of its rule that can change while B
stays the same; parameters that show in B itself (corners' polarity, every
colour of most tasks) cannot, so some tasks have only the generic factors:

* ``example`` (every task): a new example pair drawn with the same
  parameters; f(B) is unchanged. The control: it changes A and f(A) as much
  as any factor does, without changing the answer.
* ``task`` (the six tasks whose X grids are three disjoint full rectangles):
  the corrupted example pair comes from another task whose rule applies to
  the same B, acting on the same rectangle (replace_color, translate,
  contact -> frame; grow -> frame on the rectangle as X shows it; frame,
  detect -> replace_color). f(B) is then B under that rule. No other rule of
  the fifteen applies to the B grids of the nine other tasks (the rule oracle
  rejects them), so they have no ``task`` factor.

    >>> from culture.world import generate_pairs, PAIR_FACTORS
    >>> clean, corrupted = generate_pairs(200, "replace_color", "dst", seed=0)

How a pair is drawn: a clean quiz exactly as :func:`generate_quizzes` draws it
(same random stream when nothing is redrawn), then the factor's other value,
uniform among those the clean B admits, and a fresh example pair with it.
When the other value gives the same f(B) another one is tried (up to
``RETRIES`` times); when B admits no other value (e.g. translate: B's moved
rectangle fits no other move) the clean quiz is drawn again. The clean side
is therefore :func:`generate_quizzes`'s distribution conditioned on the
factor being variable; ``python -m culture.world factors`` prints the factor
table with the share of clean quizzes kept.
"""

from __future__ import annotations

import numpy as np
import torch

from culture.errors import CultureError
from culture.world import GENERATORS, TASKS, _rng, cells_to_quizzes, resolve_tasks
from culture.world._common import EXAMPLE, take

RETRIES = 8  # other values tried for one clean quiz before it is drawn again
MAX_ROUNDS = 10_000


class UnknownFactorError(CultureError, ValueError):
    """A factor that the task's pairs cannot vary."""


#: task -> {factor -> one-line description}, every task of TASKS
PAIR_FACTORS: dict[str, dict[str, str]] = {
    t: {
        name: (f"{f.description} [corrupted side: {f.target}]" if f.target else f.description)
        for name, f in GENERATORS[t].factors.items()
    }
    for t in TASKS
}


def _factor(task: str, vary: str):
    (name,) = resolve_tasks([task])
    factors = GENERATORS[name].factors
    if vary not in factors:
        raise UnknownFactorError(f"unknown factor {vary!r} for task {name}; valid factors: {', '.join(factors)}")
    return name, factors[vary]


def corrupted_task(task: str, vary: str) -> str:
    """The task the corrupted quizzes of (task, vary) follow: ``task`` itself
    except for the ``task`` factor."""
    name, factor = _factor(task, vary)
    return factor.target or name


def _round(rule, factor, target, rng, m: int) -> dict:
    """One round: m clean quizzes and, where found, their corrupted partners.
    Returns the clean grids, the found rows' corrupted grids and the draws
    that describe both sides."""
    record: dict = {}
    clean = rule(rng, m, record)
    p, lay = record["params"], record["layout"]
    la, lb = take(lay, slice(0, m)), take(lay, slice(m, 2 * m))
    control = factor is EXAMPLE
    found = np.zeros(m, bool)
    corrupted = np.zeros_like(clean)
    corrupted_params: list = [None] * m
    todo = np.arange(m)
    for _ in range(RETRIES):
        feasible, p2, lb2 = factor.alter(rng, take(p, todo), take(lb, todo))
        xb, fxb = target.render(p2, lb2)
        if not np.array_equal(xb[feasible], clean[todo[feasible], 2]):
            raise RuntimeError(f"{rule.name}: a corrupted B grid differs from the clean one")
        ok = feasible & (control | (fxb != clean[todo, 3]).any(axis=1))
        if ok.any():
            rows = todo[ok]
            q2, b2 = take(p2, ok), take(lb2, ok)
            a2 = target.layout(rng, q2)
            xa, fxa = target.render(q2, a2)
            corrupted[rows] = np.stack([xa, fxa, xb[ok], fxb[ok]], axis=1)
            for row, value in zip(rows.tolist(), target.describe(q2, a2, b2)):
                corrupted_params[row] = value
            found[rows] = True
        todo = todo[feasible & ~ok]  # B admits other values, this one gave the same f(B)
        if not todo.size:
            break
    return {
        "clean": clean, "corrupted": corrupted, "found": found,
        "clean_params": rule.describe(p, la, lb), "corrupted_params": corrupted_params,
    }


def generate_pairs_with_params(
    n: int, task: str, vary: str, seed: int | np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[dict], list[dict]]:
    """:func:`generate_pairs` plus each side's parameter dicts (keys of
    ``PARAMETERS[task]``; for the corrupted side of the ``task`` factor, of
    ``PARAMETERS[corrupted_task(task, vary)]``)."""
    name, factor = _factor(task, vary)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rule, target = GENERATORS[name], GENERATORS[factor.target or name]
    rng = _rng(seed)
    clean = np.zeros((n, 4, 100), np.uint8)
    corrupted = np.zeros((n, 4, 100), np.uint8)
    clean_params: list = [None] * n
    corrupted_params: list = [None] * n
    pending = np.arange(n)
    rounds = 0
    while pending.size:
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise RuntimeError(f"{name}/{vary}: no counterfactual found in {MAX_ROUNDS} rounds")
        r = _round(rule, factor, target, rng, pending.size)
        rows = np.nonzero(r["found"])[0]
        clean[pending[rows]] = r["clean"][rows]
        corrupted[pending[rows]] = r["corrupted"][rows]
        for row in rows.tolist():
            clean_params[pending[row]] = r["clean_params"][row]
            corrupted_params[pending[row]] = r["corrupted_params"][row]
        pending = pending[~r["found"]]
    return cells_to_quizzes(clean), cells_to_quizzes(corrupted), clean_params, corrupted_params


def generate_pairs(
    n: int, task: str, vary: str, seed: int | np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n counterfactual pairs ``(clean, corrupted)``, LongTensors (n, 404) in
    canonical structure: quiz i of both shares its B grid; the corrupted
    example pair follows ``task`` with another value of factor ``vary`` (one
    of ``PAIR_FACTORS[task]``), so its f(B) differs from the clean one
    (``example``: the same parameters and f(B), a new example pair). The
    clean quizzes follow :func:`generate_quizzes`'s distribution for the task,
    conditioned on B admitting another value (see the module docstring).
    Unknown task or factor: :class:`UnknownTaskError` /
    :class:`UnknownFactorError` (CultureErrors) listing the valid ones."""
    clean, corrupted, _, _ = generate_pairs_with_params(n, task, vary, seed)
    return clean, corrupted


def kept_share(task: str, vary: str, n: int = 2000, seed: int = 0) -> float:
    """Share of clean quizzes of ``task`` for which a corrupted partner is
    found in one round (the rest are drawn again): how much the clean side is
    conditioned."""
    name, factor = _factor(task, vary)
    r = _round(GENERATORS[name], factor, GENERATORS[factor.target or name], _rng(seed), n)
    return float(r["found"].mean())


def factor_table(n: int = 2000, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """Rows (task, factor, description, share of clean quizzes kept) of every
    task's factors, the share measured on ``n`` quizzes."""
    return [
        (t, f, PAIR_FACTORS[t][f], f"{kept_share(t, f, n, seed):.3f}")
        for t in TASKS for f in PAIR_FACTORS[t]
    ]
