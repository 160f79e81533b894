"""Motion tasks, batch-vectorised: trajectory and bounce.

trajectory  Per grid a step (di, dj) in -3..3 (not both 0) and a start cell such
            that start + 2 (di, dj) is still inside; all admissible
            (step, start) equally likely. X shows the start (colour 0) and
            start + step (colour 1); f(X) keeps the start and continues colour 1
            along start + k step, k >= 1, up to the edge. Colours are per quiz.
bounce      Per grid: ten uniform cells (with repetition) get obstacle colour 0,
            a uniform start cell colour 1, and a uniform unit direction. A ball
            moves at most 10 steps: straight on when the next cell is free,
            otherwise turning to (-dj, di) if that cell is free, else to
            (dj, -di), else it stops. Cells are free when inside the grid and
            empty in f(X) (obstacles, start and trail block). X shows the
            obstacles, the start and end cells (colour 1) and the first step
            (colour 2); f(X) shows the obstacles, start, first step and end in
            colour 1 and the rest of the trail in colour 2. A grid is redrawn
            until the ball made at least 3 moves (the reference's ``l > 3``).
            The reference's random flip after a turn tests the cell straight
            ahead, known to be blocked at that point, so it never happens and
            is left out.

Bounce is inherently sequential *within* a grid (each move depends on the
trail so far) but not across grids: the ten steps run as ten vectorised steps
over the whole batch, so it vectorises well enough.
"""

from __future__ import annotations

import numpy as np

from culture.world._common import (
    EXAMPLE,
    GRID,
    N_CELLS,
    TaskRule,
    colors_param,
    layout_grids,
    plain_rows,
    paint,
    resample_until,
    set_cells,
)

# ------------------------------------------------------------------- trajectory

_REACH = 3


def _trajectories():
    starts, seconds, rays = [], [], []
    for di in range(-_REACH, _REACH + 1):
        for dj in range(-_REACH, _REACH + 1):
            if di == 0 and dj == 0:
                continue
            for i in range(GRID):
                for j in range(GRID):
                    if not (0 <= i + 2 * di < GRID and 0 <= j + 2 * dj < GRID):
                        continue
                    ray = np.zeros(N_CELLS, bool)
                    k = 1
                    while 0 <= i + k * di < GRID and 0 <= j + k * dj < GRID:
                        ray[(i + k * di) * GRID + j + k * dj] = True
                        k += 1
                    starts.append(i * GRID + j)
                    seconds.append((i + di) * GRID + j + dj)
                    rays.append(ray)
    return np.array(starts), np.array(seconds), np.array(rays)


_T_START, _T_SECOND, _T_RAY = _trajectories()


def _trajectory_layout(rng, p):
    return {"t": rng.integers(len(_T_START), size=len(p["c"]))}


def _render_trajectory(p, lay):
    c, t = p["c"], lay["t"]
    x = np.zeros((len(t), N_CELLS), np.uint8)
    fx = np.zeros((len(t), N_CELLS), np.uint8)
    set_cells(x, _T_START[t], c[:, 0])
    set_cells(x, _T_SECOND[t], c[:, 1])
    paint(fx, _T_RAY[t], c[:, 1])
    set_cells(fx, _T_START[t], c[:, 0])
    return x, fx


def _step(lay):
    start, second = _T_START[lay["t"]], _T_SECOND[lay["t"]]
    return np.stack([second // GRID - start // GRID, second % GRID - start % GRID], axis=1)


def _start(lay):
    start = _T_START[lay["t"]]
    return np.stack([start // GRID, start % GRID], axis=1)


def _describe_trajectory(p, la, lb):
    c = p["c"]
    return plain_rows({
        "start_color": c[:, 0], "ray_color": c[:, 1],
        "start_a": _start(la), "step_a": _step(la), "start_b": _start(lb), "step_b": _step(lb),
    })


# both colours show in B and the step is per grid: only the control
trajectory = TaskRule(
    "trajectory",
    colors_param(2),
    _trajectory_layout,
    _render_trajectory,
    _describe_trajectory,
    {
        "start_color": "colour of the start cell",
        "ray_color": "colour of the second cell and of the ray in f(X)",
        "start_a": "start cell (i, j) in A",
        "step_a": "step (di, dj) in A, each in -3..3",
        "start_b": "start cell in B",
        "step_b": "step in B",
    },
    {"example": EXAMPLE},
)


# ----------------------------------------------------------------------- bounce

NB_OBSTACLES = N_CELLS // 10
MAX_MOVES = GRID
_UNIT = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])


def _bounce_layout(rng, p):
    colors = p["c"]

    def attempt(rng, rows):
        p = rows.size
        pr = np.arange(p)
        c = colors[rows]
        x = np.zeros((p, N_CELLS), np.uint8)
        x[pr[:, None], rng.integers(N_CELLS, size=(p, NB_OBSTACLES))] = c[:, 0:1]
        u = _UNIT[rng.integers(4, size=p)]
        di, dj = u[:, 0].copy(), u[:, 1].copy()
        start = rng.integers(N_CELLS, size=p)
        set_cells(x, start, c[:, 1])
        fx = x.copy()
        # blocked cells of f(X), with a blocked frame around the grid
        blocked = np.ones((p, GRID + 2, GRID + 2), bool)
        blocked[:, 1:-1, 1:-1] = (fx != 0).reshape(p, GRID, GRID)
        i, j = start // GRID, start % GRID
        moving = np.ones(p, bool)
        count = np.zeros(p, np.int64)  # the reference's l
        for step in range(1, MAX_MOVES + 1):
            count += moving
            ahead = ~blocked[pr, 1 + i + di, 1 + j + dj]
            left = ~blocked[pr, 1 + i - dj, 1 + j + di]
            right = ~blocked[pr, 1 + i + dj, 1 + j - di]
            go = moving & (ahead | left | right)
            new_di = np.where(ahead, di, np.where(left, -dj, dj))
            new_dj = np.where(ahead, dj, np.where(left, di, -di))
            di, dj = np.where(go, new_di, di), np.where(go, new_dj, dj)
            i, j = i + go * di, j + go * dj
            blocked[pr[go], 1 + i[go], 1 + j[go]] = True
            here = (i * GRID + j)[go]
            if step == 1:
                x[pr[go], here] = c[go, 2]
                fx[pr[go], here] = c[go, 1]
            else:
                fx[pr[go], here] = c[go, 2]
            moving = go
        end = i * GRID + j
        set_cells(x, end, c[:, 1])
        set_cells(fx, end, c[:, 1])
        return count > 3, x, fx

    x, fx = resample_until(rng, len(colors), attempt)
    return {"x": x, "fx": fx}


def _describe_bounce(p, la, lb):
    c = p["c"]
    return plain_rows({"obstacle": c[:, 0], "ball": c[:, 1], "trail": c[:, 2]})


# every colour shows in B: only the control
bounce = TaskRule(
    "bounce",
    colors_param(3),
    _bounce_layout,
    layout_grids,
    _describe_bounce,
    {
        "obstacle": "colour of the obstacles",
        "ball": "colour of the start and end cells (and of the first step in f(X))",
        "trail": "colour of the first step in X and of the rest of the trail in f(X)",
    },
    {"example": EXAMPLE},
)


GENERATORS = {"trajectory": trajectory, "bounce": bounce}
