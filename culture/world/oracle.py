"""Per-quiz rule oracle: which world task's rule maps X to f(X).

Each checker reads one (X, f(X)) pair -- uint8/int (10, 10) numpy grids --
and returns the parameters the two pairs of a quiz must share (colours,
direction...), or raises :class:`RuleMismatch` when f(X) does not follow
the rule from X. The checkers are written from the rules of the reference
generator (REFERENCE section 2), independently of the batch generator in
this package, so they can test it.

    >>> from culture.world.oracle import matching_tasks, follows_rule
    >>> follows_rule("frame", grids)          # grids (4, 10, 10): A, f(A), B, f(B)
    >>> matching_tasks(grids)                 # every task whose rule explains the quiz
"""

from __future__ import annotations

from collections import deque

import numpy as np


class RuleMismatch(Exception):
    """f(X) does not follow the rule from X (or A and B disagree on its parameters)."""


def _require(condition, message: str = "rule not followed") -> None:
    if not condition:
        raise RuleMismatch(message)


# ----------------------------------------------------------------- helpers


def bbox(mask):
    """(i1, i2, j1, j2) with exclusive ends of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    _require(rows.size, "empty mask")
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def box(i1, i2, j1, j2):
    m = np.zeros((10, 10), bool)
    m[max(i1, 0) : max(i2, 0), max(j1, 0) : max(j2, 0)] = True
    return m


def full_rect(mask):
    """The mask's bounding box, asserting the mask fills it."""
    b = bbox(mask)
    _require((mask == box(*b)).all(), "not a filled rectangle")
    return b


def colours(g):
    return sorted(set(np.unique(g).tolist()) - {0})


def single(values):
    v = np.unique(values)
    _require(v.size == 1, f"expected one value, got {v}")
    return int(v[0])


def distances(free, src):
    d = np.full((10, 10), 10**6)
    d[src] = 0
    todo = deque([src])
    while todo:
        i, j = todo.popleft()
        for u, v in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= u < 10 and 0 <= v < 10 and free[u, v] and d[u, v] > d[i, j] + 1:
                d[u, v] = d[i, j] + 1
                todo.append((u, v))
    return d


# ------------------------------------------------------------ rule checkers


def check_replace_color(x, fx):
    _require(len(colours(x)) == 3)
    for c in colours(x):
        full_rect(x == c)
    diff = x != fx
    src, dst = single(x[diff]), single(fx[diff])
    _require(dst not in colours(x) and dst != 0)
    _require((diff == (x == src)).all())  # the whole rectangle, nothing else
    return src, dst


def check_translate(x, fx):
    _require(len(colours(x)) == 3)
    found = []
    for c in colours(x):
        full_rect(x == c)
        a, b = bbox(x == c), bbox(fx == c)
        v = (b[0] - a[0], b[2] - a[2])
        if v == (0, 0) or max(abs(v[0]), abs(v[1])) > 1:
            continue
        expect = np.where(x == c, 0, x)
        expect[box(a[0] + v[0], a[1] + v[0], a[2] + v[1], a[3] + v[1])] = c
        if (expect == fx).all():
            found.append((c, v))
            # the reference's strict bound: the moved rectangle stays off the
            # bottom and right edges
            _require(b[1] < 10 and b[3] < 10)
    _require(len(found) == 1)
    return found[0]


def check_grow(x, fx):
    diff = x != fx
    c = single(np.concatenate([x[diff], fx[diff]])[np.concatenate([x[diff], fx[diff]]) != 0])
    a, b = full_rect(x == c), full_rect(fx == c)
    _require((diff == ((x == c) ^ (fx == c))).all())
    grown = (b[0] + 1, b[1] - 1, b[2] + 1, b[3] - 1) == a
    shrunk = (a[0] + 1, a[1] - 1, a[2] + 1, a[3] - 1) == b
    _require(grown != shrunk)
    return c, grown


def check_half_fill(x, fx):
    _require(len(colours(x)) == 6)
    diff = x != fx
    a, b = single(x[diff]), single(fx[diff])  # body colour -> line colour
    line = full_rect(x == b)
    host = full_rect((x == a) | (x == b))
    half = full_rect(fx == b)
    hi1, hi2, hj1, hj2 = host
    if line[1] - line[0] == 1 and (line[2], line[3]) == (hj1, hj2):  # a row
        r = line[0]
        if half == (r, hi2, hj1, hj2) and r == (hi1 + hi2) // 2:
            return a, b, "down"
        _require(half == (hi1, r + 1, hj1, hj2) and r == (hi1 + hi2 - 1) // 2)
        return a, b, "up"
    _require(line[3] - line[2] == 1 and (line[0], line[1]) == (hi1, hi2))  # a column
    k = line[2]
    if half == (hi1, hi2, k, hj2) and k == (hj1 + hj2) // 2:
        return a, b, "right"
    _require(half == (hi1, hi2, hj1, k + 1) and k == (hj1 + hj2 - 1) // 2)
    return a, b, "left"


def check_frame(x, fx):
    diff = x != fx
    c = single(x[diff])
    _require((fx[diff] == 0).all())
    i1, i2, j1, j2 = full_rect(x == c)
    _require((diff == box(i1 + 1, i2 - 1, j1 + 1, j2 - 1)).all() and diff.any())
    return c


def check_detect(x, fx):
    diff = x != fx
    m = single(fx[diff])
    _require(m not in colours(x) and len(colours(x)) == 3)
    unmarked = []
    for c in colours(x):
        i1, i2, j1, j2 = full_rect(x == c)
        changed = diff & (x == c)
        mark = box(i1, i1 + 2, j1, j1 + 1) | box(i1, i1 + 1, j1, j1 + 2)
        if changed.any():
            _require((changed == mark).all())
        else:
            unmarked.append(c)
    _require(len(unmarked) == 1)
    return m, unmarked[0]


def check_scale(x, fx):
    found = set()
    for m in colours(x):
        for i in range(5):
            for j in range(5):
                cells = [(i, j), (i + 1, j), (i, j + 1)]
                if not all(x[c] == m and fx[c] == m for c in cells):
                    continue
                others = [c for c in colours(x) + colours(fx) if c != m]
                if len(set(others)) != 1:
                    continue
                r = others[0]
                rows, cols = np.nonzero(x == r)
                if not ((rows >= i) & (rows < i + 5) & (cols >= j) & (cols < j + 5)).all():
                    continue
                ok = True
                for p in range(10):
                    for q in range(10):
                        if (p, q) in cells:
                            continue
                        src = (i + p // 2, j + q // 2)
                        if src in cells:  # hidden under the mark in X
                            ok &= fx[p, q] in (0, r)
                        else:
                            ok &= (fx[p, q] == r) == (x[src] == r) and fx[p, q] in (0, r)
                if ok:
                    found.add((m, r, i, j))
    _require(found, "no (mark, offset) explains f(X)")
    return frozenset(found)


def check_symbols(x, fx):
    diff = np.argwhere(x != fx)
    _require(len(diff) == 1)
    centre = tuple(diff[0])
    counts = {c: int((x == c).sum()) for c in colours(x)}
    _require(sorted(counts.values()) == [3, 6, 9, 9, 9])
    pointer = next(c for c, k in counts.items() if k == 3)
    body = next(c for c, k in counts.items() if k == 6)
    tops = {}
    for c, k in counts.items():
        if k == 9:
            tops[c] = full_rect(x == c)[0::2]
    b = bbox((x == body) | (x == pointer))
    _require((b[1] - b[0], b[3] - b[2]) == (3, 3) and centre == (b[0] + 1, b[2] + 1))
    _require(x[centre] == body)
    target = int(fx[centre])
    _require(target in tops)
    all_tops = [b[0::2]] + list(tops.values())
    si = np.sign(4 * tops[target][0] - sum(t[0] for t in all_tops))
    sj = np.sign(4 * tops[target][1] - sum(t[1] for t in all_tops))
    _require(si != 0 and sj != 0)
    ci, cj = centre
    expect = {(ci + si, cj + sj), (ci, cj + sj), (ci + si, cj)}
    _require({tuple(p) for p in np.argwhere(x == pointer)} == expect)
    return body, pointer


def check_corners(x, fx):
    _require(colours(x) == colours(fx) and len(colours(x)) == 3)
    polarity = set()
    for c in colours(x):
        i1, i2, j1, j2 = full_rect(fx == c)
        tl = box(i1, i1 + 2, j1, j1 + 1) | box(i1, i1 + 1, j1, j1 + 2)
        br = box(i2 - 2, i2, j2 - 1, j2) | box(i2 - 1, i2, j2 - 2, j2)
        tr = box(i1, i1 + 2, j2 - 1, j2) | box(i1, i1 + 1, j2 - 2, j2)
        bl = box(i2 - 2, i2, j1, j1 + 1) | box(i2 - 1, i2, j1, j1 + 2)
        if ((x == c) == (tl | br)).all():
            polarity.add(0)
        else:
            _require(((x == c) == (tr | bl)).all())
            polarity.add(1)
    _require(len(polarity) == 1)
    return polarity.pop()


def share_edge(a, b):
    ai1, ai2, aj1, aj2 = a
    bi1, bi2, bj1, bj2 = b
    rows_meet = ai2 == bi1 or bi2 == ai1
    cols_meet = aj2 == bj1 or bj2 == aj1
    rows_overlap = max(ai1, bi1) < min(ai2, bi2)
    cols_overlap = max(aj1, bj1) < min(aj2, bj2)
    return (rows_meet and cols_overlap) or (cols_meet and rows_overlap)


def check_contact(x, fx):
    _require(len(colours(x)) == 3)
    rects = {c: full_rect(x == c) for c in colours(x)}
    diff = x != fx
    c0 = single(fx[diff])
    expect = x.copy()
    touched = 0
    for c, r in rects.items():
        if c != c0 and share_edge(rects[c0], r):
            touched += 1
            i1, i2, j1, j2 = r
            expect[box(*r) & ~box(i1 + 1, i2 - 1, j1 + 1, j2 - 1)] = c0
    _require(touched >= 1 and (expect == fx).all())
    return c0


def check_path(x, fx):
    counts = {c: int((x == c).sum()) for c in colours(x)}
    ends = [c for c, k in counts.items() if k == 2]
    _require(len(ends) == 1 and len(counts) == 3)
    e = ends[0]
    e1, e2 = (tuple(p) for p in np.argwhere(x == e))
    _require(abs(e1[0] - e2[0]) + abs(e1[1] - e2[1]) > 2)
    free = (x == 0) | (x == e)
    d1, d2 = distances(free, e1), distances(free, e2)
    length = d1[e2]
    _require(length < 20)
    new = colours(fx)
    (p,) = set(new) - set(colours(x))
    expect = x.copy()
    expect[(d1 + d2 == length) & (x == 0)] = p
    _require((expect == fx).all())
    return e, p


def check_fill(x, fx):
    counts = {c: int((x == c).sum()) for c in colours(x)}
    seeds = [c for c, k in counts.items() if k == 1]
    _require(len(seeds) == 1 and len(counts) == 4)
    s = seeds[0]
    seed = tuple(np.argwhere(x == s)[0])
    free = (x == 0) | (x == s)
    reach = distances(free, seed) < 10**6
    expect = np.where(reach, s, x)
    expect[seed] = 0
    _require((expect == fx).all())
    return s


def isometries(x, fx):
    """Every (k, flip, di, dj) mapping X onto f(X): rotation by k quarter turns
    and optional flip about the centre, then a shift with empty fill."""
    found = set()
    for flip in (False, True):
        for k in range(4):
            y = np.rot90(np.flipud(x) if flip else x, k)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    z = np.zeros_like(y)
                    z[max(di, 0) : 10 + min(di, 0), max(dj, 0) : 10 + min(dj, 0)] = y[
                        max(-di, 0) : 10 - max(di, 0), max(-dj, 0) : 10 - max(dj, 0)
                    ]
                    if (z == fx).all():
                        found.add((flip, k, di, dj))
    return found


def check_isometry(x, fx):
    _require(len(colours(x)) == 3 and (x > 0).sum() > 25)
    _require(not x[0].any() and not x[9].any() and not x[:, 0].any() and not x[:, 9].any())
    found = isometries(x, fx)
    _require(found)
    return frozenset(found)


def check_trajectory(x, fx):
    cells = np.argwhere(x > 0)
    _require(len(cells) == 2)
    a, b = (tuple(p) for p in cells)
    for s, t in ((a, b), (b, a)):
        di, dj = t[0] - s[0], t[1] - s[1]
        if max(abs(di), abs(dj)) > 3 or not (0 <= s[0] + 2 * di < 10 and 0 <= s[1] + 2 * dj < 10):
            continue
        expect = np.zeros_like(x)
        k = 1
        while 0 <= s[0] + k * di < 10 and 0 <= s[1] + k * dj < 10:
            expect[s[0] + k * di, s[1] + k * dj] = x[t]
            k += 1
        expect[s] = x[s]
        if (expect == fx).all():
            return int(x[s]), int(x[t])
    raise AssertionError("no ray explains f(X)")


def simulate_bounce(obstacles, start, step):
    """Cells visited by the ball (start excluded), at most 10 moves."""
    taken = obstacles.copy()
    taken[start] = True
    i, j = start
    di, dj = step
    path = []

    def free(u, v):
        return 0 <= u < 10 and 0 <= v < 10 and not taken[u, v]

    while len(path) < 10:
        if not free(i + di, j + dj):
            if free(i - dj, j + di):
                di, dj = -dj, di
            elif free(i + dj, j - di):
                di, dj = dj, -di
            else:
                break
        i, j = i + di, j + dj
        taken[i, j] = True
        path.append((i, j))
    return path


def check_bounce(x, fx):
    counts = {c: int((x == c).sum()) for c in colours(x)}
    (c2,) = [c for c, k in counts.items() if k == 1]
    (c1,) = [c for c, k in counts.items() if k == 2]
    (c0,) = [c for c in counts if c not in (c1, c2)]
    first = tuple(np.argwhere(x == c2)[0])
    for start in (tuple(p) for p in np.argwhere(x == c1)):
        step = (first[0] - start[0], first[1] - start[1])
        if abs(step[0]) + abs(step[1]) != 1:
            continue
        path = simulate_bounce(x == c0, start, step)
        if len(path) < 3 or path[0] != first:
            continue
        end = path[-1]
        ex = np.where(x == c0, c0, 0)
        ex[start] = ex[end] = c1
        ex[first] = c2
        efx = np.where(x == c0, c0, 0)
        for p in path:
            efx[p] = c2
        efx[start] = efx[first] = efx[end] = c1
        if (ex == x).all() and (efx == fx).all():
            return c0, c1, c2
    raise AssertionError("no bounce explains f(X)")


#: task name -> checker, in the reference order
CHECKERS = {name: globals()[f"check_{name}"] for name in (
    'replace_color', 'translate', 'grow', 'half_fill', 'frame', 'detect', 'scale', 'symbols', 'corners', 'contact', 'path', 'fill', 'isometry', 'trajectory', 'bounce',
)}


def quiz_parameters(task: str, grids):
    """The shared parameters of a quiz's two pairs under ``task``'s rule
    (grids (4, 10, 10) in canonical order A, f(A), B, f(B)); raises
    :class:`RuleMismatch` when the quiz does not follow the rule."""
    g = np.asarray(grids)
    try:
        a = CHECKERS[task](g[0], g[1])
        b = CHECKERS[task](g[2], g[3])
    except RuleMismatch:
        raise
    except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        # a malformed grid (no rectangle where one is needed...) breaks a checker's unpacking
        raise RuleMismatch(f"{task}: {exc}") from None
    if isinstance(a, frozenset):  # sets of admissible parameters must meet
        _require(a & b, f"{task}: A and B follow different parameters")
        return a & b
    _require(a == b, f"{task}: A and B follow different parameters ({a} vs {b})")
    return a


def follows_rule(task: str, grids) -> bool:
    """True when A -> f(A) and B -> f(B) follow ``task``'s rule with shared parameters."""
    try:
        quiz_parameters(task, grids)
        return True
    except RuleMismatch:
        return False


def matching_tasks(grids, tasks=None) -> list[str]:
    """The tasks (of ``tasks``, default all fifteen) whose rule explains the quiz."""
    return [t for t in (tasks or CHECKERS) if follows_rule(t, grids)]
