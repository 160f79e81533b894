import json

import pytest
import torch

import culture.quiz as Q
from culture import training
from culture.mygpt import load_mygpt
from culture.quizfile import load_c_quizzes
from culture.training import CultureRun, TrainConfig, TrainingError, validation_rule
from tests.reference_forward import random_reference_state


def tiny_config(**kw) -> TrainConfig:
    base = dict(nb_models=2, model="17K", tasks=("replace_color", "frame"), train_samples=50, test_samples=20,
                batch_size=25, seed=3, culture=False, eval_batch_size=20)
    base.update(kw)
    return TrainConfig(**base)


def test_train_stop_resume_restores_weights_optimizer_and_round(tmp_path):
    out = tmp_path / "run"
    run = CultureRun.create(out, tiny_config())
    assert run.train(max_rounds=3) == "reached 3 rounds"
    saved_rng = torch.get_rng_state()  # what the last save recorded
    assert run.round == 3 and sum(run.epochs) == 3

    # checkpoints are in the reference format and layout
    ref_keys = set(random_reference_state(32, 32, 32, 2, 2))
    for k in range(2):
        state, acc = torch.load(out / f"gpt_{k:03d}.pth", weights_only=True)
        assert set(state) == ref_keys
        assert acc == pytest.approx(run.accuracies[k])
        model, acc2 = load_mygpt(out / f"gpt_{k:03d}.pth")
        for name, value in model.state_dict().items():
            assert torch.equal(value, run.models[k].state_dict()[name])
    assert load_c_quizzes(out / "c_quizzes.pth")[0].shape == (0, Q.QUIZ_LEN)

    torch.manual_seed(12345)  # scramble the global RNG: resume must restore it
    resumed = CultureRun.resume(out)
    assert torch.equal(torch.get_rng_state(), saved_rng)
    assert resumed.round == 3
    assert resumed.epochs == run.epochs
    assert resumed.accuracies == pytest.approx(run.accuracies)
    assert resumed.greedy_accuracies == pytest.approx(run.greedy_accuracies)
    for k in range(2):
        a, b = run.optimizers[k].state_dict(), resumed.optimizers[k].state_dict()
        assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
        for i in a["state"]:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(torch.as_tensor(a["state"][i][key]), torch.as_tensor(b["state"][i][key]))

    # both continue identically from the same RNG state (dropout draws from the
    # global RNG, shared by the two runs in this process)
    r1 = run.step()
    torch.set_rng_state(saved_rng)
    r2 = resumed.step()
    assert r1.model == r2.model
    for name, value in run.models[r1.model].state_dict().items():
        assert torch.allclose(value, resumed.models[r2.model].state_dict()[name], atol=1e-6)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert "round 3 model" in (out / "train.log").read_text()


def test_create_refuses_non_empty_dir_and_bad_tasks(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    with pytest.raises(TrainingError, match="not empty"):
        CultureRun.create(tmp_path / "x", tiny_config())
    with pytest.raises(TrainingError, match="unknown task"):
        CultureRun.create(tmp_path / "y", tiny_config(tasks=("nope",)))
    with pytest.raises(TrainingError, match="no resumable run"):
        CultureRun.resume(tmp_path / "z")


def test_weakest_model_trains_each_round(tmp_path):
    run = CultureRun.create(tmp_path / "run", tiny_config(nb_models=3))
    run.accuracies = [0.5, 0.1, 0.9]
    report = run.step()
    assert report.model == 1


def test_validation_rule_reasons():
    probas = torch.tensor([
        [0.99, 0.98, 0.10],  # kept: one fails
        [0.99, 0.20, 0.10],  # kept with max_fail 2
        [0.10, 0.20, 0.30],  # too hard: all fail
        [0.99, 0.99, 0.99],  # too easy
        [0.99, 0.70, 0.10],  # undecided
    ])
    v = validation_rule(probas, understands=0.95, not_understands=0.5, max_fail=2)
    assert v["kept"].tolist() == [True, True, False, False, False]
    assert v["too_hard"].tolist() == [False, False, True, False, False]
    assert v["too_easy"].tolist() == [False, False, False, True, False]
    assert v["undecided"].tolist() == [False, False, False, False, True]
    v1 = validation_rule(probas, understands=0.95, not_understands=0.5, max_fail=1)
    assert v1["kept"].tolist() == [True, False, False, False, False]


def _fake_probabilities(quizzes: torch.Tensor, nb_models: int) -> torch.Tensor:
    """Deterministic per-quiz probabilities spanning every verdict."""
    h = quizzes.sum(1) % 7
    table = torch.tensor([
        [0.99, 0.99, 0.10], [0.99, 0.10, 0.10], [0.10, 0.10, 0.10],
        [0.99, 0.99, 0.99], [0.99, 0.70, 0.10], [0.96, 0.20, 0.99], [0.30, 0.99, 0.99],
    ])
    return table[h][:, :nb_models]


def test_culture_phase_keeps_exactly_what_the_logged_rule_accepts(tmp_path, monkeypatch):
    cfg = tiny_config(nb_models=3, culture=True, threshold=0.0, culture_batch=40, culture_max_batches=2,
                      c_quizzes_train=6, c_quizzes_test=2, max_fail=1)
    run = CultureRun.create(tmp_path / "run", cfg)
    seen = []

    def fake(models, quizzes, **kw):
        seen.append(quizzes.clone())
        return _fake_probabilities(quizzes, len(models))

    monkeypatch.setattr(training, "solve_probabilities", fake)
    report = run.step()  # accuracies 0 >= threshold 0: a culture phase
    assert isinstance(report, training.CultureReport)
    logged = json.loads((tmp_path / "run" / "culture_log.jsonl").read_text().splitlines()[0])
    rule = logged["rule"]
    assert rule["max_fail"] == 1 and rule["understands"] == 0.95

    train, test = load_c_quizzes(tmp_path / "run" / "c_quizzes.pth")
    kept = torch.cat([train, test])
    assert len(kept) == report.kept == logged["kept"] > 0
    assert len(train) <= 6 and len(test) <= 2
    Q.validate_quizzes(kept)
    assert not Q.is_trivial(kept).any()
    # every kept quiz satisfies the logged rule; every candidate it accepts was kept (up to the quota)
    probas = _fake_probabilities(kept, 3)
    verdict = validation_rule(probas, understands=rule["understands"], not_understands=rule["not_understands"],
                              max_fail=rule["max_fail"])
    assert verdict["kept"].all()
    candidates = torch.cat(seen)
    accepted = validation_rule(_fake_probabilities(candidates, 3), understands=0.95, not_understands=0.5,
                               max_fail=1)["kept"]
    assert min(int(accepted.sum()), 8) == len(kept)
    # counts add up
    assert report.generated == report.trivial + len(candidates)
    assert report.undecided + report.too_easy + report.too_hard + int(accepted.sum()) == len(candidates)
    # the sidecar matches the kept quizzes one to one: phase, generator, probabilities under the rule
    info = json.loads((tmp_path / "run" / training.C_QUIZZES_INFO_FILE).read_text())
    assert len(info["train"]) == len(train) and len(info["test"]) == len(test)
    for quiz, record in zip(kept, info["train"] + info["test"]):
        assert record["phase"] == 1 and record["round"] == 0 and 0 <= record["generator"] < 3
        assert record["solve_probabilities"] == pytest.approx(_fake_probabilities(quiz[None], 3)[0].tolist())
    # accuracies reset: every model retrains
    assert run.accuracies == [0.0, 0.0, 0.0]


def test_solve_probabilities_is_the_two_way_product(tmp_path):
    from culture.evaluation import predicted_log_probs
    from culture.world import generate_quizzes

    run = CultureRun.create(tmp_path / "run", tiny_config())
    quizzes = generate_quizzes(6, tasks=["frame"], seed=1)
    g = torch.Generator().manual_seed(0)
    p = training.solve_probabilities(run.models, quizzes, noise=0.0, rounds=2, generator=g)
    assert p.shape == (6, 2) and ((p >= 0) & (p <= 1)).all()
    m = run.models[0]
    expected = (predicted_log_probs(m, Q.reconfigure(quizzes, Q.STRUCTURES[0]))
                + predicted_log_probs(m, Q.reconfigure(quizzes, Q.STRUCTURES[1]))).exp()
    assert torch.allclose(p[:, 0], expected, rtol=1e-5, atol=1e-30)


def test_generate_candidates_are_valid_canonical_quizzes(tmp_path):
    run = CultureRun.create(tmp_path / "run", tiny_config())
    g = torch.Generator().manual_seed(0)
    c = training.generate_candidates(run.models[0], 5, temperature_hot=1.5, temperature_cold=1.0, generator=g)
    Q.validate_quizzes(c)
    assert (Q.block_markers(c) == torch.tensor(Q.CANONICAL)).all()


def test_init_from_a_source_copies_the_weights(tmp_path):
    first = CultureRun.create(tmp_path / "a", tiny_config())
    first.train(max_rounds=1)
    second = CultureRun.create(tmp_path / "b", tiny_config(seed=99), init_from=str(tmp_path / "a"))
    for k in range(2):
        for name, value in first.models[k].state_dict().items():
            assert torch.equal(value, second.models[k].state_dict()[name])
    assert second.accuracies == pytest.approx(first.accuracies)
    # the epoch counts carry on (next epochs draw new quizzes, not the source's first ones again)
    assert second.epochs == first.epochs and sum(second.epochs) == 1
    k = first.epochs.index(1)
    first_data = CultureRun.create(tmp_path / "a0", tiny_config()).epoch_data(k)
    assert not torch.equal(second.epoch_data(k), first_data)
    # and the run records where it came from
    record = json.loads((tmp_path / "b" / "train_config.json").read_text())["init_from"]
    assert record["source"] == str(tmp_path / "a") and len(record["stages"]) == 1
    assert record["stages"][0]["rounds"] == 1 and record["stages"][0]["epochs"] == first.epochs
    with pytest.raises(TrainingError, match="another architecture"):
        CultureRun.create(tmp_path / "c", tiny_config(dim_model=64), init_from=str(tmp_path / "a"))


def test_target_greedy_accuracy_stops_and_a_resume_is_recorded(tmp_path):
    out = tmp_path / "run"
    run = CultureRun.create(out, tiny_config(), command="culture-interp train --out run")
    run.train(max_rounds=2)
    assert all(0.0 <= g <= 1.0 for g in run.greedy_accuracies) and len(run.greedy_accuracies) == 2
    assert run.should_stop(None) is None
    resumed = CultureRun.resume(out, command="culture-interp train --out run --resume --target-greedy-accuracy 0",
                                target_greedy_accuracy=0.0)
    assert resumed.train() == "every model reached greedy accuracy 0.0" and resumed.round == 2
    record = json.loads((out / "train_config.json").read_text())
    assert record["target_greedy_accuracy"] == 0.0 and record["command"] == "culture-interp train --out run"
    assert record["resumes"] == [{"round": 2, "command": "culture-interp train --out run --resume "
                                                        "--target-greedy-accuracy 0"}]
    assert all(g["lr"] == run.config.lr for opt in resumed.optimizers for g in opt.param_groups)
    annealed = CultureRun.resume(out, lr=run.config.lr / 10)  # Adam moments kept, new lr
    assert all(g["lr"] == pytest.approx(run.config.lr / 10) for opt in annealed.optimizers for g in opt.param_groups)
    assert torch.equal(annealed.optimizers[0].state_dict()["state"][0]["exp_avg"],
                       resumed.optimizers[0].state_dict()["state"][0]["exp_avg"])
    resumed.greedy_accuracies[0] = -1.0  # one model below the target: keep training
    assert resumed.should_stop(None) is None
    stages = training.run_stages(record, torch.load(out / "train_state.pth", weights_only=True))
    assert stages[-1]["resumes"] == record["resumes"]


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: v.detach().clone() for n, v in model.state_dict().items()}


def test_weight_average_is_evaluated_saved_and_resumed(tmp_path):
    out = tmp_path / "run"
    decay = 0.9
    run = CultureRun.create(out, tiny_config(nb_models=1, ema_decay=decay))
    start = _weights(run.models[0])
    # the average after one epoch of two steps: copy at step 1, then one lerp
    steps: list[dict] = []
    original_step = run.optimizers[0].step

    def recording_step(*a, **kw):
        result = original_step(*a, **kw)
        steps.append(_weights(run.models[0]))
        return result

    run.optimizers[0].step = recording_step
    run.step()
    saved_rng = torch.get_rng_state()  # what the save recorded (building a model below draws from it)
    assert len(steps) == 2
    expected = {n: decay * steps[0][n] + (1 - decay) * steps[1][n] for n in start}
    average = _weights(run.published(0))
    for n in start:
        assert torch.allclose(average[n], expected[n], atol=1e-6)
    assert any(not torch.equal(average[n], steps[1][n]) for n in start)  # the average is not the raw model

    # the checkpoint holds the average; its accuracy is the average's
    saved, _ = load_mygpt(out / "gpt_000.pth")
    for n, v in saved.state_dict().items():
        assert torch.equal(v, average[n])
    assert run.accuracies[0] == pytest.approx(run.evaluate_model(run.published(0))["accuracy"])

    # resume: raw weights from the state, the average from the checkpoint, and
    # the next update averages (does not copy)
    resumed = CultureRun.resume(out)
    for n, v in resumed.models[0].state_dict().items():
        assert torch.equal(v, steps[1][n])
    for n, v in resumed.published(0).state_dict().items():
        assert torch.equal(v, average[n])
    r1 = run.step()
    torch.set_rng_state(saved_rng)
    r2 = resumed.step()
    assert r1.accuracy == pytest.approx(r2.accuracy)
    for n, v in run.published(0).state_dict().items():
        assert torch.allclose(v, resumed.published(0).state_dict()[n], atol=1e-6)

    # 0 turns averaging off: training continues from the saved average
    plain = CultureRun.resume(out, ema_decay=0.0)
    assert plain.averages == [] and plain.published(0) is plain.models[0]
    for n, v in plain.models[0].state_dict().items():
        assert torch.equal(v, resumed.published(0).state_dict()[n])


def test_train_structures_restricts_the_training_quizzes(tmp_path):
    run = CultureRun.create(tmp_path / "run", tiny_config(train_structures=(1, 2)))
    data = run.epoch_data(0)
    index = Q.structure_index(data)
    assert set(index.tolist()) == {0, 1}  # structures 1 and 2 only, both drawn
    default = CultureRun.create(tmp_path / "all", tiny_config(train_samples=200))
    assert set(Q.structure_index(default.epoch_data(0)).tolist()) == {0, 1, 2, 3, 4}
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["train_structures"] == [1, 2]
    assert CultureRun.resume(tmp_path / "run").config.train_structures == (1, 2)
    with pytest.raises(TrainingError, match="unknown structure 6"):
        CultureRun.create(tmp_path / "bad", tiny_config(train_structures=(1, 6)))


def test_two_culture_phases_with_retraining_and_a_resume_between(tmp_path, monkeypatch):
    """Forced threshold: train both models, phase 1, (kill + resume), retrain both, phase 2.
    The kept quizzes satisfy the logged rule, the sidecar matches them one to one (phase,
    round, generator, probabilities) across the resume, and c_quizzes.pth is the reference layout."""
    cfg = tiny_config(culture=True, threshold=0.5, culture_batch=40, culture_max_batches=2,
                      c_quizzes_train=3, c_quizzes_test=1, max_fail=1, nb_models=3)
    monkeypatch.setattr(training, "solve_probabilities", lambda models, q, **kw: _fake_probabilities(q, len(models)))
    monkeypatch.setattr(CultureRun, "evaluate_model",
                        lambda self, model: {"perplexity": 1.0, "accuracy": 1.0, "greedy_accuracy": 1.0})
    out = tmp_path / "run"
    run = CultureRun.create(out, cfg)
    kinds = [type(run.step()).__name__ for _ in range(4)]  # 3 epochs, then phase 1
    assert kinds == ["EpochReport"] * 3 + ["CultureReport"]
    run = CultureRun.resume(out)  # as after a kill
    kinds = [type(run.step()).__name__ for _ in range(4)]  # every model retrains, then phase 2
    assert kinds == ["EpochReport"] * 3 + ["CultureReport"]

    obj = torch.load(out / "c_quizzes.pth", weights_only=True)
    assert isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(x, list) for x in obj)
    train, test = load_c_quizzes(out / "c_quizzes.pth")
    info = json.loads((out / training.C_QUIZZES_INFO_FILE).read_text())
    assert len(info["train"]) == len(train) and len(info["test"]) == len(test)
    phases = [r["phase"] for r in info["train"] + info["test"]]
    assert set(phases) == {1, 2}
    assert {r["round"] for r in info["train"] if r["phase"] == 2} == {7}
    for quiz, r in zip(torch.cat([train, test]), info["train"] + info["test"]):
        probas = torch.tensor([r["solve_probabilities"]])
        assert torch.allclose(probas, _fake_probabilities(quiz[None], 3), atol=1e-6)
        assert validation_rule(probas, understands=0.95, not_understands=0.5, max_fail=1)["kept"].all()
    logged = [json.loads(line) for line in (out / "culture_log.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in logged] == [3, 7]
    assert sum(entry["kept"] for entry in logged) == len(train) + len(test)
