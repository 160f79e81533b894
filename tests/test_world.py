"""World-quiz generator: format, seeding, task mix, the rule of every task, and
the distribution of the batch generator against the one-quiz-at-a-time oracle.

Each rule checker reads one (X, f(X)) pair and returns the parameters that the
two pairs of a quiz must share (colours, direction...); it fails with an
assertion when f(X) does not follow the rule from X. The checkers are written
from the rules, independently of the generator code.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

import culture.world as world
from culture.errors import CultureError
from culture.quiz import QUIZ_LEN, is_trivial, quizzes_to_grids, validate_quizzes
from culture.world import DEFAULT_TASKS, TASKS, generate_quizzes, generate_quizzes_with_tasks
from culture.world import scalar

from culture.world.oracle import CHECKERS, RuleMismatch, matching_tasks, quiz_parameters

N_RULE = 40  # quizzes per task for the rule checks


def grids_of(quizzes):
    return quizzes_to_grids(quizzes).numpy()


@lru_cache(maxsize=None)
def task_grids(task, n=N_RULE, seed=11):
    return grids_of(generate_quizzes(n, [task], seed=seed))


def check_quiz(task, g):
    """Assert that grids g (4, 10, 10) follow task's rule (the library oracle)."""
    try:
        quiz_parameters(task, g)
    except RuleMismatch as exc:
        raise AssertionError(str(exc)) from None


@pytest.mark.parametrize("task", TASKS)
def test_oracle_classifies_world_quizzes_as_their_task(task):
    for g in task_grids(task, n=10, seed=3):
        assert task in matching_tasks(g)


def test_oracle_matches_no_rule_on_constructed_quizzes():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 11, size=(20, 4, 10, 10))  # four unrelated random grids
    assert all(matching_tasks(g) == [] for g in noise)
    # a real quiz whose B pair is taken from another task follows neither rule
    g = task_grids("frame", n=1, seed=3)[0].copy()
    g[2:] = task_grids("replace_color", n=1, seed=3)[0][2:]
    assert "frame" not in matching_tasks(g) and "replace_color" not in matching_tasks(g)
    assert sorted(CHECKERS) == sorted(TASKS)


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
