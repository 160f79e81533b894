"""World ground truth: generate_quizzes_with_params gives the quizzes of
generate_quizzes (byte for byte) and parameters that the per-quiz rule oracle
reads back from the grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import culture.world as world
from culture.quiz import quizzes_to_grids
from culture.world import PARAMETERS, TASKS, generate_quizzes, generate_quizzes_with_params
from culture.world.oracle import bbox, quiz_parameters
from culture.world.rectangles import HALF_FILL_DIRECTIONS, RECTS

N = 30  # quizzes per task for the oracle checks


@pytest.mark.parametrize(
    "n, tasks, seed",
    [(200, None, 0), (150, TASKS, 1), (90, ["frame", "grow", "frame"], 2), (1, ["bounce"], 3), (0, None, 4)],
)
def test_same_quizzes_as_generate_quizzes(n, tasks, seed):
    q, task, params = generate_quizzes_with_params(n, tasks, seed)
    assert torch.equal(q, generate_quizzes(n, tasks, seed))
    assert torch.equal(task, world.generate_quizzes_with_tasks(n, tasks, seed)[1])
    assert len(params) == n
    for k, p in zip(task.tolist(), params):
        assert set(p) == set(PARAMETERS[TASKS[k]])


def test_same_quizzes_across_chunks_and_generators(monkeypatch):
    monkeypatch.setattr(world, "_CHUNK", 37)  # several chunks, each with its own task draw
    q, task, params = generate_quizzes_with_params(120, TASKS, seed=5)
    assert torch.equal(q, generate_quizzes(120, TASKS, seed=5))
    monkeypatch.setattr(world, "_CHUNK", 1 << 16)
    assert not torch.equal(q, generate_quizzes(120, TASKS, seed=5))  # the chunking did matter
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert torch.equal(generate_quizzes_with_params(50, None, rng_a)[0], generate_quizzes(50, None, rng_b))


def _plain(v):
    return isinstance(v, int) or (isinstance(v, tuple) and all(_plain(u) for u in v))


def test_params_are_plain_and_documented():
    _, task, params = generate_quizzes_with_params(150, TASKS, seed=6)
    json.dumps(params)
    assert set(PARAMETERS) == set(TASKS)
    for k, p in zip(task.tolist(), params):
        assert list(p) == list(PARAMETERS[TASKS[k]])
        assert all(_plain(v) and not isinstance(v, bool) for v in p.values()), p
    assert all(text and "\n" not in text for d in PARAMETERS.values() for text in d.values())


def colours(g):
    return set(np.unique(g).tolist()) - {0}


def changed_colours(x, fx):
    return colours(x[x != fx])


# per task: assertions tying one quiz's params to its grids a, fa, b, fb and
# to the oracle's reading o = quiz_parameters(task, grids)
def check_replace_color(p, o, a, fa, b, fb):
    assert o == (p["src"], p["dst"])
    assert (np.where(a == p["src"], p["dst"], a) == fa).all() and (np.where(b == p["src"], p["dst"], b) == fb).all()
    assert colours(a) == {p["src"], *p["others"]}
    assert bbox(a == p["src"]) == p["rect_a"] and bbox(b == p["src"]) == p["rect_b"]


def check_translate(p, o, a, fa, b, fb):
    assert o == (p["color"], p["direction"]) and tuple(RECTS.shifts[p["shift"]]) == p["direction"]
    assert colours(a) == {p["color"], *p["others"]}
    assert bbox(a == p["color"]) == p["rect_a"] and bbox(b == p["color"]) == p["rect_b"]


def check_grow(p, o, a, fa, b, fb):
    assert o == (p["color"], bool(p["grow"]))
    big_a, big_b = (fa, fb) if p["grow"] else (a, b)
    assert bbox(big_a == p["color"]) == p["rect_a"] and bbox(big_b == p["color"]) == p["rect_b"]


def check_half_fill(p, o, a, fa, b, fb):
    assert o == (p["body"], p["line"], HALF_FILL_DIRECTIONS[p["direction"]])
    assert colours(a) == {p["body"], p["line"], *p["others"]}
    assert bbox((a == p["body"]) | (a == p["line"])) == p["rect_a"]
    assert bbox((b == p["body"]) | (b == p["line"])) == p["rect_b"]


def check_frame(p, o, a, fa, b, fb):
    assert o == p["color"] and changed_colours(a, fa) == {p["color"]}
    assert bbox(a == p["color"]) == p["rect_a"] and bbox(b == p["color"]) == p["rect_b"]


def check_detect(p, o, a, fa, b, fb):
    assert o == (p["marker"], p["unmarked"])
    assert changed_colours(a, fa) == set(p["marked"])
    assert tuple(bbox(a == c) for c in p["marked"]) == p["rects_a"]
    assert tuple(bbox(b == c) for c in p["marked"]) == p["rects_b"]


def check_scale(p, o, a, fa, b, fb):
    assert (p["mark"], p["color"], *p["offset"]) in o


def check_symbols(p, o, a, fa, b, fb):
    assert o == (p["colors"][0], p["pointer"])
    assert colours(fa[a != fa]) == {p["target_a"]} and colours(fb[b != fb]) == {p["target_b"]}


def check_corners(p, o, a, fa, b, fb):
    assert o == p["polarity"] and colours(a) == set(p["colors"])


def check_contact(p, o, a, fa, b, fb):
    assert o == p["color"] and colours(a) == {p["color"], *p["others"]}
    assert changed_colours(a, fa) == set(p["touched_a"]) and changed_colours(b, fb) == set(p["touched_b"])
    assert bbox(a == p["color"]) == p["rect_a"] and bbox(b == p["color"]) == p["rect_b"]


def check_path(p, o, a, fa, b, fb):
    assert o == (p["ends"], p["path"]) and colours(a) == {p["ends"], *p["rects"]}


def check_fill(p, o, a, fa, b, fb):
    assert o == p["color"] and colours(a) == {p["color"], *p["rects"]}


def check_isometry(p, o, a, fa, b, fb):
    # the oracle names a transformation (flip, k, di, dj): flip rows first,
    # then k counter-clockwise quarter turns; the generator turns clockwise
    # first, then flips
    k = p["rotation"] if p["flip"] else -p["rotation"] % 4
    assert (bool(p["flip"]), k, *p["shift"]) in o
    assert p["transform"] == (4 * p["flip"] + p["rotation"]) * 9 + (p["shift"][0] + 1) * 3 + p["shift"][1] + 1


def check_trajectory(p, o, a, fa, b, fb):
    assert o == (p["start_color"], p["ray_color"])
    for g, start, step in ((a, p["start_a"], p["step_a"]), (b, p["start_b"], p["step_b"])):
        assert g[start] == p["start_color"] and g[start[0] + step[0], start[1] + step[1]] == p["ray_color"]


def check_bounce(p, o, a, fa, b, fb):
    assert o == (p["obstacle"], p["ball"], p["trail"])


@pytest.mark.parametrize("task", TASKS)
def test_params_agree_with_the_rule_oracle(task):
    q, _, params = generate_quizzes_with_params(N, [task], seed=12)
    check = globals()[f"check_{task}"]
    values = set()
    for g, p in zip(quizzes_to_grids(q).numpy(), params):
        check(p, quiz_parameters(task, g), *g)
        values.add(json.dumps(p, sort_keys=True))
    assert len(values) > N // 2  # the parameters do vary from quiz to quiz
