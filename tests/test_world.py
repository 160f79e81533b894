"""World-quiz generator: format, seeding, task mix, the rule of every task, and
the distribution of the batch generator against the one-quiz-at-a-time oracle.

Each rule checker reads one (X, f(X)) pair and returns the parameters that the
two pairs of a quiz must share (colours, direction...); it fails with an
assertion when f(X) does not follow the rule from X. The checkers are written
from the rules, independently of the generator code.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

import numpy as np
import pytest
import torch

import culture.world as world
from culture.errors import CultureError
from culture.quiz import QUIZ_LEN, is_trivial, quizzes_to_grids, validate_quizzes
from culture.world import DEFAULT_TASKS, TASKS, generate_quizzes, generate_quizzes_with_tasks
from culture.world import scalar

N_RULE = 40  # quizzes per task for the rule checks


# ----------------------------------------------------------------- helpers


def bbox(mask):
    """(i1, i2, j1, j2) with exclusive ends of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    assert rows.size, "empty mask"
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def box(i1, i2, j1, j2):
    m = np.zeros((10, 10), bool)
    m[max(i1, 0) : max(i2, 0), max(j1, 0) : max(j2, 0)] = True
    return m


def full_rect(mask):
    """The mask's bounding box, asserting the mask fills it."""
    b = bbox(mask)
    assert (mask == box(*b)).all(), "not a filled rectangle"
    return b


def colours(g):
    return sorted(set(np.unique(g).tolist()) - {0})


def single(values):
    v = np.unique(values)
    assert v.size == 1, f"expected one value, got {v}"
    return int(v[0])


def grids_of(quizzes):
    return quizzes_to_grids(quizzes).numpy()


@lru_cache(maxsize=None)
def task_grids(task, n=N_RULE, seed=11):
    return grids_of(generate_quizzes(n, [task], seed=seed))


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
    assert len(colours(x)) == 3
    for c in colours(x):
        full_rect(x == c)
    diff = x != fx
    src, dst = single(x[diff]), single(fx[diff])
    assert dst not in colours(x) and dst != 0
    assert (diff == (x == src)).all()  # the whole rectangle, nothing else
    return src, dst


def check_translate(x, fx):
    assert len(colours(x)) == 3
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
            assert b[1] < 10 and b[3] < 10
    assert len(found) == 1
    return found[0]


def check_grow(x, fx):
    diff = x != fx
    c = single(np.concatenate([x[diff], fx[diff]])[np.concatenate([x[diff], fx[diff]]) != 0])
    a, b = full_rect(x == c), full_rect(fx == c)
    assert (diff == ((x == c) ^ (fx == c))).all()
    grown = (b[0] + 1, b[1] - 1, b[2] + 1, b[3] - 1) == a
    shrunk = (a[0] + 1, a[1] - 1, a[2] + 1, a[3] - 1) == b
    assert grown != shrunk
    return c, grown


def check_half_fill(x, fx):
    assert len(colours(x)) == 6
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
        assert half == (hi1, r + 1, hj1, hj2) and r == (hi1 + hi2 - 1) // 2
        return a, b, "up"
    assert line[3] - line[2] == 1 and (line[0], line[1]) == (hi1, hi2)  # a column
    k = line[2]
    if half == (hi1, hi2, k, hj2) and k == (hj1 + hj2) // 2:
        return a, b, "right"
    assert half == (hi1, hi2, hj1, k + 1) and k == (hj1 + hj2 - 1) // 2
    return a, b, "left"


def check_frame(x, fx):
    diff = x != fx
    c = single(x[diff])
    assert (fx[diff] == 0).all()
    i1, i2, j1, j2 = full_rect(x == c)
    assert (diff == box(i1 + 1, i2 - 1, j1 + 1, j2 - 1)).all() and diff.any()
    return c


def check_detect(x, fx):
    diff = x != fx
    m = single(fx[diff])
    assert m not in colours(x) and len(colours(x)) == 3
    unmarked = []
    for c in colours(x):
        i1, i2, j1, j2 = full_rect(x == c)
        changed = diff & (x == c)
        mark = box(i1, i1 + 2, j1, j1 + 1) | box(i1, i1 + 1, j1, j1 + 2)
        if changed.any():
            assert (changed == mark).all()
        else:
            unmarked.append(c)
    assert len(unmarked) == 1
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
    assert found, "no (mark, offset) explains f(X)"
    return frozenset(found)


def check_symbols(x, fx):
    diff = np.argwhere(x != fx)
    assert len(diff) == 1
    centre = tuple(diff[0])
    counts = {c: int((x == c).sum()) for c in colours(x)}
    assert sorted(counts.values()) == [3, 6, 9, 9, 9]
    pointer = next(c for c, k in counts.items() if k == 3)
    body = next(c for c, k in counts.items() if k == 6)
    tops = {}
    for c, k in counts.items():
        if k == 9:
            tops[c] = full_rect(x == c)[0::2]
    b = bbox((x == body) | (x == pointer))
    assert (b[1] - b[0], b[3] - b[2]) == (3, 3) and centre == (b[0] + 1, b[2] + 1)
    assert x[centre] == body
    target = int(fx[centre])
    assert target in tops
    all_tops = [b[0::2]] + list(tops.values())
    si = np.sign(4 * tops[target][0] - sum(t[0] for t in all_tops))
    sj = np.sign(4 * tops[target][1] - sum(t[1] for t in all_tops))
    assert si != 0 and sj != 0
    ci, cj = centre
    expect = {(ci + si, cj + sj), (ci, cj + sj), (ci + si, cj)}
    assert {tuple(p) for p in np.argwhere(x == pointer)} == expect
    return body, pointer


def check_corners(x, fx):
    assert colours(x) == colours(fx) and len(colours(x)) == 3
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
            assert ((x == c) == (tr | bl)).all()
            polarity.add(1)
    assert len(polarity) == 1
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
    assert len(colours(x)) == 3
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
    assert touched >= 1 and (expect == fx).all()
    return c0


def check_path(x, fx):
    counts = {c: int((x == c).sum()) for c in colours(x)}
    ends = [c for c, k in counts.items() if k == 2]
    assert len(ends) == 1 and len(counts) == 3
    e = ends[0]
    e1, e2 = (tuple(p) for p in np.argwhere(x == e))
    assert abs(e1[0] - e2[0]) + abs(e1[1] - e2[1]) > 2
    free = (x == 0) | (x == e)
    d1, d2 = distances(free, e1), distances(free, e2)
    length = d1[e2]
    assert length < 20
    new = colours(fx)
    (p,) = set(new) - set(colours(x))
    expect = x.copy()
    expect[(d1 + d2 == length) & (x == 0)] = p
    assert (expect == fx).all()
    return e, p


def check_fill(x, fx):
    counts = {c: int((x == c).sum()) for c in colours(x)}
    seeds = [c for c, k in counts.items() if k == 1]
    assert len(seeds) == 1 and len(counts) == 4
    s = seeds[0]
    seed = tuple(np.argwhere(x == s)[0])
    free = (x == 0) | (x == s)
    reach = distances(free, seed) < 10**6
    expect = np.where(reach, s, x)
    expect[seed] = 0
    assert (expect == fx).all()
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
    assert len(colours(x)) == 3 and (x > 0).sum() > 25
    assert not x[0].any() and not x[9].any() and not x[:, 0].any() and not x[:, 9].any()
    found = isometries(x, fx)
    assert found
    return frozenset(found)


def check_trajectory(x, fx):
    cells = np.argwhere(x > 0)
    assert len(cells) == 2
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


CHECKERS = {name: globals()[f"check_{name}"] for name in TASKS}


def check_quiz(task, g):
    a = CHECKERS[task](g[0], g[1])
    b = CHECKERS[task](g[2], g[3])
    if isinstance(a, frozenset):  # sets of admissible parameters must meet
        assert a & b, f"{task}: A and B follow different parameters"
    else:
        assert a == b, f"{task}: A and B follow different parameters ({a} vs {b})"


# ------------------------------------------------------------------- tests


def test_task_lists():
    assert TASKS == (
        "replace_color", "translate", "grow", "half_fill", "frame", "detect", "scale", "symbols",
        "corners", "contact", "path", "fill", "isometry", "trajectory", "bounce",
    )
    assert DEFAULT_TASKS == (
        "replace_color", "translate", "grow", "half_fill", "frame", "detect", "corners", "contact",
    )
    assert set(world.GENERATORS) == set(TASKS) == set(scalar.TASK_FUNCTIONS)


@pytest.mark.parametrize("task", TASKS)
def test_rule(task):
    for g in task_grids(task):
        check_quiz(task, g)


@pytest.mark.parametrize("task", TASKS)
def test_rule_scalar_oracle(task):
    """The oracle must follow the same rules (else the distribution test is moot)."""
    for g in grids_of(scalar.generate_quizzes(12, [task], seed=5)):
        check_quiz(task, g)


def test_format():
    q, label = generate_quizzes_with_tasks(120, TASKS, seed=0)
    assert q.shape == (120, QUIZ_LEN) and q.dtype == torch.long
    assert label.shape == (120,) and label.dtype == torch.long
    validate_quizzes(q)
    assert (q[:, [0, 101, 202, 303]] == torch.tensor([11, 12, 13, 14])).all()
    cells = quizzes_to_grids(q)
    assert cells.min() >= 0 and cells.max() <= 10
    # every quiz follows the rule of the task it is labelled with
    for g, k in zip(grids_of(q), label.tolist()):
        check_quiz(TASKS[k], g)


def test_default_tasks_not_trivial():
    q, label = generate_quizzes_with_tasks(400, seed=1)
    assert set(label.tolist()) <= {TASKS.index(t) for t in DEFAULT_TASKS}
    assert not is_trivial(q).any()


def test_seeded():
    a = generate_quizzes(64, TASKS, seed=123)
    assert torch.equal(a, generate_quizzes(64, TASKS, seed=123))
    assert not torch.equal(a, generate_quizzes(64, TASKS, seed=124))
    assert not torch.equal(generate_quizzes(16), generate_quizzes(16))  # fresh entropy
    # independent of global RNG state
    torch.manual_seed(0)
    np.random.seed(0)
    b = generate_quizzes(64, TASKS, seed=123)
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(b, generate_quizzes(64, TASKS, seed=123))
    s = scalar.generate_quizzes(8, TASKS, seed=3)
    assert torch.equal(s, scalar.generate_quizzes(8, TASKS, seed=3))


def test_task_mix_uniform():
    n = 4000
    _, label = generate_quizzes_with_tasks(n, seed=7)
    counts = torch.bincount(label, minlength=len(TASKS))
    expected = n / len(DEFAULT_TASKS)
    sd = (n * (1 / 8) * (7 / 8)) ** 0.5
    for t in TASKS:
        k = counts[TASKS.index(t)].item()
        if t in DEFAULT_TASKS:
            assert abs(k - expected) < 5 * sd, (t, k)
        else:
            assert k == 0
    # a subset, and a comma-separated string
    _, label = generate_quizzes_with_tasks(300, "frame, grow", seed=1)
    assert set(label.tolist()) == {TASKS.index("frame"), TASKS.index("grow")}


def test_unknown_task():
    with pytest.raises(ValueError) as e:
        generate_quizzes(4, ["frame", "teleport"])
    msg = str(e.value)
    assert "teleport" in msg and "\n" not in msg
    for t in TASKS:
        assert t in msg
    assert isinstance(e.value, CultureError)
    with pytest.raises(ValueError):
        generate_quizzes(4, [])
    with pytest.raises(ValueError):
        generate_quizzes(-1)


def test_empty_and_odd_sizes():
    assert generate_quizzes(0).shape == (0, QUIZ_LEN)
    assert world.generate_task_grids("fill", 0).shape == (0, 4, 10, 10)
    g = world.generate_task_grids("fill", 3, seed=2)
    assert g.shape == (3, 4, 10, 10)
    for quiz in g.astype(np.int64):
        check_quiz("fill", quiz)
    q, label = generate_quizzes_with_tasks(1, ["bounce"], seed=0)
    assert q.shape == (1, QUIZ_LEN) and label.tolist() == [TASKS.index("bounce")]


@pytest.mark.parametrize("restrict_last", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_rect_group_sampler_matches_rejection(k, restrict_last):
    """The exact sequential sampler of disjoint rectangle groups against blind
    rejection of i.i.d. groups (what the reference does)."""
    from culture.world._common import RECTS, sample_rect_groups

    last = (RECTS.height >= 4) & (RECTS.width >= 4) if restrict_last else None
    rng = np.random.default_rng(k)
    fast = sample_rect_groups(rng, 20000, k, last=last)
    cand = rng.integers(RECTS.count, size=(1_500_000 if k == 3 else 200_000, k))
    d = RECTS.disjoint
    ok = np.ones(len(cand), bool)
    for a in range(k):
        for b in range(a + 1, k):
            ok &= d[cand[:, a], cand[:, b]]
    if last is not None:
        ok &= last[cand[:, -1]]
    slow = cand[ok]
    assert len(slow) > 5000
    if last is not None:
        assert last[fast[:, -1]].all()
    for a in range(k):
        for b in range(a + 1, k):
            assert d[fast[:, a], fast[:, b]].all()
    for j in range(k):
        for stat in (RECTS.height * RECTS.width, RECTS.i1, RECTS.j1, RECTS.height):
            x, y = stat[fast[:, j]], stat[slow[:, j]]
            se = (x.var() / len(x) + y.var() / len(y)) ** 0.5
            assert abs(x.mean() - y.mean()) < 5 * se, (j, x.mean(), y.mean())


def quiz_stats(quizzes):
    """Per quiz: filled cells per grid (mean of A, B), filled cells in f(A), f(B),
    cells changed X -> f(X), distinct colours in the quiz."""
    g = quizzes_to_grids(quizzes).reshape(len(quizzes), 4, 100).numpy()
    filled = (g > 0).sum(axis=2)
    changed = (g[:, 0] != g[:, 1]).sum(axis=1) + (g[:, 2] != g[:, 3]).sum(axis=1)
    ncol = np.array([len(set(row.ravel().tolist()) - {0}) for row in g])
    return {
        "filled X": (filled[:, 0] + filled[:, 2]) / 2,
        "filled f(X)": (filled[:, 1] + filled[:, 3]) / 2,
        "changed": changed / 2,
        "colours": ncol,
    }


@pytest.mark.parametrize("task", TASKS)
def test_distribution_matches_scalar_oracle(task):
    fast = quiz_stats(generate_quizzes(600, [task], seed=21))
    slow = quiz_stats(scalar.generate_quizzes(300, [task], seed=21))
    for key in fast:
        a, b = fast[key], slow[key]
        se = (a.var() / len(a) + b.var() / len(b)) ** 0.5
        assert abs(a.mean() - b.mean()) <= 5 * se + 1e-9, (key, a.mean(), b.mean(), se)
