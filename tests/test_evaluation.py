"""culture.evaluation: the test-set protocol, the scores of one teacher-forced
pass (perplexity, greedy and expected accuracy), evaluate() and its JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from culture.errors import CultureError
from culture.evaluation import (
    C_QUIZ_LABEL,
    EvaluationError,
    TestSet,
    check_device,
    evaluate,
    make_test_set,
    predicted_log_probs,
    score_quizzes,
    summarize,
)
from culture.quiz import (
    BLOCK_LEN,
    CANONICAL,
    EVAL_STRUCTURES,
    STRUCTURES,
    ar_mask,
    block_mask,
    reconfigure,
    structure_index,
)
from tests.helpers_sources import random_quizzes
from tests.test_generation import CHANGES, copy_model, copy_quizzes, hooked_of, tiny_model

world = pytest.importorskip("culture.world")


# ------------------------------------------------------------------ test set


def test_test_set_size_labels_structures():
    ts = make_test_set(60, seed=1)
    assert len(ts) == 60 and ts.quizzes.shape == (60, 404) and ts.targets.shape == (60, 404)
    assert ts.n_c_quizzes == 0 and C_QUIZ_LABEL not in ts.labels
    assert set(ts.labels) <= set(world.DEFAULT_TASKS)
    assert ts.tasks == tuple(world.DEFAULT_TASKS)
    # structures: drawn from the four deterministic ones, consistent with the markers
    assert torch.equal(ts.structures, structure_index(ts.quizzes))
    assert set(ts.structures.tolist()) <= {0, 1, 2, 3}
    assert len(set(ts.structures.tolist())) == 4  # 60 draws hit all four
    assert torch.equal(ts.structures, structure_index(ts.targets))


def test_test_set_tasks_option():
    ts = make_test_set(20, tasks=["contact", "frame"], seed=0)
    assert set(ts.labels) <= {"contact", "frame"} and ts.tasks == ("contact", "frame")
    with pytest.raises(CultureError):
        make_test_set(5, tasks=["no_such_task"])


def test_noise_only_on_noised_blocks_cells():
    ts = make_test_set(400, seed=2, noise=0.05)
    diff = ts.quizzes != ts.targets
    allowed = torch.zeros_like(diff)
    for k, s in enumerate(STRUCTURES):
        rows = ts.structures == k
        if rows.any():
            allowed[rows] = block_mask(int(rows.sum()), list(s.noised), cells_only=True)
    assert not (diff & ~allowed).any()  # never outside the noised blocks' cells
    assert not (diff & ar_mask(ts.quizzes)).any()  # predicted cells always clean
    # rate: p * 10/11 (a replacement may draw the same colour)
    rate = diff.sum().item() / allowed.sum().item()
    assert abs(rate - 0.05 * 10 / 11) < 0.01
    noiseless = make_test_set(50, seed=2, noise=0.0)
    assert torch.equal(noiseless.quizzes, noiseless.targets)


def test_targets_are_reconfigured_world_quizzes():
    ts = make_test_set(30, seed=3, tasks=["translate"])
    canon = reconfigure(ts.targets, CANONICAL)
    ref = world.generate_quizzes(30, ["translate"], seed=3)
    # same multiset of quizzes (shuffled)
    key = lambda q: sorted(map(tuple, q.tolist()))  # noqa: E731
    assert key(canon) == key(ref)


def test_determinism_by_seed():
    a, b, c = make_test_set(40, seed=5), make_test_set(40, seed=5), make_test_set(40, seed=6)
    assert torch.equal(a.quizzes, b.quizzes) and a.labels == b.labels and torch.equal(a.structures, b.structures)
    assert not torch.equal(a.quizzes, c.quizzes)


def test_c_quizzes_capped_at_half():
    cq = random_quizzes(30, seed=9)
    ts = make_test_set(20, c_quizzes=cq, seed=0)
    assert len(ts) == 20 and ts.n_c_quizzes == 10
    assert ts.labels.count(C_QUIZ_LABEL) == 10
    rows = torch.tensor([label == C_QUIZ_LABEL for label in ts.labels])
    canon = reconfigure(ts.targets[rows], CANONICAL)
    pool = {tuple(q) for q in cq.tolist()}
    assert all(tuple(q) in pool for q in canon.tolist())
    # shuffled: c-quizzes are not all at the end
    assert not rows[10:].all()


def test_c_quizzes_fewer_than_half_all_used_list_form():
    cq = random_quizzes(5, seed=10)
    ts = make_test_set(20, c_quizzes=[cq[:2], cq[2:]], seed=0)
    assert ts.n_c_quizzes == 5 and ts.labels.count(C_QUIZ_LABEL) == 5
    assert ts.labels.count(C_QUIZ_LABEL) + sum(lab in world.TASKS for lab in ts.labels) == 20
    assert ts.label_names[-1] == C_QUIZ_LABEL


def test_test_set_bad_arguments():
    with pytest.raises(EvaluationError):
        make_test_set(0)
    with pytest.raises(EvaluationError):
        make_test_set(10, noise=1.5)
    with pytest.raises(EvaluationError):
        make_test_set(10, structures=[])
    with pytest.raises(CultureError):
        make_test_set(10, c_quizzes=torch.zeros(3, 404, dtype=torch.long))  # no markers


def test_subset_and_settings_json():
    ts = make_test_set(10, c_quizzes=random_quizzes(2), seed=0)
    sub = ts.subset([0, 1, 2])
    assert len(sub) == 3 and sub.labels == ts.labels[:3]
    json.dumps(ts.settings())


# -------------------------------------------------------------------- scores


def test_perplexity_formula():
    model = tiny_model(seed=1)
    ts = make_test_set(12, seed=0)
    scores = score_quizzes(model, ts, batch_size=5)
    with torch.no_grad():
        logits = model(ts.quizzes)
    ce = F.cross_entropy(logits.transpose(1, 2), ts.quizzes)  # mean over all 12 x 404 tokens
    assert abs(float(scores["ce"].mean()) - float(ce)) < 1e-5
    assert math.isclose(summarize(scores)["perplexity"], math.exp(float(ce)), rel_tol=1e-5)


def test_scores_match_direct_computation_and_batching():
    model = tiny_model(seed=2)
    q = copy_quizzes(CHANGES)
    s1 = score_quizzes(model, q, batch_size=1)
    s2 = score_quizzes(model, q, batch_size=100)
    for k in s1:
        assert torch.allclose(s1[k].float(), s2[k].float(), atol=1e-4)
    with torch.no_grad():
        logp = F.log_softmax(model(q), -1)
    m = ar_mask(q)
    lp = logp.gather(-1, q.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(s2["log_prob"], (lp * m).sum(1), atol=1e-3)
    assert torch.equal(s2["greedy_correct"], ((logp.argmax(-1) == q) | ~m).all(1))
    assert torch.allclose(predicted_log_probs(model, q), s2["log_prob"])


def test_targets_replace_predicted_cells_only():
    model = copy_model()
    q = copy_quizzes([0, 0, 0])
    broken = q.clone()
    broken[ar_mask(q)] = 0  # quizzes with their answers erased
    s = score_quizzes(model, broken, targets=q)
    assert s["greedy_correct"].all()
    assert not score_quizzes(model, broken)["greedy_correct"].all()
    with pytest.raises(EvaluationError):
        score_quizzes(model, q, targets=reconfigure(q, STRUCTURES[4].markers))


def test_expected_accuracy_is_mean_exp_log_prob():
    model = copy_model(sharpness=0.26)
    q = copy_quizzes([0, 0, 1, 0, 2, 0])
    scores = score_quizzes(model, q)
    expected = summarize(scores)["expected_accuracy"]
    assert math.isclose(expected, float(scores["log_prob"].double().exp().mean()), rel_tol=1e-9)
    assert 0.1 < expected < 0.6


def test_structure_5_counts_in_perplexity_not_in_accuracy():
    model = copy_model()
    ts = make_test_set(40, seed=0, structures=STRUCTURES)
    assert (ts.structures == 4).any()
    res = evaluate(model, ts)[0]
    assert res.n == 40 and res.n_scored == int((ts.structures != 4).sum())
    assert res.by_structure["5"]["greedy_accuracy"] is None
    assert res.by_structure["5"]["perplexity"] is not None


# ------------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def copy_test_set():
    """A TestSet of copy quizzes (some solved by copy_model, some not)."""
    q = copy_quizzes(CHANGES * 2, seed=4)
    labels = ["easy" if k == 0 else "hard" for k in CHANGES * 2]
    return TestSet(q, q.clone(), labels, structure_index(q), seed=0)


def test_evaluate_metrics_and_breakdowns(copy_test_set):
    model = copy_model()
    model.accuracy = 0.9
    seen = []
    (res,) = evaluate([model], copy_test_set, generate=True, batch_size=7,
                      progress=lambda d, done, total: seen.append(d))
    solved = sum(k == 0 for k in CHANGES) / len(CHANGES)
    assert res.greedy_accuracy == pytest.approx(solved)
    assert res.generated_accuracy == pytest.approx(solved)  # a sharp model: sampling = greedy
    assert res.expected_accuracy == pytest.approx(solved, abs=1e-3)
    assert res.checkpoint_accuracy == 0.9
    assert res.by_task["easy"]["greedy_accuracy"] == 1.0 and res.by_task["hard"]["greedy_accuracy"] == 0.0
    assert sum(e["n"] for e in res.by_structure.values()) == len(copy_test_set)
    weighted = sum(e["n"] * e["greedy_accuracy"] for e in res.by_structure.values()) / len(copy_test_set)
    assert weighted == pytest.approx(res.greedy_accuracy)
    assert set(res.by_structure) <= {"1", "2", "3", "4"}
    assert "model 0: teacher-forced" in seen and "model 0: sampling" in seen
    # per-quiz teacher-forced greedy == generated, non-trivially
    s = res.scores
    assert torch.equal(s["greedy_correct"], s["generated_correct"])
    assert 0 < int(s["greedy_correct"].sum()) < len(copy_test_set)


def test_evaluate_mygpt_and_hooked_agree():
    model = tiny_model(seed=3)
    model.model_id = 7
    ts = make_test_set(8, seed=1)
    a, b = evaluate([model, hooked_of(model)], ts, names=["mygpt", "hooked"])
    assert a.name == "mygpt" and b.name == "hooked"
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-5)
    assert torch.allclose(a.scores["log_prob"], b.scores["log_prob"], atol=1e-2)
    assert torch.equal(a.scores["greedy_correct"], b.scores["greedy_correct"])
    assert evaluate(model, ts)[0].name == "7"


def test_to_dict_is_json(copy_test_set):
    model = copy_model()
    results = evaluate([model], copy_test_set, checkpoint_accuracies=[None])
    d = results.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    m = back["models"][0]
    assert m["generated_accuracy"] is None and m["checkpoint_accuracy"] is None
    assert set(m) >= {"perplexity", "greedy_accuracy", "expected_accuracy", "by_task", "by_structure"}
    assert back["settings"]["num_samples"] == len(copy_test_set)


def test_evaluate_rejects_bad_input():
    model = tiny_model()
    with pytest.raises(EvaluationError):
        evaluate([model], random_quizzes(2))
    with pytest.raises(EvaluationError):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvaluationError):
            check_device("cuda")
    assert check_device("cpu") == torch.device("cpu")


def test_block_boundaries_unchanged_by_scoring():
    # scoring never modifies its inputs
    ts = make_test_set(6, seed=0)
    before = ts.quizzes.clone()
    score_quizzes(tiny_model(), ts)
    assert torch.equal(ts.quizzes, before)
    assert (ts.quizzes[:, ::BLOCK_LEN] >= 11).all()
    assert set(EVAL_STRUCTURES) == set(STRUCTURES[:4])


def test_source_test_set_selects_world_culture_or_both(tmp_path):
    from culture.evaluation import C_QUIZ_LABEL, EvaluationError, source_test_set
    from culture.quizfile import save_c_quizzes
    from culture.world import generate_quizzes

    from tests.helpers_sources import make_local_source

    src = make_local_source(tmp_path, n_models=1, with_c_quizzes=False)
    c = generate_quizzes(6, tasks=["grow"], seed=9)
    save_c_quizzes(src / "c_quizzes.pth", [c[:2]], [c[2:]])
    both = source_test_set(src, 20, tasks=["frame"], seed=0)
    assert both.labels.count(C_QUIZ_LABEL) == 4
    world = source_test_set(src, 20, tasks=["frame"], seed=0, quizzes="world")
    assert C_QUIZ_LABEL not in world.labels and len(world) == 20
    culture = source_test_set(src, 20, tasks=["frame"], seed=0, quizzes="culture")
    assert culture.labels == [C_QUIZ_LABEL] * 4
    canonical = {tuple(q.tolist()) for q in c[2:]}
    assert {tuple(q.tolist()) for q in reconfigure(culture.targets, CANONICAL)} == canonical
    with pytest.raises(EvaluationError):
        source_test_set(src, 20, quizzes="everything")
    (src / "c_quizzes.pth").unlink()
    with pytest.raises(EvaluationError, match="no test c-quizzes"):
        source_test_set(src, 20, quizzes="culture")
