"""Counterfactual pairs for patching, from the world generator
(:func:`culture.world.generate_pairs`), as :class:`~culture.circuits.metric.QuizPairs`."""

from __future__ import annotations

from culture.circuits.metric import QuizPairs

__all__ = ["make_pairs", "control_pairs", "pair_factors", "CONTROL_FACTOR"]

#: the factor whose pairs keep f(B): a new example drawn with the same parameters
CONTROL_FACTOR = "example"


def pair_factors(task: str) -> tuple[str, ...]:
    """The factors a task's pairs can vary (``culture.world.PAIR_FACTORS``);
    an unknown task is a CultureError."""
    from culture.world import PAIR_FACTORS, resolve_tasks

    (name,) = resolve_tasks([task])
    return tuple(PAIR_FACTORS[name])


def make_pairs(n: int, task: str, vary: str, seed: int = 0) -> QuizPairs:
    """``n`` pairs of ``task`` whose examples differ in factor ``vary`` (f(B) differs)."""
    from culture.world import generate_pairs

    clean, corrupted = generate_pairs(n, task, vary, seed=seed)
    return QuizPairs(clean, corrupted, task, vary)


def control_pairs(n: int, task: str, seed: int = 0) -> QuizPairs:
    """``n`` control pairs of ``task`` (factor ``example``: f(B) unchanged),
    drawn with another seed than :func:`make_pairs` of the same ``seed``."""
    return make_pairs(n, task, CONTROL_FACTOR, seed=seed + 1)
