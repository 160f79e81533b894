"""Shared machinery of the batch generators: random draws, painting, and the
precomputed table of "reference rectangles" with the masks the tasks need.

Conventions used by every vectorised task
-----------------------------------------
* A task generator has the signature ``task(rng, n) -> uint8 array (n, 4, 100)``:
  ``n`` quizzes, blocks in canonical order A, f(A), B, f(B), cells row-major.
  Each is a :class:`TaskRule` (parameters, layout, render steps; see there).
* Internally a task works on ``2n`` *pairs* (X, f(X)): rows ``0..n-1`` are the
  (A, f(A)) pairs and rows ``n..2n-1`` the (B, f(B)) pairs of the same quizzes.
  Parameters shared by the two pairs of a quiz (colours, direction...) are drawn
  once per quiz and repeated with :func:`both`; placements are drawn per pair.
  :func:`assemble` turns the pair arrays back into quizzes.
* Grids are flat ``(m, 100)`` uint8 arrays; shapes are ``(m, 100)`` bool masks,
  painted with :func:`paint` (later paint goes on top, as in the reference).

Reference rectangles
--------------------
Most tasks place rectangles with the reference's rectangle sampler: for each
axis two uniform coordinates 0..9 are sorted and the upper one made exclusive;
a rectangle is kept when it is at least 3 x 3 and covers at most 50 cells, and a
group of rectangles is kept when its members do not overlap. Every surviving
rectangle is equally likely, so the sampler is the same as drawing uniform
indices into the table :data:`RECTS` of all admissible rectangles, i.i.d.,
conditioned on pairwise disjointness. :func:`sample_rect_groups` draws from
exactly that distribution (an exact sequential sampler, then vectorised
rejection for task conditions); per-rectangle shapes (full, border, interior,
corner marks, half-fill lines...) are precomputed per table entry so that a
task only gathers rows of mask tables.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

GRID = 10
N_CELLS = GRID * GRID
N_PALETTE = 10  # drawable colours 1..10 (0 is the empty cell)

# ----------------------------------------------------------------- random draws


def both(x: np.ndarray) -> np.ndarray:
    """Repeat per-quiz values for the two pairs (A, f(A)) and (B, f(B))."""
    return np.concatenate([x, x], axis=0)


def distinct_colors(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n, k) uint8: k distinct colours from 1..10 per row, uniformly ordered
    (the first k of a random permutation, as the reference's randperm)."""
    return (np.argsort(rng.random((n, N_PALETTE)), axis=1)[:, :k] + 1).astype(np.uint8)


def paint(grid: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    """In place: grid[r, cell] = color[r] where mask[r, cell] (grid (m, 100))."""
    np.copyto(grid, np.asarray(color, dtype=grid.dtype)[:, None], where=mask)


def set_cells(grid: np.ndarray, cells: np.ndarray, color: np.ndarray) -> None:
    """In place: grid[r, cells[r]] = color[r] (one cell per row)."""
    grid[np.arange(grid.shape[0]), cells] = color


def assemble(x: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Pair arrays (2n, 100) -> quizzes (n, 4, 100) in order A, f(A), B, f(B)."""
    n = x.shape[0] // 2
    return np.stack([x[:n], fx[:n], x[n:], fx[n:]], axis=1)


def first_accepted(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ok (p, tries) bool: rows having an accepted candidate, and for those
    rows the index of their first accepted candidate. Taking the first accepted
    of i.i.d. candidates is the same as rejection sampling one at a time."""
    hit = ok.any(axis=1)
    return hit, ok[hit].argmax(axis=1)


def rows_cols() -> tuple[np.ndarray, np.ndarray]:
    """(100,) row and column of every cell."""
    cell = np.arange(N_CELLS)
    return cell // GRID, cell % GRID


CELL_ROW, CELL_COL = rows_cols()


def box_mask(i1, i2, j1, j2) -> np.ndarray:
    """Masks (..., 100) of the boxes rows [i1, i2), columns [j1, j2) (arrays
    broadcast together; empty boxes give empty masks)."""
    i1, i2, j1, j2 = (np.asarray(v)[..., None] for v in (i1, i2, j1, j2))
    return (CELL_ROW >= i1) & (CELL_ROW < i2) & (CELL_COL >= j1) & (CELL_COL < j2)


def cell_mask(i, j, valid=True) -> np.ndarray:
    """Masks (..., 100) holding the single cell (i, j) (nothing where not valid)."""
    i, j, valid = (np.asarray(v)[..., None] for v in (i, j, valid))
    return (CELL_ROW == i) & (CELL_COL == j) & valid


# ---------------------------------------------------------- reference rectangles


def _admissible_rectangles() -> np.ndarray:
    """(R, 4) int64 rows (i1, i2, j1, j2), exclusive ends: every rectangle the
    reference sampler can return (>= 3 x 3, area <= 50)."""
    spans = [(a, b + 1) for a in range(GRID) for b in range(GRID) if b - a >= 2]
    return np.array(
        [(i1, i2, j1, j2) for i1, i2 in spans for j1, j2 in spans if (i2 - i1) * (j2 - j1) <= N_CELLS // 2],
        dtype=np.int64,
    )


class RectTable:
    """The admissible rectangles and their per-rectangle masks (all (R, 100)
    bool unless said otherwise)."""

    def __init__(self) -> None:
        r = _admissible_rectangles()
        self.count = len(r)
        i1, i2, j1, j2 = r.T
        self.i1, self.i2, self.j1, self.j2 = i1, i2, j1, j2
        self.height, self.width = i2 - i1, j2 - j1

        self.full = box_mask(i1, i2, j1, j2)
        self.inner = box_mask(i1 + 1, i2 - 1, j1 + 1, j2 - 1)  # one cell in from each side
        self.border = self.full & ~self.inner

        # "L" of three cells at a corner: the corner cell and its two neighbours
        # inside the rectangle, toward the inside along the row and the column.
        def corner_l(ci, cj, si, sj):
            return cell_mask(ci, cj) | cell_mask(ci + si, cj) | cell_mask(ci, cj + sj)

        top_left = corner_l(i1, j1, 1, 1)
        top_right = corner_l(i1, j2 - 1, 1, -1)
        bottom_left = corner_l(i2 - 1, j1, -1, 1)
        bottom_right = corner_l(i2 - 1, j2 - 1, -1, -1)
        self.top_left_l = top_left
        # corners[polarity]: polarity 0 = top-left + bottom-right, 1 = the other diagonal
        self.corners = np.stack([top_left | bottom_right, top_right | bottom_left])

        # half_fill: a middle line and the half it grows into, four directions:
        # 0 row (i1+i2)//2 growing down, 1 row (i1+i2-1)//2 growing up,
        # 2 column (j1+j2)//2 growing right, 3 column (j1+j2-1)//2 growing left.
        lo_i, hi_i = (i1 + i2) // 2, (i1 + i2 - 1) // 2
        lo_j, hi_j = (j1 + j2) // 2, (j1 + j2 - 1) // 2
        self.half_line = np.stack([
            box_mask(lo_i, lo_i + 1, j1, j2),
            box_mask(hi_i, hi_i + 1, j1, j2),
            box_mask(i1, i2, lo_j, lo_j + 1),
            box_mask(i1, i2, hi_j, hi_j + 1),
        ])
        self.half_area = np.stack([
            box_mask(lo_i, i2, j1, j2),
            box_mask(i1, hi_i + 1, j1, j2),
            box_mask(i1, i2, lo_j, j2),
            box_mask(i1, i2, j1, hi_j + 1),
        ])

        # translate: the eight unit moves; shifted[s] (8, R, 100) and whether the
        # move is allowed, shift_ok[s] (8, R). The reference requires
        # i1+di >= 0, i2+di < 10 (i2 exclusive), same for columns: the moved
        # rectangle never touches the bottom or right edge (a quirk kept as is).
        self.shifts = np.array([(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)])
        di, dj = self.shifts[:, 0:1], self.shifts[:, 1:2]
        self.shifted = box_mask(i1 + di, i2 + di, j1 + dj, j2 + dj)
        self.shift_ok = (i1 + di >= 0) & (i2 + di < GRID) & (j1 + dj >= 0) & (j2 + dj < GRID)

        # pairwise relations (R, R)
        a_i1, a_i2, a_j1, a_j2 = (v[:, None] for v in (i1, i2, j1, j2))
        b_i1, b_i2, b_j1, b_j2 = (v[None, :] for v in (i1, i2, j1, j2))
        overlap = (a_i1 < b_i2) & (b_i1 < a_i2) & (a_j1 < b_j2) & (b_j1 < a_j2)
        self.disjoint = ~overlap
        # The reference's "contact" distance: gaps v (rows) and h (columns),
        # negative when the spans overlap; distance 0 <=> the two rectangles
        # share a stretch of edge (corner-to-corner contact does not count).
        v = np.maximum(a_i1 - b_i2, b_i1 - a_i2)
        h = np.maximum(a_j1 - b_j2, b_j1 - a_j2)
        dist = np.minimum(np.maximum(v, 0) + np.maximum(h + 1, 0), np.maximum(v + 1, 0) + np.maximum(h, 0))
        self.touch = dist == 0


RECTS = RectTable()


class _GroupSampler:
    """Exact sampler of ordered groups of k pairwise disjoint rectangles, each
    group equally likely (k = 2 or 3), optionally with the last rectangle
    restricted to a subset L of the table. Built on first use (~0.1 s).

    With D the (R, R) disjointness matrix and N = D @ diag(L) @ D (N[a, b]
    counts the rectangles of L disjoint from both a and b), a uniform triple
    (a, b, c) factorises as: (a, b) with weight D[a, b] N[a, b], then c
    uniform among the rectangles of L disjoint from a and b. The pair is one
    categorical draw over the R * R weights (integer cumulative sums and
    ``searchsorted``); c is drawn uniformly from the rectangles disjoint from a
    (a padded neighbour list) and kept when in L and disjoint from b (about one
    draw in three succeeds without restriction). A pair is a with weight
    #{b in L: D[a, b]}, then b uniform among those.

    This replaces the reference's blind rejection of whole groups (only ~1.8%
    of random triples are disjoint) by the same distribution at a fraction of
    the cost.
    """

    def __init__(self, last: np.ndarray | None = None) -> None:
        d = RECTS.disjoint
        self.last = np.ones(RECTS.count, bool) if last is None else last
        d_last = d & self.last[None, :]  # d_last[a, b]: b disjoint from a and in L
        third = np.rint(d.astype(np.float32) @ d_last.T.astype(np.float32)).astype(np.int64)  # exact (< 2**24)
        self.pair_cum = np.cumsum(np.where(d, third, 0).reshape(-1))
        # neighbours[a, :degree[a]] = the rectangles disjoint from a (any / in L)
        self.degree = d.sum(axis=1)
        self.neighbours = np.argsort(~d, axis=1, kind="stable")[:, : self.degree.max()].astype(np.int16)
        self.degree_last = d_last.sum(axis=1)
        self.degree_last_cum = np.cumsum(self.degree_last)
        self.neighbours_last = np.argsort(~d_last, axis=1, kind="stable")[:, : self.degree_last.max()].astype(np.int16)

    @staticmethod
    def _pick(rng, table: np.ndarray, degree: np.ndarray, a: np.ndarray, shape) -> np.ndarray:
        """Uniform entries of table[a, :degree[a]] (a broadcast against ``shape``)."""
        deg = degree[a]
        k = np.minimum((rng.random(shape) * deg).astype(np.int64), deg - 1)
        return table[a, k].astype(np.int64)

    def __call__(self, rng: np.random.Generator, m: int, k: int) -> np.ndarray:
        if k == 2:
            a = _sorted_search(self.degree_last_cum, rng.integers(self.degree_last_cum[-1], size=m))
            return np.stack([a, self._pick(rng, self.neighbours_last, self.degree_last, a, m)], axis=1)
        if k != 3:
            raise ValueError(f"groups of {k} rectangles are not supported")
        a, b = np.divmod(_sorted_search(self.pair_cum, rng.integers(self.pair_cum[-1], size=m)), RECTS.count)
        c = np.empty(m, np.int64)
        pending = np.arange(m)
        tries = 4
        while pending.size:
            pa, pb = a[pending][:, None], b[pending][:, None]
            cand = self._pick(rng, self.neighbours, self.degree, pa, (pending.size, tries))
            hit, first = first_accepted(RECTS.disjoint[pb, cand] & self.last[cand])
            c[pending[hit]] = cand[hit, first]
            pending = pending[~hit]
            tries = 16
        return np.stack([a, b, c], axis=1)


def _sorted_search(cum: np.ndarray, q: np.ndarray) -> np.ndarray:
    """searchsorted(cum, q, side="right"), faster on a large ``cum`` by looking
    the queries up in increasing order (NumPy then narrows each search)."""
    order = np.argsort(q)
    out = np.empty_like(order)
    out[order] = np.searchsorted(cum, q[order], side="right")
    return out


_SAMPLERS: dict[bytes | None, _GroupSampler] = {}


def _group_sampler(last: np.ndarray | None = None) -> _GroupSampler:
    key = None if last is None else np.packbits(last).tobytes()
    if key not in _SAMPLERS:
        _SAMPLERS[key] = _GroupSampler(last)
    return _SAMPLERS[key]


def sample_rect_groups(
    rng: np.random.Generator,
    m: int,
    k: int,
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    last: np.ndarray | None = None,
) -> np.ndarray:
    """(m, k) indices into :data:`RECTS`, k = 2 or 3: per row, k i.i.d. uniform
    admissible rectangles conditioned on being pairwise disjoint, on the last
    one being in ``last`` ((R,) bool, optional) and on ``accept`` - the
    reference's ``rec_coo(k, prevent_overlap=True)`` followed by the task's own
    redraw condition.

    ``last`` is handled exactly by the sampler (one sampler is built and kept
    per distinct mask). ``accept(cand, rows)`` gets proposed groups (p, k) for
    the still-pending output rows ``rows`` (p,) and returns (p,) bool; through
    ``rows`` it can read per-row task parameters. Rejected rows get a fresh
    group.
    """
    sampler = _group_sampler(last)
    out = np.empty((m, k), dtype=np.int64)
    pending = np.arange(m)
    while pending.size:
        cand = sampler(rng, pending.size, k)
        if accept is None:
            out[pending] = cand
            break
        ok = accept(cand, pending)
        out[pending[ok]] = cand[ok]
        pending = pending[~ok]
    return out


def resample_until(
    rng: np.random.Generator,
    m: int,
    attempt: Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, ...]],
) -> tuple[np.ndarray, ...]:
    """Whole-attempt rejection over a batch.

    ``attempt(rng, rows)`` builds one attempt for each of the given output rows
    and returns ``(ok, out1, out2, ...)`` with ok (p,) bool and outputs (p, ...).
    Rows whose attempt is rejected are attempted again (only those), until all
    are accepted. Returns the outputs for rows 0..m-1.
    """
    pending = np.arange(m)
    result: list[np.ndarray] | None = None
    while pending.size:
        ok, *outs = attempt(rng, pending)
        if result is None:
            result = [np.zeros((m,) + o.shape[1:], dtype=o.dtype) for o in outs]
        for r, o in zip(result, outs):
            r[pending[ok]] = o[ok]
        pending = pending[~ok]
    return tuple(result) if result is not None else ()


# ------------------------------------------------------- tasks in three steps


class TaskRule:
    """One task's generator, split into the three steps every task follows:

    1. ``params(rng, n) -> dict`` of per-quiz arrays (n, ...): the parameters
       shared by the quiz's two pairs (colours, direction...);
    2. ``layout(rng, p) -> dict`` of per-pair arrays (m, ...): the placement
       of one pair (rectangle indices, cells...), given per-pair parameters
       ``p`` (m rows);
    3. ``render(p, layout) -> (x, fx)``: the pair grids, (m, 100) uint8 each.

    Calling the rule runs the three on the 2n pairs of n quizzes (rows
    0..n-1 are the A pairs, n..2n-1 the B pairs) and returns (n, 4, 100)
    quizzes; with ``record`` (a dict) it also stores the draws there as
    ``record["params"]`` (n rows) and ``record["layout"]`` (2n rows). The
    random stream is the same with or without ``record``.

    ``describe(p, layout_a, layout_b)`` turns recorded draws into per-quiz
    columns (name -> array (n, ...) or list of n plain values) named by
    ``parameters`` (name -> one-line description). ``factors`` (name ->
    :class:`Factor`) are the parameters that can change while the B grid
    stays the same (used by :mod:`culture.world.pairs`).
    """

    def __init__(self, name, params, layout, render, describe, parameters, factors=None) -> None:
        self.name = name
        self.params, self.layout, self.render, self.describe = params, layout, render, describe
        self.parameters: dict[str, str] = parameters
        self.factors: dict[str, Factor] = dict(factors or {})

    def __call__(self, rng: np.random.Generator, n: int, record: dict | None = None) -> np.ndarray:
        p = self.params(rng, n)
        pairs = {k: both(v) for k, v in p.items()}
        lay = self.layout(rng, pairs)
        x, fx = self.render(pairs, lay)
        if record is not None:
            record["params"], record["layout"] = p, lay
        return assemble(x, fx)

    def __repr__(self) -> str:
        return f"TaskRule({self.name!r})"


class Factor:
    """A parameter of a task that a counterfactual pair varies with B fixed.

    ``alter(rng, p, layout_b) -> (feasible, p2, layout_b2)`` gets per-quiz
    parameters and the B pair's layout (n rows each) and returns new
    parameters and a B layout rendering the *same* B grid under ``p2``
    (with the rule of ``target``, a task name, when the factor swaps the
    task; None: the same task). ``feasible`` (n,) bool is False where this
    B admits no other value (the quiz is then drawn again).
    """

    def __init__(self, description: str, alter, target: str | None = None) -> None:
        self.description, self.alter, self.target = description, alter, target


def colors_param(k: int):
    """Parameter step of the tasks whose only shared parameters are k
    distinct colours: ``{"c": (n, k)}``."""

    def params(rng, n):
        return {"c": distinct_colors(rng, n, k)}

    return params


def layout_grids(p, lay):
    """Render step of the tasks whose layout step already paints the grids
    (``{"x", "fx"}``: the rejection tests need them)."""
    return lay["x"], lay["fx"]


def _same(rng, p, lb):
    """The ``example`` factor's alteration: nothing changes."""
    return np.ones(len(next(iter(p.values()))), bool), p, lb


#: the control factor every task has
EXAMPLE = Factor("a new example pair drawn with the same parameters: f(B) unchanged (the control)", _same)


def take(d: dict, rows) -> dict:
    """The given rows of every array of a dict of arrays."""
    return {k: v[rows] for k, v in d.items()}


def choose(rng: np.random.Generator, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For allowed (n, k) bool: per row a uniform index among its allowed
    columns, and whether the row has any (index 0 where not)."""
    score = np.where(allowed, rng.random(allowed.shape), -1.0)
    return score.argmax(axis=1), allowed.any(axis=1)


def other_color(rng: np.random.Generator, used: np.ndarray) -> np.ndarray:
    """(n,) uint8: per row a colour of 1..10 uniform among those not in
    ``used`` (n, k)."""
    allowed = np.ones((used.shape[0], N_PALETTE), bool)
    allowed[np.arange(used.shape[0])[:, None], used.astype(np.int64) - 1] = False
    return (choose(rng, allowed)[0] + 1).astype(np.uint8)


def swap_columns(a: np.ndarray, i, k: np.ndarray) -> np.ndarray:
    """A copy of ``a`` (n, ...) with, per row r, columns i and k[r] exchanged."""
    out = a.copy()
    rows = np.arange(a.shape[0])
    out[rows, i], out[rows, k] = a[rows, k], a[rows, i]
    return out


def plain_rows(columns: dict) -> list[dict]:
    """Columns (name -> array (n, ...) or list of n values) -> n dicts of
    plain Python values: ints, and tuples (of tuples) of ints."""
    names = list(columns)
    values = [_plain(c.tolist() if isinstance(c, np.ndarray) else list(c)) for c in columns.values()]
    return [dict(zip(names, row)) for row in zip(*values)]


def _plain(v):
    if isinstance(v, (list, tuple)):
        return tuple(_plain(u) for u in v)
    return int(v)
