"""Rectangle tasks, batch-vectorised: the eight tasks of the published models.

Each grid holds three disjoint rectangles from the reference sampler (see
:mod:`culture.world._common`), drawn independently for (A, f(A)) and for
(B, f(B)); colours and any direction/polarity are drawn once per quiz and shared
by A and B. The transformation always concerns the *last* rectangle (or the
first, for replace_color and contact), as in the reference:

replace_color  four distinct colours; rectangle 0 takes colour 3 in f(X).
translate      one of the 8 unit moves; rectangle 2 is moved in f(X) (drawn on
               top). Placements where the moved rectangle would reach the
               bottom/right edge are rejected (the reference's strict bound).
grow           rectangle 2 is at least 4 x 4; direction 0: X shows it shrunk by
               one cell on every side and f(X) full size, direction 1 reversed.
half_fill      six colours; every rectangle k has colour 2k with a middle line
               of colour 2k+1 (one of four orientations, shared); in f(X) the
               line of rectangle 2 fills its half of the rectangle.
frame          f(X) keeps only the one-cell border of rectangle 2.
detect         f(X) marks the top-left corner L (3 cells) of rectangles 0 and 1
               with a fourth colour.
corners        X shows only two opposite corner Ls of each rectangle (diagonal
               shared per quiz); f(X) shows the full rectangles.
contact        at least one of rectangles 1, 2 shares an edge stretch with
               rectangle 0; in f(X) each such rectangle gets a border of
               rectangle 0's colour.
"""

from __future__ import annotations

import numpy as np

from culture.world._common import (
    N_CELLS,
    RECTS,
    assemble,
    both,
    distinct_colors,
    paint,
    sample_rect_groups,
)

NB_REC = 3
_AT_LEAST_4X4 = (RECTS.height >= 4) & (RECTS.width >= 4)


def _blank(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((m, N_CELLS), np.uint8), np.zeros((m, N_CELLS), np.uint8)


def _paint_full(x: np.ndarray, rects: np.ndarray, colors: np.ndarray, which=range(NB_REC)) -> None:
    for k in which:
        paint(x, RECTS.full[rects[:, k]], colors[:, k])


def replace_color(rng: np.random.Generator, n: int) -> np.ndarray:
    c = both(distinct_colors(rng, n, NB_REC + 1))
    r = sample_rect_groups(rng, 2 * n, NB_REC)
    x, fx = _blank(2 * n)
    _paint_full(x, r, c)
    _paint_full(fx, r, c, which=(1, 2))
    paint(fx, RECTS.full[r[:, 0]], c[:, NB_REC])
    return assemble(x, fx)


def translate(rng: np.random.Generator, n: int) -> np.ndarray:
    move = both(rng.integers(len(RECTS.shifts), size=n))
    c = both(distinct_colors(rng, n, NB_REC))

    def fits(cand, rows):
        return RECTS.shift_ok[move[rows], cand[:, NB_REC - 1]]

    r = sample_rect_groups(rng, 2 * n, NB_REC, accept=fits)
    x, fx = _blank(2 * n)
    _paint_full(x, r, c)
    _paint_full(fx, r, c, which=(0, 1))
    paint(fx, RECTS.shifted[move, r[:, 2]], c[:, 2])
    return assemble(x, fx)


def grow(rng: np.random.Generator, n: int) -> np.ndarray:
    c = both(distinct_colors(rng, n, NB_REC))
    shrunk_in_x = both(rng.integers(2, size=n) == 0)[:, None]
    r = sample_rect_groups(rng, 2 * n, NB_REC, last=_AT_LEAST_4X4)
    x, fx = _blank(2 * n)
    _paint_full(x, r, c, which=(0, 1))
    _paint_full(fx, r, c, which=(0, 1))
    full, inner = RECTS.full[r[:, 2]], RECTS.inner[r[:, 2]]
    paint(x, np.where(shrunk_in_x, inner, full), c[:, 2])
    paint(fx, np.where(shrunk_in_x, full, inner), c[:, 2])
    return assemble(x, fx)


def half_fill(rng: np.random.Generator, n: int) -> np.ndarray:
    c = both(distinct_colors(rng, n, 2 * NB_REC))
    d = both(rng.integers(4, size=n))
    r = sample_rect_groups(rng, 2 * n, NB_REC)
    x, fx = _blank(2 * n)
    for k in range(NB_REC):
        body, line = RECTS.full[r[:, k]], RECTS.half_line[d, r[:, k]]
        paint(x, body, c[:, 2 * k])
        paint(x, line, c[:, 2 * k + 1])
        paint(fx, body, c[:, 2 * k])
        paint(fx, RECTS.half_area[d, r[:, k]] if k == NB_REC - 1 else line, c[:, 2 * k + 1])
    return assemble(x, fx)


def frame(rng: np.random.Generator, n: int) -> np.ndarray:
    c = both(distinct_colors(rng, n, NB_REC))
    r = sample_rect_groups(rng, 2 * n, NB_REC)
    x, fx = _blank(2 * n)
    _paint_full(x, r, c)
    _paint_full(fx, r, c, which=(0, 1))
    paint(fx, RECTS.border[r[:, 2]], c[:, 2])
    return assemble(x, fx)


def detect(rng: np.random.Generator, n: int) -> np.ndarray:
    c = both(distinct_colors(rng, n, NB_REC + 1))
    r = sample_rect_groups(rng, 2 * n, NB_REC)
    x, fx = _blank(2 * n)
    _paint_full(x, r, c)
    _paint_full(fx, r, c)
    for k in (0, 1):
        paint(fx, RECTS.top_left_l[r[:, k]], c[:, NB_REC])
    return assemble(x, fx)


def corners(rng: np.random.Generator, n: int) -> np.ndarray:
    polarity = both(rng.integers(2, size=n))
    c = both(distinct_colors(rng, n, NB_REC))
    r = sample_rect_groups(rng, 2 * n, NB_REC)
    x, fx = _blank(2 * n)
    for k in range(NB_REC):
        paint(x, RECTS.corners[polarity, r[:, k]], c[:, k])
    _paint_full(fx, r, c)
    return assemble(x, fx)


def contact(rng: np.random.Generator, n: int) -> np.ndarray:
    c = both(distinct_colors(rng, n, NB_REC))

    def some_contact(cand, rows):
        return RECTS.touch[cand[:, 0], cand[:, 1]] | RECTS.touch[cand[:, 0], cand[:, 2]]

    r = sample_rect_groups(rng, 2 * n, NB_REC, accept=some_contact)
    x, fx = _blank(2 * n)
    _paint_full(x, r, c)
    _paint_full(fx, r, c)
    for k in (1, 2):
        touching = RECTS.touch[r[:, 0], r[:, k]][:, None]
        paint(fx, RECTS.border[r[:, k]] & touching, c[:, 0])
    return assemble(x, fx)


GENERATORS = {
    "replace_color": replace_color,
    "translate": translate,
    "grow": grow,
    "half_fill": half_fill,
    "frame": frame,
    "detect": detect,
    "corners": corners,
    "contact": contact,
}
