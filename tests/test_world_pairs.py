"""Counterfactual pairs: both sides share B, follow their task's rule (the
per-quiz oracle), and differ in the varied parameter and in f(B); the
``example`` control keeps the parameters and f(B)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from culture.errors import CultureError
from culture.quiz import quizzes_to_grids, validate_quizzes
from culture.world import (
    PAIR_FACTORS,
    PARAMETERS,
    TASKS,
    UnknownFactorError,
    UnknownTaskError,
    generate_pairs,
    generate_pairs_with_params,
    generate_task_grids,
)
from culture.world.oracle import follows_rule, quiz_parameters
from culture.world.pairs import corrupted_task

N_PAIRS = 12

# (task, factor) -> what of the oracle's reading quiz_parameters(task, grids) the factor changes
ORACLE_READS = {
    ("replace_color", "dst"): lambda o: o[1],
    ("replace_color", "src"): lambda o: o[0],
    ("translate", "direction"): lambda o: o[1],
    ("translate", "color"): lambda o: o[0],
    ("grow", "direction"): lambda o: o[1],
    ("grow", "color"): lambda o: o[0],
    ("half_fill", "rectangle"): lambda o: o[:2],
    ("half_fill", "direction"): lambda o: o[2],
    ("frame", "color"): lambda o: o,
    ("detect", "marker"): lambda o: o[0],
    ("detect", "unmarked"): lambda o: o[1],
    ("contact", "color"): lambda o: o,
    ("path", "color"): lambda o: o[1],
    ("isometry", "transform"): lambda o: o,  # the set of transformations explaining the quiz
    ("isometry", "rotation"): lambda o: o,
    ("isometry", "shift"): lambda o: o,
}
# (task, factor) -> the parameters (keys of PARAMETERS[task]) the factor changes
PARAM_KEYS = {
    ("replace_color", "dst"): ["dst"], ("replace_color", "src"): ["src"],
    ("translate", "direction"): ["direction", "shift"], ("translate", "color"): ["color"],
    ("grow", "direction"): ["grow"], ("grow", "color"): ["color"],
    ("half_fill", "rectangle"): ["body", "line"], ("half_fill", "direction"): ["direction"],
    ("frame", "color"): ["color"], ("detect", "marker"): ["marker"], ("detect", "unmarked"): ["unmarked"],
    ("contact", "color"): ["color"], ("path", "color"): ["path"],
    ("isometry", "transform"): ["transform"], ("isometry", "rotation"): ["rotation", "flip"],
    ("isometry", "shift"): ["shift"],
}
CASES = [(t, f) for t in TASKS for f in PAIR_FACTORS[t]]


def test_factor_table():
    assert set(PAIR_FACTORS) == set(TASKS)
    for t in TASKS:
        assert "example" in PAIR_FACTORS[t]
    rule_factors = {(t, f) for t, f in CASES if f not in ("task", "example")}
    assert rule_factors == set(ORACLE_READS) == set(PARAM_KEYS)
    for t in ("replace_color", "translate", "grow", "half_fill", "frame", "detect", "contact"):
        assert set(PAIR_FACTORS[t]) - {"task", "example"}, t  # published tasks with a rule factor
    assert {t for t, f in CASES if f == "task"} == {"replace_color", "translate", "grow", "frame", "detect", "contact"}


@pytest.mark.parametrize("task, vary", CASES)
def test_pairs(task, vary):
    clean, corrupted, pc, pk = generate_pairs_with_params(N_PAIRS, task, vary, seed=3)
    for q in (clean, corrupted):
        assert q.shape == (N_PAIRS, 404) and q.dtype == torch.long
        validate_quizzes(q)
    gc, gk = quizzes_to_grids(clean).numpy(), quizzes_to_grids(corrupted).numpy()
    assert (gc[:, 2] == gk[:, 2]).all()  # the same B
    same_answer = (gc[:, 3] == gk[:, 3]).all(axis=(1, 2))
    assert same_answer.all() if vary == "example" else not same_answer.any()
    other = corrupted_task(task, vary)
    assert (other != task) == (vary == "task")
    for p in pc:
        assert list(p) == list(PARAMETERS[task])
    for p in pk:
        assert list(p) == list(PARAMETERS[other])
    for a, b, p, q in zip(gc, gk, pc, pk):
        oa, ob = quiz_parameters(task, a), quiz_parameters(other, b)
        if vary == "example":
            assert oa == ob
            assert all(p[k] == q[k] for k in p if not k.endswith("_a"))  # only the example pair moved
        elif vary == "task":
            assert not follows_rule(task, b)
        else:
            read = ORACLE_READS[(task, vary)]
            assert read(oa) != read(ob)
            assert any(p[k] != q[k] for k in PARAM_KEYS[(task, vary)])
    assert not (gc[:, :2] == gk[:, :2]).all()  # the example pair is a new draw


@pytest.mark.parametrize("task, vary", [("replace_color", "dst"), ("frame", "color"), ("detect", "task"), ("isometry", "rotation")])
def test_clean_side_is_generate_quizzes_when_nothing_is_redrawn(task, vary):
    """Factors that every B admits draw the clean side exactly as the generator does."""
    clean, _ = generate_pairs(40, task, vary, seed=8)
    expect = generate_task_grids(task, 40, seed=8)
    assert np.array_equal(quizzes_to_grids(clean).numpy(), expect)


def test_seeded_and_redrawn():
    a = generate_pairs(20, "translate", "color", seed=1)
    b = generate_pairs(20, "translate", "color", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # translate's colour: a third of B grids admit no other moving rectangle and are redrawn
    clean, _ = a
    assert not np.array_equal(quizzes_to_grids(clean).numpy(), generate_task_grids("translate", 20, seed=1))
    assert generate_pairs(0, "frame", "color")[0].shape == (0, 404)


def test_unknown_task_or_factor():
    with pytest.raises(UnknownFactorError) as e:
        generate_pairs(4, "corners", "polarity")
    msg = str(e.value)
    assert isinstance(e.value, CultureError) and "\n" not in msg
    assert "polarity" in msg and "corners" in msg and "example" in msg
    with pytest.raises(UnknownTaskError) as e:
        generate_pairs(4, "teleport", "example")
    assert isinstance(e.value, CultureError) and "replace_color" in str(e.value)
