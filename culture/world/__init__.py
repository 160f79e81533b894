"""World quizzes: the fifteen tasks of the reference generator, batch-vectorised.

A world quiz is four grids A, f(A), B, f(B) where one task's rule maps A to
f(A) and B to f(B), with shared parameters (colours, direction...) and
independent placements (REFERENCE.md section 2). Every quiz draws its task
uniformly from the requested list.

    >>> from culture.world import generate_quizzes, DEFAULT_TASKS
    >>> q = generate_quizzes(1000, seed=0)             # (1000, 404) LongTensor
    >>> q, task = generate_quizzes_with_tasks(1000, ["frame", "contact"], seed=0)
    >>> TASKS[task[0]]                                  # the task of quiz 0
    >>> q, task, params = generate_quizzes_with_params(1000, seed=0)  # same q, plus latent parameters
    >>> params[0]                                       # e.g. {"src": 3, "dst": 7, ...}; see PARAMETERS
    >>> clean, corrupted = generate_pairs(200, "replace_color", "dst", seed=0)  # see PAIR_FACTORS

Each task generates a whole batch at once with NumPy (rejection sampling
redraws only the rejected rows, all of them together); the task modules are

* :mod:`culture.world.rectangles` - the eight tasks of the published models
  (replace_color, translate, grow, half_fill, frame, detect, corners, contact);
* :mod:`culture.world.geometry` - scale, symbols, isometry;
* :mod:`culture.world.flood` - path, fill (distance / flood fill maps);
* :mod:`culture.world.motion` - trajectory, bounce.

No task resisted vectorising outright; three are less batch-friendly and the
slowest per quiz:

* path and fill need shortest-path distances / flood fill around the
  rectangles. Grids become row bitmasks and each breadth-first step is a few
  shifts and ORs over the whole batch, but the number of steps is set by the
  most winding grid (path always takes its 19; fill loops until no region
  grows), and path throws away about two thirds of its attempts;
* bounce moves its ball in ten sequential steps (each step depends on the
  trail so far); each step is vectorised over the batch.

Rectangle groups (most tasks) come from an exact sampler of disjoint groups
instead of the reference's blind rejection (see
:class:`culture.world._common._GroupSampler`): same distribution, far fewer
draws.

:mod:`culture.world.scalar` is a slow one-quiz-at-a-time implementation of
the same rules, used as the benchmark baseline and as the distribution oracle
in the tests.

Every task generator is a :class:`~culture.world._common.TaskRule`: per-quiz
parameters, then per-pair layout, then rendering. That split lets
:func:`generate_quizzes_with_params` record the draws without changing the
random stream, and :mod:`culture.world.pairs` re-render a B grid under other
parameters (counterfactual pairs).

Reproducibility: the same (n, tasks, seed) always gives the same quizzes; the
output for a smaller n is *not* a prefix of the output for a larger one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from culture import defaults as _defaults
from culture.errors import CultureError
from culture.quiz import BLOCK_LEN, CANONICAL, N_BLOCKS, N_CELLS, QUIZ_LEN
from culture.world import flood, geometry, motion, rectangles
from culture.world._common import take

#: The fifteen tasks of the reference generator, in its order.
TASKS: tuple[str, ...] = (
    "replace_color",
    "translate",
    "grow",
    "half_fill",
    "frame",
    "detect",
    "scale",
    "symbols",
    "corners",
    "contact",
    "path",
    "fill",
    "isometry",
    "trajectory",
    "bounce",
)

#: The eight tasks the published models learned (one source: :mod:`culture.defaults`).
DEFAULT_TASKS: tuple[str, ...] = _defaults.DEFAULT_TASKS

#: name -> batch generator ``(rng: numpy Generator, n) -> uint8 (n, 4, 100)``,
#: each a :class:`~culture.world._common.TaskRule` (parameters, layout, render)
GENERATORS = {**rectangles.GENERATORS, **geometry.GENERATORS, **flood.GENERATORS, **motion.GENERATORS}
assert set(GENERATORS) == set(TASKS)

#: task -> {parameter name -> one-line description}: the keys of the per-quiz
#: dicts of :func:`generate_quizzes_with_params` (values: ints, or tuples of
#: ints; rectangles are (i1, i2, j1, j2), rows i1..i2-1, columns j1..j2-1)
PARAMETERS: dict[str, dict[str, str]] = {t: dict(GENERATORS[t].parameters) for t in TASKS}

# quizzes generated per internal chunk (bounds the working memory)
_CHUNK = 1 << 16

__all__ = [
    "TASKS",
    "DEFAULT_TASKS",
    "UnknownTaskError",
    "PARAMETERS",
    "PAIR_FACTORS",
    "UnknownFactorError",
    "generate_pairs",
    "generate_pairs_with_params",
    "generate_quizzes",
    "generate_quizzes_with_params",
    "generate_quizzes_with_tasks",
    "generate_task_grids",
    "resolve_tasks",
]


class UnknownTaskError(CultureError, ValueError):
    """A task name that is not one of :data:`TASKS`."""


def resolve_tasks(tasks: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """Task list from None (the default eight), a comma-separated string, or an
    iterable of names. Raises :class:`UnknownTaskError` (a ValueError) naming
    the valid tasks when a name is unknown, or when the list is empty."""
    if tasks is None:
        return DEFAULT_TASKS
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    names = tuple(tasks)
    unknown = [t for t in names if t not in GENERATORS]
    if unknown or not names:
        what = f"unknown task(s) {', '.join(map(repr, unknown))}" if unknown else "no task given"
        raise UnknownTaskError(f"{what}; valid tasks: {', '.join(TASKS)}")
    return names


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def generate_task_grids(task: str, n: int, seed=None) -> np.ndarray:
    """uint8 (n, 4, 10, 10) grids A, f(A), B, f(B) of one task."""
    (name,) = resolve_tasks([task])
    if n <= 0:
        return np.zeros((0, N_BLOCKS, 10, 10), np.uint8)
    return GENERATORS[name](_rng(seed), n).reshape(n, N_BLOCKS, 10, 10)


def _generate(n, tasks, seed, params: list | None):
    """The quizzes and task labels of n quizzes; fills ``params`` (a list of
    n entries) with each quiz's parameter dict when given (same stream)."""
    names = resolve_tasks(tasks)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = _rng(seed)
    out = np.empty((n, N_BLOCKS, BLOCK_LEN), np.int64)
    out[:, :, 0] = CANONICAL
    labels = np.empty(n, np.int64)
    global_index = np.array([TASKS.index(t) for t in names])
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        which = rng.integers(len(names), size=m)
        cells = np.empty((m, N_BLOCKS, N_CELLS), np.uint8)
        for k, name in enumerate(names):
            rows = np.nonzero(which == k)[0]
            if rows.size:
                record = None if params is None else {}
                cells[rows] = GENERATORS[name](rng, rows.size, record)
                if record is not None:
                    described = describe(name, record)
                    for row, value in zip(rows.tolist(), described):
                        params[start + row] = value
        out[start : start + m, :, 1:] = cells
        labels[start : start + m] = global_index[which]
    quizzes = torch.from_numpy(out).reshape(n, QUIZ_LEN)
    labels = torch.from_numpy(labels)
    return quizzes, labels


def cells_to_quizzes(cells: np.ndarray) -> torch.Tensor:
    """uint8 (n, 4, 100) grids A, f(A), B, f(B) -> LongTensor (n, 404), canonical."""
    out = np.empty((len(cells), N_BLOCKS, BLOCK_LEN), np.int64)
    out[:, :, 0] = CANONICAL
    out[:, :, 1:] = cells
    return torch.from_numpy(out).reshape(len(cells), QUIZ_LEN)


def describe(task: str, record: dict) -> list[dict]:
    """Per-quiz parameter dicts from a task generator's ``record`` (see
    :class:`~culture.world._common.TaskRule`)."""
    lay = record["layout"]
    n = len(next(iter(record["params"].values())))
    return GENERATORS[task].describe(record["params"], take(lay, slice(0, n)), take(lay, slice(n, 2 * n)))


def generate_quizzes_with_tasks(
    n: int,
    tasks: str | Iterable[str] | None = None,
    seed: int | np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n world quizzes and the task of each.

    Returns ``(quizzes, task)``: quizzes a LongTensor (n, 404) in canonical
    structure (A, f_A, B, f_B); task a LongTensor (n,) holding, for each quiz,
    the index into :data:`TASKS` (not into ``tasks``) of the task it was drawn
    from. Each quiz's task is uniform over the entries of ``tasks`` (default
    :data:`DEFAULT_TASKS`; a name listed twice is drawn twice as often).
    ``seed`` (int, None for fresh entropy, or a numpy Generator to draw from)
    makes the output reproducible.
    """
    return _generate(n, tasks, seed, None)


def generate_quizzes_with_params(
    n: int,
    tasks: str | Iterable[str] | None = None,
    seed: int | np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """n world quizzes with their task and the generator's latent parameters.

    Returns ``(quizzes, task, params)``: ``quizzes`` and ``task`` exactly as
    :func:`generate_quizzes_with_tasks` returns them for the same arguments
    (the same random stream: the parameters are recorded, not redrawn), and
    ``params`` a list of n dicts, one per quiz, whose keys are those of
    ``PARAMETERS[TASKS[task[i]]]`` and whose values are ints or tuples of
    ints (JSON-friendly), e.g. ``params[i]["dst"]`` the new colour of a
    replace_color quiz.
    """
    n = int(n)
    params: list = [None] * max(n, 0)
    quizzes, labels = _generate(n, tasks, seed, params)
    return quizzes, labels, params


def generate_quizzes(
    n: int,
    tasks: str | Iterable[str] | None = None,
    seed: int | np.random.Generator | None = None,
) -> torch.Tensor:
    """n world quizzes, LongTensor (n, 404), canonical structure (A, f_A, B, f_B),
    each from a task drawn uniformly from ``tasks`` (default the eight
    :data:`DEFAULT_TASKS`). Same ``seed`` -> same quizzes. Unknown task names
    raise :class:`UnknownTaskError` (a ValueError) listing the valid ones."""
    return generate_quizzes_with_tasks(n, tasks, seed)[0]


from culture.world.pairs import (  # noqa: E402  (pairs reads GENERATORS above)
    PAIR_FACTORS,
    UnknownFactorError,
    generate_pairs,
    generate_pairs_with_params,
)
