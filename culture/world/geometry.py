"""Geometric tasks, batch-vectorised: scale, symbols, isometry.

scale     A quiz-wide offset (i, j), i, j uniform in 0..4. Each grid overlays
          three rectangles with corners in 0..5 (i1 < i2, j1 < j2, the smaller
          side at most 3, overlaps allowed) at that offset in X, and at twice
          the size from the origin in f(X); both grids carry an L mark of a
          second colour at (i, j), (i+1, j), (i, j+1).
symbols   Four 3 x 3 squares of distinct colours, top-left corners uniform in
          0..7 and pairwise Chebyshev distance > 3. Square 0 holds a 3-cell
          pointer (fifth colour) toward the quadrant, relative to the mean of
          the four corners, of a square q in 1..3 (q per grid); in f(X) the
          centre of square 0 takes square q's colour.
isometry  One of the 8 isometries of the square (rotation by k quarter turns,
          then optionally a flip of the row axis) about the grid centre, plus a
          shift in {-1, 0, 1}^2 (zero allowed), shared per quiz. X overlays
          three rectangles with inclusive corners in 1..8, one side at least 3
          cells, the other at most 4, colours drawn per grid and per attempt;
          attempts are kept when > 25 cells are filled and all three colours
          are visible. f(X) is X moved by the transformation.
"""

from __future__ import annotations

import numpy as np

from culture.world._common import (
    CELL_COL,
    EXAMPLE,
    Factor,
    TaskRule,
    choose,
    plain_rows,
    CELL_ROW,
    GRID,
    N_CELLS,
    box_mask,
    cell_mask,
    distinct_colors,
    first_accepted,
    paint,
    resample_until,
    set_cells,
)

# ------------------------------------------------------------------------ scale

HALF = GRID // 2

# every (i1, i2, j1, j2), exclusive ends in 0..5, with min(i2-i1, j2-j1) <= 3
_SMALL = np.array(
    [
        (i1, i2, j1, j2)
        for i1 in range(HALF + 1) for i2 in range(HALF + 1)
        for j1 in range(HALF + 1) for j2 in range(HALF + 1)
        if i1 < i2 and j1 < j2 and min(i2 - i1, j2 - j1) <= 3
    ],
    dtype=np.int64,
)
_OFFSETS = np.array([(i, j) for i in range(HALF) for j in range(HALF)], dtype=np.int64)
_oi, _oj = _OFFSETS[:, 0:1], _OFFSETS[:, 1:2]
# (25, S, 100): small rectangle s placed at offset o; (S, 100): doubled from the origin
_SMALL_AT = box_mask(_oi + _SMALL[:, 0], _oi + _SMALL[:, 1], _oj + _SMALL[:, 2], _oj + _SMALL[:, 3])
_SMALL_SCALED = box_mask(2 * _SMALL[:, 0], 2 * _SMALL[:, 1], 2 * _SMALL[:, 2], 2 * _SMALL[:, 3])
_SCALE_MARK = (
    cell_mask(_OFFSETS[:, 0], _OFFSETS[:, 1])
    | cell_mask(_OFFSETS[:, 0] + 1, _OFFSETS[:, 1])
    | cell_mask(_OFFSETS[:, 0], _OFFSETS[:, 1] + 1)
)


def _scale_params(rng, n):
    c = distinct_colors(rng, n, 2)
    return {"c": c, "offset": rng.integers(len(_OFFSETS), size=n)}


def _scale_layout(rng, p):
    return {"s": rng.integers(len(_SMALL), size=(len(p["c"]), 3))}


def _render_scale(p, lay):
    c, offset, s = p["c"], p["offset"], lay["s"]
    in_x = _SMALL_AT[offset[:, None], s].any(axis=1)
    in_fx = _SMALL_SCALED[s].any(axis=1)
    x = np.zeros((len(s), N_CELLS), np.uint8)
    fx = np.zeros((len(s), N_CELLS), np.uint8)
    paint(x, in_x, c[:, 0])
    paint(fx, in_fx, c[:, 0])
    paint(x, _SCALE_MARK[offset], c[:, 1])
    paint(fx, _SCALE_MARK[offset], c[:, 1])
    return x, fx


def _describe_scale(p, la, lb):
    return plain_rows({"offset": _OFFSETS[p["offset"]], "color": p["c"][:, 0], "mark": p["c"][:, 1]})


# offset and colours all show in B: no factor but the control
scale = TaskRule(
    "scale",
    _scale_params,
    _scale_layout,
    _render_scale,
    _describe_scale,
    {
        "offset": "(i, j): top-left cell of the 5 x 5 window of X that f(X) shows doubled (the mark's corner)",
        "color": "colour of the rectangles",
        "mark": "colour of the L mark at the offset",
    },
    {"example": EXAMPLE},
)


# ---------------------------------------------------------------------- symbols

SYMBOL = 3  # side of a square
NB_SYMBOLS = 4
_POS = GRID - SYMBOL + 1  # top-left coordinates 0..7
_SQUARE = box_mask(
    np.arange(_POS)[:, None], np.arange(_POS)[:, None] + SYMBOL,
    np.arange(_POS)[None, :], np.arange(_POS)[None, :] + SYMBOL,
).reshape(_POS * _POS, N_CELLS)


def _symbol_layout(rng: np.random.Generator, m: int, tries: int = 48):
    """Per row: corners i, j (m, 4) with pairwise Chebyshev distance > 3, and
    q in 1..3 with i[q], j[q] both different from the mean of i, j.

    The reference asserts the second condition and would stop with an error
    when it fails; here such draws are rejected and drawn again.
    """
    out_i = np.empty((m, NB_SYMBOLS), np.int64)
    out_j = np.empty((m, NB_SYMBOLS), np.int64)
    out_q = np.empty(m, np.int64)
    pending = np.arange(m)
    pairs = [(a, b) for a in range(NB_SYMBOLS) for b in range(a + 1, NB_SYMBOLS)]
    while pending.size:
        p = pending.size
        i = rng.integers(_POS, size=(p, tries, NB_SYMBOLS))
        j = rng.integers(_POS, size=(p, tries, NB_SYMBOLS))
        q = rng.integers(1, NB_SYMBOLS, size=(p, tries))
        ok = np.ones((p, tries), bool)
        for a, b in pairs:
            ok &= np.maximum(np.abs(i[..., a] - i[..., b]), np.abs(j[..., a] - j[..., b])) > SYMBOL
        iq = np.take_along_axis(i, q[..., None], axis=2)[..., 0]
        jq = np.take_along_axis(j, q[..., None], axis=2)[..., 0]
        ok &= (NB_SYMBOLS * iq != i.sum(axis=2)) & (NB_SYMBOLS * jq != j.sum(axis=2))
        hit, first = first_accepted(ok)
        rows = pending[hit]
        out_i[rows], out_j[rows], out_q[rows] = i[hit, first], j[hit, first], q[hit, first]
        pending = pending[~hit]
    return out_i, out_j, out_q


def _symbols_params(rng, n):
    return {"c": distinct_colors(rng, n, NB_SYMBOLS + 1)}


def _symbols_layout(rng, p):
    i, j, q = _symbol_layout(rng, len(p["c"]))
    return {"i": i, "j": j, "q": q}


def _render_symbols(p, lay):
    c, i, j, q = p["c"], lay["i"], lay["j"], lay["q"]
    m = len(q)
    rows = np.arange(m)
    x = np.zeros((m, N_CELLS), np.uint8)
    for k in range(NB_SYMBOLS):
        paint(x, _SQUARE[i[:, k] * _POS + j[:, k]], c[:, k])
    fx = x.copy()
    ci, cj = i[:, 0] + SYMBOL // 2, j[:, 0] + SYMBOL // 2  # centre of square 0
    set_cells(fx, ci * GRID + cj, c[rows, q])
    # pointer: sign of (corner of q - mean corner), in units of 1/4 to stay integer
    pi = ci + np.sign(NB_SYMBOLS * i[rows, q] - i.sum(axis=1))
    pj = cj + np.sign(NB_SYMBOLS * j[rows, q] - j.sum(axis=1))
    for cell in (pi * GRID + pj, ci * GRID + pj, pi * GRID + cj):
        set_cells(x, cell, c[:, NB_SYMBOLS])
        set_cells(fx, cell, c[:, NB_SYMBOLS])
    return x, fx


def _describe_symbols(p, la, lb):
    c = p["c"]
    rows = np.arange(len(c))
    return plain_rows({
        "colors": c[:, :NB_SYMBOLS], "pointer": c[:, NB_SYMBOLS],
        "target_a": c[rows, la["q"]], "target_b": c[rows, lb["q"]],
    })


# every colour shows in B and B's pointer names the target: only the control
symbols = TaskRule(
    "symbols",
    _symbols_params,
    _symbols_layout,
    _render_symbols,
    _describe_symbols,
    {
        "colors": "colours of the four squares, the pointing square first",
        "pointer": "colour of the 3-cell pointer inside the first square",
        "target_a": "colour of the square the pointer designates in A (painted at the centre in f(A))",
        "target_b": "the same in B",
    },
    {"example": EXAMPLE},
)


# --------------------------------------------------------------------- isometry


def _isometry_sources() -> np.ndarray:
    """(72, 100): for transformation t = (4 * flip + k) * 9 + shift and each
    destination cell, the source cell in X, or 100 (an always-empty pad cell).

    In centred coordinates (u, v) = (2i - 9, 2j - 9) the map is M @ (u, v) with
    M = [[0, 1], [-1, 0]]^k, its first row negated when flipped; then the shift
    (di, dj) is added in cell units.
    """
    rot = np.array([[0, 1], [-1, 0]])
    out = np.empty((8 * 9, N_CELLS), np.int64)
    for flip in (0, 1):
        for k in range(4):
            m = np.linalg.matrix_power(rot, k)
            if flip:
                m = m.copy()
                m[0, :] = -m[0, :]
            inv = np.round(np.linalg.inv(m)).astype(np.int64)
            for s, (di, dj) in enumerate((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)):
                u = 2 * (CELL_ROW - di) - (GRID - 1)
                v = 2 * (CELL_COL - dj) - (GRID - 1)
                si = (inv[0, 0] * u + inv[0, 1] * v + GRID - 1) // 2
                sj = (inv[1, 0] * u + inv[1, 1] * v + GRID - 1) // 2
                inside = (si >= 0) & (si < GRID) & (sj >= 0) & (sj < GRID)
                out[(4 * flip + k) * 9 + s] = np.where(inside, si * GRID + sj, N_CELLS)
    return out


ISOMETRY_SOURCES = _isometry_sources()

# inclusive corners in 1..8: i2 >= i1, j2 >= j1, max side difference >= 2, min <= 3
_ISO_RECTS = np.array(
    [
        (i1, i2 + 1, j1, j2 + 1)
        for i1 in range(1, GRID - 1) for i2 in range(1, GRID - 1)
        for j1 in range(1, GRID - 1) for j2 in range(1, GRID - 1)
        if i2 >= i1 and j2 >= j1 and max(i2 - i1, j2 - j1) >= 2 and min(i2 - i1, j2 - j1) <= 3
    ],
    dtype=np.int64,
)
_ISO_MASK = box_mask(*_ISO_RECTS.T)
NB_ISO_RECTS = 3


def _isometry_params(rng, n):
    return {"t": rng.integers(len(ISOMETRY_SOURCES), size=n)}


def _isometry_layout(rng, p):
    def attempt(rng, rows):
        m = rows.size
        c = distinct_colors(rng, m, NB_ISO_RECTS)
        r = rng.integers(len(_ISO_RECTS), size=(m, NB_ISO_RECTS))
        x = np.zeros((m, N_CELLS), np.uint8)
        for k in range(NB_ISO_RECTS):
            paint(x, _ISO_MASK[r[:, k]], c[:, k])
        filled = (x > 0).sum(axis=1)
        visible = np.ones(m, bool)
        for k in range(NB_ISO_RECTS):
            visible &= (x == c[:, k : k + 1]).any(axis=1)
        return (filled > N_CELLS // 4) & visible, x

    (x,) = resample_until(rng, len(p["t"]), attempt)
    return {"x": x}


def _render_isometry(p, lay):
    x = lay["x"]
    padded = np.concatenate([x, np.zeros((len(x), 1), np.uint8)], axis=1)
    return x, np.take_along_axis(padded, ISOMETRY_SOURCES[p["t"]], axis=1)


ISO_SHIFTS = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)])


def _describe_isometry(p, la, lb):
    t = p["t"]
    return plain_rows({"transform": t, "rotation": (t // 9) % 4, "flip": t // 36, "shift": ISO_SHIFTS[t % 9]})


def _other_transform(same_rotation: bool, same_shift: bool):
    """Alteration drawing another transformation, uniform among those that
    keep the rotation/flip and/or the shift."""

    def alter(rng, p, lb):
        t = p["t"]
        every = np.arange(len(ISOMETRY_SOURCES))
        allowed = every[None, :] != t[:, None]
        if same_rotation:
            allowed &= every[None, :] // 9 == (t // 9)[:, None]
        if same_shift:
            allowed &= every[None, :] % 9 == (t % 9)[:, None]
        t2, feasible = choose(rng, allowed)
        return feasible, {"t": t2}, lb

    return alter


isometry = TaskRule(
    "isometry",
    _isometry_params,
    _isometry_layout,
    _render_isometry,
    _describe_isometry,
    {
        "transform": "index 0..71 = (4 * flip + rotation) * 9 + shift index",
        "rotation": "quarter turns clockwise about the grid centre, 0..3 (applied first)",
        "flip": "1: then turned upside down (rows reversed)",
        "shift": "then moved by (di, dj), each in -1..1 (zero allowed; cells moved out are lost)",
    },
    {
        "transform": Factor("another of the 72 transformations", _other_transform(False, False)),
        "rotation": Factor("another rotation/flip, the same shift", _other_transform(False, True)),
        "shift": Factor("another shift, the same rotation/flip", _other_transform(True, False)),
        "example": EXAMPLE,
    },
)


GENERATORS = {"scale": scale, "symbols": symbols, "isometry": isometry}
