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

Every task is a :class:`~culture.world._common.TaskRule` (parameters, layout
``{"r": (m, 3) indices into RECTS}``, render), with the documented per-quiz
parameters and the factors a counterfactual pair can vary with B fixed.
Rectangles are reported as (i1, i2, j1, j2): rows i1..i2-1, columns j1..j2-1.
"""

from __future__ import annotations

import numpy as np

from culture.world._common import (
    GRID,
    N_CELLS,
    RECTS,
    EXAMPLE,
    Factor,
    TaskRule,
    choose,
    colors_param,
    distinct_colors,
    other_color,
    paint,
    plain_rows,
    sample_rect_groups,
    swap_columns,
)

NB_REC = 3
_AT_LEAST_4X4 = (RECTS.height >= 4) & (RECTS.width >= 4)
COORDS = np.stack([RECTS.i1, RECTS.i2, RECTS.j1, RECTS.j2], axis=1)  # (R, 4)


def _index_table() -> np.ndarray:
    t = np.full((GRID + 1,) * 4, -1, np.int64)
    t[RECTS.i1, RECTS.i2, RECTS.j1, RECTS.j2] = np.arange(RECTS.count)
    return t


_INDEX = _index_table()


def _index_of(i1, i2, j1, j2) -> np.ndarray:
    """Table index of the rectangles (i1, i2, j1, j2), -1 where not admissible."""
    inside = (i1 >= 0) & (j1 >= 0) & (i2 <= GRID) & (j2 <= GRID)
    clip = [np.clip(v, 0, GRID) for v in (i1, i2, j1, j2)]
    return np.where(inside, _INDEX[tuple(clip)], -1)


# the rectangle one cell larger / smaller on every side (-1: not admissible)
GROWN = _index_of(RECTS.i1 - 1, RECTS.i2 + 1, RECTS.j1 - 1, RECTS.j2 + 1)
SHRUNK = _index_of(RECTS.i1 + 1, RECTS.i2 - 1, RECTS.j1 + 1, RECTS.j2 - 1)


def _blank(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((m, N_CELLS), np.uint8), np.zeros((m, N_CELLS), np.uint8)


def _paint_full(x: np.ndarray, rects: np.ndarray, colors: np.ndarray, which=range(NB_REC)) -> None:
    for k in which:
        paint(x, RECTS.full[rects[:, k]], colors[:, k])


def _disjoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a, b table indices (-1 allowed: then False)."""
    return (a >= 0) & (b >= 0) & RECTS.disjoint[np.maximum(a, 0), np.maximum(b, 0)]


def _rect(layout: dict, k: int) -> np.ndarray:
    """(n, 4) coordinates of rectangle k of each pair."""
    return COORDS[layout["r"][:, k]]


# ------------------------------------------------------------- shared steps


def _three_rects(rng, p, accept=None, last=None):
    return {"r": sample_rect_groups(rng, len(p["c"]), NB_REC, accept=accept, last=last)}


def _swap_role(role: int, allowed=None, pairs: bool = False):
    """Alteration giving the role of rectangle ``role`` (the replaced, moved,
    framed... one) to one of the two others, chosen uniformly among those
    ``allowed(p, lb, k)`` accepts ((n,) bool per candidate k): its colour and
    its place in the layout are exchanged with the candidate's, so B renders
    the same. ``pairs``: colours come in pairs per rectangle (half_fill)."""
    others = [k for k in range(NB_REC) if k != role]

    def alter(rng, p, lb):
        n = len(lb["r"])
        ok = np.ones((n, len(others)), bool)
        if allowed is not None:
            ok = np.stack([allowed(p, lb, k) for k in others], axis=1)
        pick, feasible = choose(rng, ok)
        k = np.array(others)[pick]
        c = p["c"]
        if pairs:
            c = swap_columns(swap_columns(c, 2 * role, 2 * k), 2 * role + 1, 2 * k + 1)
        else:
            c = swap_columns(c, role, k)
        return feasible, {**p, "c": c}, {"r": swap_columns(lb["r"], role, k)}

    return alter


def _new_color(column: int):
    """Alteration drawing colour ``column`` anew among the colours the quiz
    does not use."""

    def alter(rng, p, lb):
        c = p["c"].copy()
        c[:, column] = other_color(rng, c)
        return np.ones(len(c), bool), {**p, "c": c}, lb

    return alter


def _permuted(order, extra_color: bool = False):
    """Alteration to another task with the same three rectangles: colour
    columns reordered by ``order``, rectangles by its first three entries, plus a colour the quiz does not use
    appended when ``extra_color``."""

    def alter(rng, p, lb):
        c = p["c"][:, order]
        if extra_color:
            c = np.concatenate([c, other_color(rng, p["c"])[:, None]], axis=1)
        return np.ones(len(c), bool), {"c": c}, {"r": lb["r"][:, order[:NB_REC]]}

    return alter


# ------------------------------------------------------------- replace_color


def _render_replace_color(p, lay):
    c, r = p["c"], lay["r"]
    x, fx = _blank(len(r))
    _paint_full(x, r, c)
    _paint_full(fx, r, c, which=(1, 2))
    paint(fx, RECTS.full[r[:, 0]], c[:, NB_REC])
    return x, fx


def _describe_replace_color(p, la, lb):
    c = p["c"]
    return plain_rows({"src": c[:, 0], "dst": c[:, 3], "others": c[:, 1:3], "rect_a": _rect(la, 0), "rect_b": _rect(lb, 0)})


replace_color = TaskRule(
    "replace_color",
    colors_param(NB_REC + 1),
    _three_rects,
    _render_replace_color,
    _describe_replace_color,
    {
        "src": "colour of the rectangle that is recoloured (as in X)",
        "dst": "its colour in f(X) (used nowhere else in the quiz)",
        "others": "colours of the two rectangles left as they are",
        "rect_a": "the recoloured rectangle in A, (i1, i2, j1, j2) exclusive ends",
        "rect_b": "the recoloured rectangle in B",
    },
    {
        "dst": Factor("the new colour (another colour unused in the quiz)", _new_color(3)),
        "src": Factor("which rectangle is recoloured (the colour role moves to another rectangle of B)", _swap_role(0)),
        "task": Factor("frame: the rectangle of colour src is framed instead", _permuted([1, 2, 0]), "frame"),
        "example": EXAMPLE,
    },
)

# ----------------------------------------------------------------- translate


def _translate_params(rng, n):
    move = rng.integers(len(RECTS.shifts), size=n)
    return {"move": move, "c": distinct_colors(rng, n, NB_REC)}


def _translate_layout(rng, p):
    move = p["move"]

    def fits(cand, rows):
        return RECTS.shift_ok[move[rows], cand[:, NB_REC - 1]]

    return _three_rects(rng, p, accept=fits)


def _render_translate(p, lay):
    c, r, move = p["c"], lay["r"], p["move"]
    x, fx = _blank(len(r))
    _paint_full(x, r, c)
    _paint_full(fx, r, c, which=(0, 1))
    paint(fx, RECTS.shifted[move, r[:, 2]], c[:, 2])
    return x, fx


def _describe_translate(p, la, lb):
    c = p["c"]
    return plain_rows({
        "shift": p["move"], "direction": RECTS.shifts[p["move"]], "color": c[:, 2], "others": c[:, :2],
        "rect_a": _rect(la, 2), "rect_b": _rect(lb, 2),
    })


def _other_direction(rng, p, lb):
    r2 = lb["r"][:, 2]
    allowed = RECTS.shift_ok[:, r2].T & (np.arange(len(RECTS.shifts)) != p["move"][:, None])
    move, feasible = choose(rng, allowed)
    return feasible, {**p, "move": move}, lb


translate = TaskRule(
    "translate",
    _translate_params,
    _translate_layout,
    _render_translate,
    _describe_translate,
    {
        "shift": "index 0..7 of the unit move into RECTS.shifts",
        "direction": "the move (di, dj), each in -1..1, not both 0",
        "color": "colour of the moved rectangle",
        "others": "colours of the two rectangles that stay",
        "rect_a": "the moved rectangle in A before the move, (i1, i2, j1, j2)",
        "rect_b": "the moved rectangle in B before the move",
    },
    {
        "direction": Factor("the move (another unit move that keeps B's rectangle inside the bound)", _other_direction),
        "color": Factor(
            "which rectangle moves (another rectangle of B that the move keeps inside)",
            _swap_role(2, allowed=lambda p, lb, k: RECTS.shift_ok[p["move"], lb["r"][:, k]]),
        ),
        "task": Factor("frame: the rectangle that would move is framed instead", _permuted([0, 1, 2]), "frame"),
        "example": EXAMPLE,
    },
)

# ---------------------------------------------------------------------- grow


def _grow_params(rng, n):
    c = distinct_colors(rng, n, NB_REC)
    return {"c": c, "grow": (rng.integers(2, size=n) == 0).astype(np.int64)}


def _grow_layout(rng, p):
    return _three_rects(rng, p, last=_AT_LEAST_4X4)


def _render_grow(p, lay):
    c, r = p["c"], lay["r"]
    shrunk_in_x = p["grow"].astype(bool)[:, None]
    x, fx = _blank(len(r))
    _paint_full(x, r, c, which=(0, 1))
    _paint_full(fx, r, c, which=(0, 1))
    full, inner = RECTS.full[r[:, 2]], RECTS.inner[r[:, 2]]
    paint(x, np.where(shrunk_in_x, inner, full), c[:, 2])
    paint(fx, np.where(shrunk_in_x, full, inner), c[:, 2])
    return x, fx


def _describe_grow(p, la, lb):
    c = p["c"]
    return plain_rows({
        "color": c[:, 2], "grow": p["grow"], "others": c[:, :2], "rect_a": _rect(la, 2), "rect_b": _rect(lb, 2),
    })


def _flip_growth(rng, p, lb):
    """B's changing rectangle as shown in X stays; the layout rectangle becomes
    the one whose shrunk (grow) or full (shrink) form it is."""
    r = lb["r"]
    g = p["grow"]
    shrink_to = SHRUNK[r[:, 2]]  # grow -> shrink: X showed inner(R), now the full rectangle
    grow_to = GROWN[r[:, 2]]  # shrink -> grow: X showed R, now the inner of R grown
    new = np.where(g == 1, shrink_to, grow_to)
    feasible = np.where(
        g == 1,
        (shrink_to >= 0) & _AT_LEAST_4X4[np.maximum(shrink_to, 0)],
        _disjoint(grow_to, r[:, 0]) & _disjoint(grow_to, r[:, 1]),
    )
    r2 = r.copy()
    r2[:, 2] = np.where(feasible, new, r[:, 2])
    return feasible, {**p, "grow": 1 - g}, {"r": r2}


def _grow_other_rect(rng, p, lb):
    """Another rectangle of B changes size (same direction)."""
    r, g = lb["r"], p["grow"] == 1
    n = len(r)
    cand_r2, cand_rk, ok = [], [], []
    for k in (0, 1):
        j = 1 - k
        # grow: the new changing rectangle is r_k grown (X shows r_k), and
        # the old one becomes a plain rectangle as X showed it: inner(r2)
        grown_k, inner_2 = GROWN[r[:, k]], SHRUNK[r[:, 2]]
        ok_grow = (inner_2 >= 0) & _disjoint(grown_k, r[:, j]) & _disjoint(grown_k, inner_2)
        ok_shrink = _AT_LEAST_4X4[r[:, k]]
        cand_r2.append(np.where(g, grown_k, r[:, k]))
        cand_rk.append(np.where(g, inner_2, r[:, 2]))
        ok.append(np.where(g, ok_grow, ok_shrink))
    pick, feasible = choose(rng, np.stack(ok, axis=1))
    rows = np.arange(n)
    new_r2 = np.stack(cand_r2, axis=1)[rows, pick]
    new_rk = np.stack(cand_rk, axis=1)[rows, pick]
    r2 = r.copy()
    r2[rows, pick] = np.where(feasible, new_rk, r[rows, pick])
    r2[:, 2] = np.where(feasible, new_r2, r[:, 2])
    return feasible, {**p, "c": swap_columns(p["c"], 2, pick)}, {"r": r2}


def _grow_to_frame(rng, p, lb):
    r = lb["r"].copy()
    shown = np.where(p["grow"] == 1, SHRUNK[r[:, 2]], r[:, 2])  # rectangle 2 as X shows it
    feasible = shown >= 0
    r[:, 2] = np.where(feasible, shown, r[:, 2])
    return feasible, {"c": p["c"]}, {"r": r}


grow = TaskRule(
    "grow",
    _grow_params,
    _grow_layout,
    _render_grow,
    _describe_grow,
    {
        "color": "colour of the rectangle that changes size",
        "grow": "1: X shows it shrunk by one cell per side and f(X) full size (it grows); 0: the reverse",
        "others": "colours of the two rectangles that stay",
        "rect_a": "the changing rectangle in A at its larger size, (i1, i2, j1, j2)",
        "rect_b": "the changing rectangle in B at its larger size",
    },
    {
        "direction": Factor("grow or shrink (B's rectangle as shown must admit the other direction)", _flip_growth),
        "color": Factor("which rectangle changes size (another rectangle of B that admits it)", _grow_other_rect),
        "task": Factor("frame: the rectangle that would change size is framed as X shows it", _grow_to_frame, "frame"),
        "example": EXAMPLE,
    },
)

# ----------------------------------------------------------------- half_fill

HALF_FILL_DIRECTIONS = ("down", "up", "right", "left")


def _half_fill_params(rng, n):
    c = distinct_colors(rng, n, 2 * NB_REC)
    return {"c": c, "d": rng.integers(4, size=n)}


def _render_half_fill(p, lay):
    c, r, d = p["c"], lay["r"], p["d"]
    x, fx = _blank(len(r))
    for k in range(NB_REC):
        body, line = RECTS.full[r[:, k]], RECTS.half_line[d, r[:, k]]
        paint(x, body, c[:, 2 * k])
        paint(x, line, c[:, 2 * k + 1])
        paint(fx, body, c[:, 2 * k])
        paint(fx, RECTS.half_area[d, r[:, k]] if k == NB_REC - 1 else line, c[:, 2 * k + 1])
    return x, fx


def _describe_half_fill(p, la, lb):
    c = p["c"]
    return plain_rows({
        "direction": p["d"], "body": c[:, 4], "line": c[:, 5], "others": c[:, :4],
        "rect_a": _rect(la, 2), "rect_b": _rect(lb, 2),
    })


def _flip_half(rng, p, lb):
    """The opposite direction along the same axis, where every rectangle of B
    has its line in the same place both ways (odd side lengths)."""
    d, r = p["d"], lb["r"]
    d2 = d ^ 1
    feasible = np.ones(len(d), bool)
    for k in range(NB_REC):
        feasible &= (RECTS.half_line[d, r[:, k]] == RECTS.half_line[d2, r[:, k]]).all(axis=1)
    return feasible, {**p, "d": d2}, lb


half_fill = TaskRule(
    "half_fill",
    _half_fill_params,
    _three_rects,
    _render_half_fill,
    _describe_half_fill,
    {
        "direction": "0 down, 1 up (a row line), 2 right, 3 left (a column line): where the line fills",
        "body": "body colour of the rectangle whose half fills",
        "line": "colour of its line (and of the filled half)",
        "others": "body and line colours of the two other rectangles (body0, line0, body1, line1)",
        "rect_a": "the filling rectangle in A, (i1, i2, j1, j2)",
        "rect_b": "the filling rectangle in B",
    },
    {
        "rectangle": Factor("which rectangle's half fills (its colour pair moves to another rectangle of B)", _swap_role(2, pairs=True)),
        "direction": Factor("the opposite fill direction on the same axis (only where B's lines allow both)", _flip_half),
        "example": EXAMPLE,
    },
)

# --------------------------------------------------------------------- frame


def _render_frame(p, lay):
    c, r = p["c"], lay["r"]
    x, fx = _blank(len(r))
    _paint_full(x, r, c)
    _paint_full(fx, r, c, which=(0, 1))
    paint(fx, RECTS.border[r[:, 2]], c[:, 2])
    return x, fx


def _describe_frame(p, la, lb):
    c = p["c"]
    return plain_rows({"color": c[:, 2], "others": c[:, :2], "rect_a": _rect(la, 2), "rect_b": _rect(lb, 2)})


frame = TaskRule(
    "frame",
    colors_param(NB_REC),
    _three_rects,
    _render_frame,
    _describe_frame,
    {
        "color": "colour of the framed rectangle (f(X) keeps its one-cell border)",
        "others": "colours of the two rectangles left as they are",
        "rect_a": "the framed rectangle in A, (i1, i2, j1, j2)",
        "rect_b": "the framed rectangle in B",
    },
    {
        "color": Factor("which rectangle is framed (the colour role moves to another rectangle of B)", _swap_role(2)),
        "task": Factor(
            "replace_color: the rectangle that would be framed is recoloured (a colour unused in the quiz)",
            _permuted([2, 0, 1], extra_color=True), "replace_color",
        ),
        "example": EXAMPLE,
    },
)

# -------------------------------------------------------------------- detect


def _render_detect(p, lay):
    c, r = p["c"], lay["r"]
    x, fx = _blank(len(r))
    _paint_full(x, r, c)
    _paint_full(fx, r, c)
    for k in (0, 1):
        paint(fx, RECTS.top_left_l[r[:, k]], c[:, NB_REC])
    return x, fx


def _describe_detect(p, la, lb):
    c = p["c"]
    return plain_rows({
        "marker": c[:, 3], "marked": c[:, :2], "unmarked": c[:, 2],
        "rects_a": np.stack([_rect(la, 0), _rect(la, 1)], axis=1),
        "rects_b": np.stack([_rect(lb, 0), _rect(lb, 1)], axis=1),
    })


detect = TaskRule(
    "detect",
    colors_param(NB_REC + 1),
    _three_rects,
    _render_detect,
    _describe_detect,
    {
        "marker": "colour of the corner marks (used nowhere else in the quiz)",
        "marked": "colours of the two rectangles whose top-left corner is marked",
        "unmarked": "colour of the rectangle left unmarked",
        "rects_a": "the two marked rectangles in A, ((i1, i2, j1, j2), (i1, i2, j1, j2))",
        "rects_b": "the two marked rectangles in B",
    },
    {
        "marker": Factor("the mark colour (another colour unused in the quiz)", _new_color(3)),
        "unmarked": Factor("which rectangle stays unmarked (the colour role moves to another rectangle of B)", _swap_role(2)),
        "task": Factor(
            "replace_color: the first marked rectangle is recoloured with the mark colour",
            _permuted([0, 1, 2, 3]), "replace_color",
        ),
        "example": EXAMPLE,
    },
)

# ------------------------------------------------------------------- corners


def _corners_params(rng, n):
    polarity = rng.integers(2, size=n)
    return {"polarity": polarity, "c": distinct_colors(rng, n, NB_REC)}


def _render_corners(p, lay):
    c, r, polarity = p["c"], lay["r"], p["polarity"]
    x, fx = _blank(len(r))
    for k in range(NB_REC):
        paint(x, RECTS.corners[polarity, r[:, k]], c[:, k])
    _paint_full(fx, r, c)
    return x, fx


def _describe_corners(p, la, lb):
    return plain_rows({"polarity": p["polarity"], "colors": p["c"]})


corners = TaskRule(
    "corners",
    _corners_params,
    _three_rects,
    _render_corners,
    _describe_corners,
    {
        "polarity": "0: X shows the top-left and bottom-right corner Ls, 1: the other diagonal",
        "colors": "colours of the three rectangles",
    },
    # the polarity shows in B (the shape of its corner marks) and every
    # colour is in B: no rule parameter can change with B fixed
    {"example": EXAMPLE},
)

# ------------------------------------------------------------------- contact


def _some_contact(cand, rows):
    return RECTS.touch[cand[:, 0], cand[:, 1]] | RECTS.touch[cand[:, 0], cand[:, 2]]


def _contact_layout(rng, p):
    return _three_rects(rng, p, accept=_some_contact)


def _touching(r: np.ndarray) -> np.ndarray:
    """(n, 2) bool: rectangles 1, 2 touch rectangle 0."""
    return np.stack([RECTS.touch[r[:, 0], r[:, k]] for k in (1, 2)], axis=1)


def _render_contact(p, lay):
    c, r = p["c"], lay["r"]
    x, fx = _blank(len(r))
    _paint_full(x, r, c)
    _paint_full(fx, r, c)
    touching = _touching(r)
    for k in (1, 2):
        paint(fx, RECTS.border[r[:, k]] & touching[:, k - 1 : k], c[:, 0])
    return x, fx


def _describe_contact(p, la, lb):
    c = p["c"]

    def touched(lay):
        t = _touching(lay["r"])
        return [tuple(int(v) for v, hit in zip(row, h) if hit) for row, h in zip(c[:, 1:].tolist(), t)]

    return plain_rows({
        "color": c[:, 0], "others": c[:, 1:], "touched_a": touched(la), "touched_b": touched(lb),
        "rect_a": _rect(la, 0), "rect_b": _rect(lb, 0),
    })


def _touches_any(p, lb, k):
    r = lb["r"]
    return np.logical_or.reduce([RECTS.touch[r[:, k], r[:, j]] for j in range(NB_REC) if j != k])


contact = TaskRule(
    "contact",
    colors_param(NB_REC),
    _contact_layout,
    _render_contact,
    _describe_contact,
    {
        "color": "colour of the rectangle whose colour borders the rectangles touching it",
        "others": "colours of the two other rectangles",
        "touched_a": "colours of the rectangles that touch it in A (one or two)",
        "touched_b": "colours of the rectangles that touch it in B",
        "rect_a": "the touched-by rectangle in A, (i1, i2, j1, j2)",
        "rect_b": "the touched-by rectangle in B",
    },
    {
        "color": Factor("which rectangle paints its neighbours' borders (another rectangle of B touching one)", _swap_role(0, allowed=_touches_any)),
        "task": Factor("frame: the rectangle that would paint the borders is framed", _permuted([1, 2, 0]), "frame"),
        "example": EXAMPLE,
    },
)


RULES = {rule.name: rule for rule in (replace_color, translate, grow, half_fill, frame, detect, corners, contact)}
GENERATORS = RULES
