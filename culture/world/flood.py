"""Region tasks, batch-vectorised: path and fill.

Both need distances / reachability over the empty cells (4-neighbourhood). The
reference computes them per grid by relaxing a distance map until it stops
changing; here grids are row bitmasks and one breadth-first step (shifts and
ORs) runs on the whole batch at once: path takes the 19 steps that matter,
fill loops until no grid's region grows. These are the least batch-friendly
tasks (the number of steps is set by the most winding grid of the batch, and
path discards about two thirds of its attempts).

path  Two disjoint reference rectangles (colours 0, 1) and two empty end cells,
      uniform, at Manhattan distance > 2, whose shortest path around the
      rectangles is shorter than 20; otherwise the whole grid is drawn again.
      Both ends have colour 2 in X and f(X); in f(X) every cell lying on *some*
      shortest path between them takes colour 3.
fill  Three disjoint reference rectangles (colours 0..2) and a seed cell,
      uniform among the empty cells, of colour 3 in X. In f(X) the seed is
      empty and every empty cell reachable from it takes colour 3. With
      probability 1/2 per grid the draw is only kept when some empty cell is
      *not* reachable (the seed sits in an enclosed region); otherwise any draw
      is kept.
"""

from __future__ import annotations

import numpy as np

from culture.world._common import (
    EXAMPLE,
    GRID,
    Factor,
    TaskRule,
    colors_param,
    layout_grids,
    other_color,
    plain_rows,
    N_CELLS,
    RECTS,
    paint,
    resample_until,
    sample_rect_groups,
    set_cells,
)

PATH_MAX = 2 * GRID  # the path must be shorter than this

# Grids are handled here as row bitmasks: (m, 10) uint16, bit j of row i set
# when cell (i, j) is in the set. One neighbour expansion is then a handful of
# shifts and ORs on 10 numbers per grid instead of 100 cells.
_BIT = (1 << np.arange(GRID)).astype(np.uint16)


def to_bits(mask: np.ndarray) -> np.ndarray:
    """(m, 100) bool -> (m, 10) uint16 row bitmasks."""
    return (mask.reshape(-1, GRID, GRID) * _BIT).sum(axis=2, dtype=np.uint16)


def from_bits(bits: np.ndarray) -> np.ndarray:
    """(m, 10) uint16 row bitmasks -> (m, 100) bool."""
    return ((bits[:, :, None] & _BIT) != 0).reshape(-1, N_CELLS)


def cell_bits(cell: np.ndarray) -> np.ndarray:
    """(m, 10) bitmasks holding one cell per row of ``cell`` (m,)."""
    bits = np.zeros((cell.shape[0], GRID), np.uint16)
    bits[np.arange(cell.shape[0]), cell // GRID] = _BIT[cell % GRID]
    return bits


def expand(bits: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The cells of ``free`` that are in ``bits`` or 4-adjacent to it (cells
    shifted past column 9 are cut by ``free``, which has bits 0..9 only)."""
    out = bits | (bits << 1) | (bits >> 1)
    out[:, 1:] |= bits[:, :-1]
    out[:, :-1] |= bits[:, 1:]
    return out & free


def reachable(free: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(m, 10) bitmasks of the free cells connected to ``source`` (m,) cells,
    through the ``free`` bitmasks (m, 10)."""
    r = cell_bits(source) & free
    while True:
        grown = expand(r, free)
        if np.array_equal(grown, r):
            return r
        r = grown


def layers(free: np.ndarray, source: np.ndarray, count: int) -> np.ndarray:
    """(m, count, 10) bitmasks: layer k holds the free cells at shortest-path
    distance exactly k from ``source`` (breadth-first search, all rows at once)."""
    out = np.zeros((free.shape[0], count, GRID), np.uint16)
    front = seen = cell_bits(source)
    out[:, 0] = front
    for k in range(1, count):
        front = expand(front, free) & ~seen
        seen = seen | front
        out[:, k] = front
    return out


def _path_layout(rng, p):
    colors = p["c"]

    def attempt(rng, rows):
        m = rows.size
        c = colors[rows]
        r = sample_rect_groups(rng, m, 2)
        x = np.zeros((m, N_CELLS), np.uint8)
        paint(x, RECTS.full[r[:, 0]], c[:, 0])
        paint(x, RECTS.full[r[:, 1]], c[:, 1])
        a = rng.integers(GRID, size=(m, 2))  # rows of the two ends
        b = rng.integers(GRID, size=(m, 2))  # columns
        e1, e2 = a[:, 0] * GRID + b[:, 0], a[:, 1] * GRID + b[:, 1]
        pr = np.arange(m)
        ok = (np.abs(a[:, 0] - a[:, 1]) + np.abs(b[:, 0] - b[:, 1]) > 2) & (x[pr, e1] == 0) & (x[pr, e2] == 0)
        fx = x.copy()
        s = np.nonzero(ok)[0]
        if s.size:
            free = to_bits(x[s] == 0)
            # layers from each end up to PATH_MAX - 1: the length D is the
            # layer of e2 holding e1 (none: too far or cut off), and the cells
            # on some shortest path are those at distance k from e1 and D - k
            # from e2 for some k
            from1 = layers(free, e1[s], PATH_MAX)
            from2 = layers(free, e2[s], PATH_MAX)
            at_e1 = (from2 & cell_bits(e1[s])[:, None, :]).any(axis=2)
            found = at_e1.any(axis=1)
            length = at_e1.argmax(axis=1)
            ok[s] &= found
            k = np.arange(PATH_MAX)
            back = np.clip(length[:, None] - k, 0, None)  # D - k
            partner = np.take_along_axis(from2, back[:, :, None], axis=1)
            partner[k[None, :] > length[:, None]] = 0
            on_path = np.bitwise_or.reduce(from1 & partner, axis=1)
            sub = fx[s]
            paint(sub, from_bits(on_path) & found[:, None], c[s, 3])
            fx[s] = sub
        for e in (e1, e2):
            set_cells(x, e, c[:, 2])
            set_cells(fx, e, c[:, 2])
        return ok, x, fx

    x, fx = resample_until(rng, len(colors), attempt)
    return {"x": x, "fx": fx}


def _describe_path(p, la, lb):
    c = p["c"]
    return plain_rows({"rects": c[:, :2], "ends": c[:, 2], "path": c[:, 3]})


def _new_path_color(rng, p, lb):
    c = p["c"].copy()
    c[:, 3] = other_color(rng, c)
    fx = np.where(lb["fx"] == p["c"][:, 3:4], c[:, 3:4], lb["fx"])
    return np.ones(len(c), bool), {"c": c}, {"x": lb["x"], "fx": fx}


path = TaskRule(
    "path",
    colors_param(4),
    _path_layout,
    layout_grids,
    _describe_path,
    {
        "rects": "colours of the two rectangles",
        "ends": "colour of the two end cells",
        "path": "colour of the shortest-path cells in f(X) (not in X)",
    },
    {
        "color": Factor("the path colour (another colour unused in the quiz)", _new_path_color),
        "example": EXAMPLE,
    },
)


def _fill_layout(rng, p):
    colors = p["c"]
    accept_any = rng.random(len(colors)) < 0.5  # drawn once per grid, before its attempts

    def attempt(rng, rows):
        m = rows.size
        c = colors[rows]
        r = sample_rect_groups(rng, m, 3)
        x = np.zeros((m, N_CELLS), np.uint8)
        for k in range(3):
            paint(x, RECTS.full[r[:, k]], c[:, k])
        free = x == 0
        # seed uniform among the empty cells (the reference redraws until empty)
        score = np.where(free, rng.random((m, N_CELLS)), -1.0)
        seed = score.argmax(axis=1)
        has_room = free.any(axis=1)  # three rectangles can tile the grid: redraw then
        reach = from_bits(reachable(to_bits(free), seed))
        fx = x.copy()
        paint(fx, reach, c[:, 3])
        set_cells(x, seed, c[:, 3])
        set_cells(fx, seed, np.zeros(m, np.uint8))
        enclosed = (free & ~reach).any(axis=1)
        return has_room & (accept_any[rows] | enclosed), x, fx

    x, fx = resample_until(rng, len(colors), attempt)
    return {"x": x, "fx": fx}


def _describe_fill(p, la, lb):
    return plain_rows({"rects": p["c"][:, :3], "color": p["c"][:, 3]})


# the seed shows the fill colour in B: only the control
fill = TaskRule(
    "fill",
    colors_param(4),
    _fill_layout,
    layout_grids,
    _describe_fill,
    {"rects": "colours of the three rectangles", "color": "colour of the seed cell in X and of its region in f(X)"},
    {"example": EXAMPLE},
)


GENERATORS = {"path": path, "fill": fill}
