"""Slow, readable world-quiz generator: one quiz at a time, plain Python.

This is the reference's way of working (each task fills four 10 x 10 grids
A, f(A), B, f(B) of one quiz with scalar random draws and slice assignments),
written anew. It is not used to make data; it is

* the baseline of ``benchmarks/bench_world.py`` (reference-style speed), and
* the distribution oracle of the tests: the batch generator of
  :mod:`culture.world` must produce the same distribution per task.

The rules are those of :mod:`culture.world` (see the docstrings of
``rectangles``, ``geometry``, ``flood`` and ``motion``). Randomness comes from
:class:`Draws` (a ``random.Random``); rectangle groups come from a bulk-refilled
stock as in the reference (sorted coordinate pairs, >= 3 x 3, area <= 50,
groups with an overlap dropped) - an implementation independent of the batch
generator's exact group sampler, which the tests compare against it.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import torch

from culture.quiz import grids_to_quizzes

H = W = 10
N_CELLS = H * W


# --------------------------------------------------------------------- helpers


def colors(rng: random.Random, k: int) -> list[int]:
    """k distinct colours from 1..10, uniformly ordered."""
    return rng.sample(range(1, 11), k)


class Draws(random.Random):
    """The random source of one generation: scalar draws from ``random.Random``,
    plus the reference's stock of disjoint rectangle groups.

    Like the reference's ``rec_coo``, :meth:`rectangles` pops a group from a
    stock refilled in bulk: 10,000 candidate groups of sorted coordinate pairs
    (upper end made exclusive), rectangles smaller than 3 x 3 or larger than 50
    cells dropped, the rest taken ``count`` at a time and groups with an
    overlap dropped. This amortised refill is what makes the reference run at
    its speed, so the baseline keeps it.
    """

    REFILL = 10_000

    def __init__(self, seed=None) -> None:
        super().__init__(seed)
        self._np = np.random.default_rng(seed)
        self._stock: dict[int, list] = {}

    def rectangles(self, count: int) -> list[tuple[int, int, int, int]]:
        """``count`` pairwise disjoint rectangles (i1, j1, i2, j2), exclusive ends."""
        stock = self._stock.setdefault(count, [])
        while not stock:
            stock.extend(self._refill(count))
        return stock.pop()

    def _refill(self, count: int) -> list:
        def spans():
            s = np.sort(self._np.integers(H, size=(self.REFILL * count, 2)), axis=1)
            s[:, 1] += 1
            return s

        i, j = spans(), spans()
        hi, wi = i[:, 1] - i[:, 0], j[:, 1] - j[:, 0]
        keep = (hi >= 3) & (wi >= 3) & (hi * wi <= N_CELLS // 2)
        boxes = np.stack([i[keep, 0], j[keep, 0], i[keep, 1], j[keep, 1]], axis=1)
        usable = len(boxes) - len(boxes) % count
        groups = boxes[:usable].reshape(-1, count, 4)
        ok = np.ones(len(groups), bool)
        for a in range(count):
            for b in range(a + 1, count):
                ra, rb = groups[:, a], groups[:, b]
                ok &= ~((ra[:, 0] < rb[:, 2]) & (rb[:, 0] < ra[:, 2]) & (ra[:, 1] < rb[:, 3]) & (rb[:, 1] < ra[:, 3]))
        return [[tuple(r) for r in g] for g in groups[ok].tolist()]


def contact_distance(a, b) -> int:
    """The reference's rectangle distance; 0 when a and b share an edge stretch."""
    ai1, aj1, ai2, aj2 = a
    bi1, bj1, bi2, bj2 = b
    v = max(ai1 - bi2, bi1 - ai2)
    h = max(aj1 - bj2, bj1 - aj2)
    return min(max(v, 0) + max(h + 1, 0), max(v + 1, 0) + max(h, 0))


def bfs(X: np.ndarray, i: int, j: int) -> np.ndarray:
    """Distances from (i, j) over the empty cells of X (4-neighbours); 100 for
    cells not reached and for non-empty cells."""
    d = np.full((H, W), N_CELLS, dtype=np.int64)
    d[i, j] = 0
    todo = deque([(i, j)])
    while todo:
        a, b = todo.popleft()
        for u, v in ((a - 1, b), (a + 1, b), (a, b - 1), (a, b + 1)):
            if 0 <= u < H and 0 <= v < W and X[u, v] == 0 and d[u, v] == N_CELLS:
                d[u, v] = d[a, b] + 1
                todo.append((u, v))
    return d


def pairs(A, fA, B, fB):
    return ((A, fA), (B, fB))


# ------------------------------------------------------------- rectangle tasks


def task_replace_color(rng, A, fA, B, fB):
    c = colors(rng, 4)
    for X, fX in pairs(A, fA, B, fB):
        for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(3)):
            X[i1:i2, j1:j2] = c[n]
            fX[i1:i2, j1:j2] = c[3] if n == 0 else c[n]


def task_translate(rng, A, fA, B, fB):
    while True:
        di, dj = rng.randrange(3) - 1, rng.randrange(3) - 1
        if (di, dj) != (0, 0):
            break
    c = colors(rng, 3)
    for X, fX in pairs(A, fA, B, fB):
        while True:
            r = rng.rectangles(3)
            i1, j1, i2, j2 = r[2]
            if i1 + di >= 0 and i2 + di < H and j1 + dj >= 0 and j2 + dj < W:
                break
        for n, (i1, j1, i2, j2) in enumerate(r):
            X[i1:i2, j1:j2] = c[n]
            if n == 2:
                fX[i1 + di : i2 + di, j1 + dj : j2 + dj] = c[n]
            else:
                fX[i1:i2, j1:j2] = c[n]


def task_grow(rng, A, fA, B, fB):
    c = colors(rng, 3)
    shrunk_in_x = rng.randrange(2) == 0
    for X, fX in pairs(A, fA, B, fB):
        while True:
            r = rng.rectangles(3)
            i1, j1, i2, j2 = r[2]
            if i2 - i1 >= 4 and j2 - j1 >= 4:
                break
        for n, (i1, j1, i2, j2) in enumerate(r):
            if n < 2:
                X[i1:i2, j1:j2] = c[n]
                fX[i1:i2, j1:j2] = c[n]
            else:
                small, big = (X, fX) if shrunk_in_x else (fX, X)
                small[i1 + 1 : i2 - 1, j1 + 1 : j2 - 1] = c[n]
                big[i1:i2, j1:j2] = c[n]


def task_half_fill(rng, A, fA, B, fB):
    c = colors(rng, 6)
    direction = rng.randrange(4)
    for X, fX in pairs(A, fA, B, fB):
        for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(3)):
            X[i1:i2, j1:j2] = c[2 * n]
            fX[i1:i2, j1:j2] = c[2 * n]
            last = n == 2
            line = c[2 * n + 1]
            if direction == 0:  # middle row, grows down
                i = (i1 + i2) // 2
                X[i, j1:j2] = line
                fX[i if not last else slice(i, i2), j1:j2] = line
            elif direction == 1:  # middle row, grows up
                i = (i1 + i2 - 1) // 2
                X[i, j1:j2] = line
                fX[i if not last else slice(i1, i + 1), j1:j2] = line
            elif direction == 2:  # middle column, grows right
                j = (j1 + j2) // 2
                X[i1:i2, j] = line
                fX[i1:i2, j if not last else slice(j, j2)] = line
            else:  # middle column, grows left
                j = (j1 + j2 - 1) // 2
                X[i1:i2, j] = line
                fX[i1:i2, j if not last else slice(j1, j + 1)] = line


def task_frame(rng, A, fA, B, fB):
    c = colors(rng, 3)
    for X, fX in pairs(A, fA, B, fB):
        for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(3)):
            X[i1:i2, j1:j2] = c[n]
            if n == 2:
                fX[i1:i2, j1] = fX[i1:i2, j2 - 1] = c[n]
                fX[i1, j1:j2] = fX[i2 - 1, j1:j2] = c[n]
            else:
                fX[i1:i2, j1:j2] = c[n]


def task_detect(rng, A, fA, B, fB):
    c = colors(rng, 4)
    for X, fX in pairs(A, fA, B, fB):
        for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(3)):
            X[i1:i2, j1:j2] = c[n]
            fX[i1:i2, j1:j2] = c[n]
            if n < 2:
                fX[i1, j1] = fX[i1 + 1, j1] = fX[i1, j1 + 1] = c[3]


def task_corners(rng, A, fA, B, fB):
    polarity = rng.randrange(2)
    c = colors(rng, 3)
    for X, fX in pairs(A, fA, B, fB):
        for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(3)):
            for k in range(2):
                if polarity == 0:  # top-left and bottom-right
                    X[i1 + k, j1] = X[i1, j1 + k] = c[n]
                    X[i2 - 1 - k, j2 - 1] = X[i2 - 1, j2 - 1 - k] = c[n]
                else:  # top-right and bottom-left
                    X[i1 + k, j2 - 1] = X[i1, j2 - 1 - k] = c[n]
                    X[i2 - 1 - k, j1] = X[i2 - 1, j1 + k] = c[n]
            fX[i1:i2, j1:j2] = c[n]


def task_contact(rng, A, fA, B, fB):
    c = colors(rng, 3)
    for X, fX in pairs(A, fA, B, fB):
        while True:
            r = rng.rectangles(3)
            d = [contact_distance(r[0], r[k]) for k in range(3)]
            if min(d[1:]) == 0:
                break
        for n, (i1, j1, i2, j2) in enumerate(r):
            X[i1:i2, j1:j2] = c[n]
            fX[i1:i2, j1:j2] = c[n]
            if d[n] == 0:
                fX[i1, j1:j2] = fX[i2 - 1, j1:j2] = c[0]
                fX[i1:i2, j1] = fX[i1:i2, j2 - 1] = c[0]


# -------------------------------------------------------------- geometry tasks


def task_scale(rng, A, fA, B, fB):
    c = colors(rng, 2)
    i, j = rng.randrange(H // 2), rng.randrange(W // 2)
    for X, fX in pairs(A, fA, B, fB):
        for _ in range(3):
            while True:
                i1, j1 = rng.randrange(H // 2 + 1), rng.randrange(W // 2 + 1)
                i2, j2 = rng.randrange(H // 2 + 1), rng.randrange(W // 2 + 1)
                if i1 < i2 and j1 < j2 and min(i2 - i1, j2 - j1) <= 3:
                    break
            X[i + i1 : i + i2, j + j1 : j + j2] = c[0]
            fX[2 * i1 : 2 * i2, 2 * j1 : 2 * j2] = c[0]
        for Z in (X, fX):
            Z[i, j] = Z[i + 1, j] = Z[i, j + 1] = c[1]


def task_symbols(rng, A, fA, B, fB):
    c = colors(rng, 5)
    for X, fX in pairs(A, fA, B, fB):
        while True:
            i = [rng.randrange(8) for _ in range(4)]
            j = [rng.randrange(8) for _ in range(4)]
            spread = all(
                max(abs(i[a] - i[b]), abs(j[a] - j[b])) > 3 for a in range(4) for b in range(a + 1, 4)
            )
            q = rng.randrange(3) + 1
            # the reference asserts i[q], j[q] differ from the means; redraw instead
            if spread and 4 * i[q] != sum(i) and 4 * j[q] != sum(j):
                break
        for Z in (X, fX):
            for k in range(4):
                Z[i[k] : i[k] + 3, j[k] : j[k] + 3] = c[k]
        ci, cj = i[0] + 1, j[0] + 1
        fX[ci, cj] = c[q]
        pi = ci + (1 if 4 * i[q] > sum(i) else -1)
        pj = cj + (1 if 4 * j[q] > sum(j) else -1)
        for Z in (X, fX):
            Z[pi, pj] = Z[ci, pj] = Z[pi, cj] = c[4]


def task_isometry(rng, A, fA, B, fB):
    di, dj = rng.randrange(3) - 1, rng.randrange(3) - 1
    m = np.eye(2, dtype=np.int64)
    for _ in range(rng.randrange(4)):
        m = m @ np.array([[0, 1], [-1, 0]])
    if rng.random() < 0.5:
        m[0, :] = -m[0, :]

    def move(i, j):  # a cell through the isometry about the centre, then the shift
        u, v = 2 * i - (H - 1), 2 * j - (W - 1)
        u, v = m[0, 0] * u + m[0, 1] * v, m[1, 0] * u + m[1, 1] * v
        return (u + H - 1) // 2 + di, (v + W - 1) // 2 + dj

    for X, fX in pairs(A, fA, B, fB):
        while True:
            X[...] = 0
            fX[...] = 0
            c = colors(rng, 3)
            for r in range(3):
                while True:
                    i1, i2 = rng.randrange(H - 2) + 1, rng.randrange(H - 2) + 1
                    j1, j2 = rng.randrange(W - 2) + 1, rng.randrange(W - 2) + 1
                    if i2 >= i1 and j2 >= j1 and max(i2 - i1, j2 - j1) >= 2 and min(i2 - i1, j2 - j1) <= 3:
                        break
                X[i1 : i2 + 1, j1 : j2 + 1] = c[r]
                (a1, b1), (a2, b2) = move(i1, j1), move(i2, j2)
                a1, a2 = min(a1, a2), max(a1, a2)
                b1, b2 = min(b1, b2), max(b1, b2)
                fX[a1 : a2 + 1, b1 : b2 + 1] = c[r]
            if (X > 0).sum() > N_CELLS // 4 and len(set(X.flat) - {0}) == 3:
                break


# ---------------------------------------------------------------- region tasks


def task_path(rng, A, fA, B, fB):
    c = colors(rng, 4)
    for X, fX in pairs(A, fA, B, fB):
        while True:
            X[...] = 0
            fX[...] = 0
            for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(2)):
                X[i1:i2, j1:j2] = c[n]
                fX[i1:i2, j1:j2] = c[n]
            a1, a2 = rng.randrange(H), rng.randrange(H)
            b1, b2 = rng.randrange(W), rng.randrange(W)
            if abs(a1 - a2) + abs(b1 - b2) > 2 and X[a1, b1] == 0 and X[a2, b2] == 0:
                d2 = bfs(X, a2, b2)
                if d2[a1, b1] < 2 * W:
                    d1 = bfs(X, a1, b1)
                    break
        fX[d1 + d2 == d2[a1, b1]] = c[3]
        for Z in (X, fX):
            Z[a1, b1] = Z[a2, b2] = c[2]


def task_fill(rng, A, fA, B, fB):
    c = colors(rng, 4)
    for X, fX in pairs(A, fA, B, fB):
        accept_any = rng.random() < 0.5
        while True:
            X[...] = 0
            fX[...] = 0
            for n, (i1, j1, i2, j2) in enumerate(rng.rectangles(3)):
                X[i1:i2, j1:j2] = c[n]
                fX[i1:i2, j1:j2] = c[n]
            if not (X == 0).any():  # the reference would loop for ever here
                continue
            while True:
                i, j = rng.randrange(H), rng.randrange(W)
                if X[i, j] == 0:
                    break
            d = bfs(X, i, j)
            X[i, j] = c[3]
            fX[d < N_CELLS] = c[3]
            fX[i, j] = 0
            if accept_any or ((d == N_CELLS) & (X == 0)).any():
                break


# ---------------------------------------------------------------- motion tasks


def task_trajectory(rng, A, fA, B, fB):
    c = colors(rng, 2)
    for X, fX in pairs(A, fA, B, fB):
        while True:
            di, dj = rng.randrange(7) - 3, rng.randrange(7) - 3
            i, j = rng.randrange(H), rng.randrange(W)
            if (di, dj) != (0, 0) and 0 <= i + 2 * di < H and 0 <= j + 2 * dj < W:
                break
        k = 0
        while 0 <= i + k * di < H and 0 <= j + k * dj < W:
            if k < 2:
                X[i + k * di, j + k * dj] = c[k]
            fX[i + k * di, j + k * dj] = c[min(k, 1)]
            k += 1


def task_bounce(rng, A, fA, B, fB):
    c = colors(rng, 3)
    for X, fX in pairs(A, fA, B, fB):

        def free(i, j):
            return 0 <= i < H and 0 <= j < W and fX[i, j] == 0

        while True:
            X[...] = 0
            fX[...] = 0
            for _ in range(N_CELLS // 10):
                i, j = rng.randrange(H), rng.randrange(W)
                X[i, j] = fX[i, j] = c[0]
            di, dj = ((-1, 0), (1, 0), (0, -1), (0, 1))[rng.randrange(4)]
            i, j = rng.randrange(H), rng.randrange(W)
            X[i, j] = fX[i, j] = c[1]
            moves = 0
            while True:
                moves += 1
                if free(i + di, j + dj):
                    pass
                elif free(i - dj, j + di):
                    di, dj = -dj, di
                elif free(i + dj, j - di):
                    di, dj = dj, -di
                else:
                    break
                i, j = i + di, j + dj
                if moves == 1:
                    X[i, j] = c[2]
                    fX[i, j] = c[1]
                else:
                    fX[i, j] = c[2]
                if moves >= W:
                    break
            X[i, j] = fX[i, j] = c[1]
            if moves > 3:
                break


TASK_FUNCTIONS = {
    "replace_color": task_replace_color,
    "translate": task_translate,
    "grow": task_grow,
    "half_fill": task_half_fill,
    "frame": task_frame,
    "detect": task_detect,
    "scale": task_scale,
    "symbols": task_symbols,
    "corners": task_corners,
    "contact": task_contact,
    "path": task_path,
    "fill": task_fill,
    "isometry": task_isometry,
    "trajectory": task_trajectory,
    "bounce": task_bounce,
}


def generate_quizzes_with_tasks(n: int, tasks=None, seed=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`culture.world.generate_quizzes_with_tasks`, one quiz at a
    time (same task resolution, same output format, different random stream)."""
    from culture.world import TASKS, resolve_tasks

    names = resolve_tasks(tasks)
    rng = Draws(seed)
    grids = np.zeros((n, 4, H, W), dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    for q in range(n):
        name = names[rng.randrange(len(names))]
        labels[q] = TASKS.index(name)
        TASK_FUNCTIONS[name](rng, *grids[q])
    return grids_to_quizzes(torch.from_numpy(grids)), torch.from_numpy(labels)


def generate_quizzes(n: int, tasks=None, seed=None) -> torch.Tensor:
    """n quizzes (n, 404) in canonical structure, one at a time."""
    return generate_quizzes_with_tasks(n, tasks, seed)[0]
