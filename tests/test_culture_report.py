"""culture report: oracle classification of c-quizzes, statistics, who fails, gallery, CLI."""

import json

import torch

from culture import quiz as Q
from culture.culture_report import NO_RULE, classify_quizzes, culture_report, grid_entropy, quiz_statistics
from culture.world import generate_quizzes
from tests.cli import error_line, run_cli
from tests.helpers_sources import make_local_source, random_quizzes


def _source_with(tmp_path, train, test, info=None):
    src = make_local_source(tmp_path, n_models=2, with_c_quizzes=False)
    torch.save(([train], [test]), src / "c_quizzes.pth")
    if info is not None:
        (src / "c_quizzes_info.json").write_text(json.dumps(info))
    return src


def test_statistics_of_constructed_quizzes():
    q = Q.empty_quizzes(2, Q.CANONICAL)  # all-empty grids
    q[1, 1 * Q.BLOCK_LEN + 1: 1 * Q.BLOCK_LEN + 11] = 3  # f(A): a row of blue
    s = quiz_statistics(q)
    assert s["cells changed A->f(A)"].tolist() == [0, 10]
    assert s["cells changed B->f(B)"].tolist() == [0, 0]
    assert s["colours used"].tolist() == [0, 1]
    assert s["trivial"].tolist() == [1.0, 1.0]
    half = torch.zeros(10, 10, dtype=torch.long)
    half[:5] = 2
    assert float(grid_entropy(half[None])) == 1.0 and float(grid_entropy(torch.zeros(1, 10, 10))) == 0.0


def test_classification_world_vs_noise():
    world = generate_quizzes(6, tasks=["frame"], seed=1)
    assert all("frame" in m for m in classify_quizzes(world))
    assert all(m == [] for m in classify_quizzes(random_quizzes(5, seed=2)))


def test_report_on_a_source(tmp_path):
    world = generate_quizzes(4, tasks=["detect"], seed=3)
    noise = random_quizzes(3, seed=4)
    train, test = torch.cat([world[:3], noise[:2]]), torch.cat([world[3:], noise[2:]])
    info = {"train": [{"phase": 1, "round": 5, "generator": 1, "solve_probabilities": [0.99, 0.1]}] * 5,
            "test": [{"phase": 2, "round": 9, "generator": 0, "solve_probabilities": [0.2, 0.97]}] * 2}
    src = _source_with(tmp_path, train, test, info)
    rep = culture_report(src, tasks=["detect"], num_world=20)
    last = rep["classification"]["by_phase"][-1]
    assert last["n"] == 7 and last["no_rule"]["k"] == 3 and last["by_rule"][NO_RULE] == 3
    phase1 = [r for r in rep["classification"]["by_phase"] if r["phase"] == 1][0]
    assert phase1["n"] == 5 and phase1["no_rule"]["k"] == 2
    assert rep["classification"]["control_world"]["matches_own_task"]["k"] == 20
    assert [q["failed_when_kept"] for q in rep["quizzes"]] == [[1]] * 5 + [[0]] * 2
    assert rep["models"][1]["generated"] == 5 and rep["models"][0]["generated"] == 2
    assert rep["models"][1]["failed_when_kept"]["k"] == 5
    assert rep["failing_models_per_quiz"]["when_kept"]["1"]["k"] == 7
    for m in rep["models"]:
        assert 0.0 <= m["greedy_on_culture"]["ci95"][0] <= m["greedy_on_culture"]["ci95"][1] <= 1.0
    s = rep["statistics"]["colours used"]
    assert s["culture"]["n"] == 7 and s["world"]["n"] == 20


def test_cli_report_gallery_json_and_errors(tmp_path, capsys):
    world = generate_quizzes(3, tasks=["frame"], seed=5)
    src = _source_with(tmp_path, world[:2], world[2:])
    code, out, err = run_cli(capsys, "culture", "report", "--source", src, "--tasks", "frame", "--num-world", "10",
                             "--png", tmp_path / "gallery", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "matches no rule" in out
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["gallery_frame.png"]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["c_quizzes"] == {"train": 2, "test": 1}
    assert all(q["phase"] is None for q in rep["quizzes"])  # no sidecar: phase unknown
    (src / "c_quizzes.pth").unlink()
    assert "has no c-quizzes" in error_line(capsys, "culture", "report", "--source", src)


def test_yield_counts_every_candidate_once(tmp_path, capsys):
    src = make_local_source(tmp_path, n_models=2, with_c_quizzes=False)
    code, out, err = run_cli(capsys, "culture", "yield", "--source", src, "--candidates", "6", "--num-world", "4",
                             "--tasks", "frame", "--json", tmp_path / "y.json")
    assert code == 0, err
    res = json.loads((tmp_path / "y.json").read_text())
    for part, n in (("candidates", 6), ("world", 4)):
        v = res[part]["verdicts"]
        assert res[part]["n"] == n
        assert sum(v[k]["k"] for k in ("trivial", "kept", "undecided", "too_easy", "too_hard")) == n
    assert "world quizzes (control)" in out
