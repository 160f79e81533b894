"""What the culture invents: the c-quizzes of a model source, read against the world.

:func:`culture_report` answers, for every c-quiz of a source (the bundled zoo,
a training run, the published models):

- **which world rule explains it** -- the per-quiz oracle
  (:mod:`culture.world.oracle`) tries all fifteen tasks on A -> f(A) and
  B -> f(B); a c-quiz that matches *no* rule is a candidate for a new
  concept. Control: the same oracle on world quizzes of the source's tasks
  (each must match its own task);
- **how it looks beside world quizzes** -- cells changed A -> f(A) and
  B -> f(B), colours used, trivial share, grid entropy, each with a bootstrap
  interval, for c-quizzes and for world quizzes of the source's tasks;
- **who fails it** -- each model's greedy and expected accuracy on the
  c-quizzes (the evaluation protocol, :func:`culture.evaluation.evaluate`)
  beside its accuracy on world quizzes, and each model's probability of
  solving each c-quiz both ways (the keep rule's quantity,
  :func:`culture.training.solve_probabilities`) now and, from the sidecar
  ``c_quizzes_info.json``, when the quiz was kept: the "one model fails"
  structure of the culture.

:func:`save_gallery` draws the c-quizzes grouped by matching rule, each
titled with its phase, the model that made it and the models that fail it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from culture import quiz as Q
from culture.defaults import PROMPT_NOISE
from culture.errors import CultureError
from culture.intervals import mean_with_interval, share

NO_RULE = "no rule"
INFO_FILE = "c_quizzes_info.json"


class CultureReportError(CultureError):
    """The source has no c-quizzes, or its files disagree."""


# ------------------------------------------------------------------ per-quiz facts


def grid_entropy(grids: torch.Tensor) -> torch.Tensor:
    """(n, ...) Shannon entropy in bits of the colour histogram of each 10x10
    grid (the last two dimensions)."""
    flat = grids.reshape(-1, Q.N_CELLS)
    counts = torch.zeros(flat.shape[0], Q.N_COLORS).scatter_add_(1, flat.long(), torch.ones_like(flat, dtype=torch.float))
    p = counts / Q.N_CELLS
    h = -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(1)
    return h.reshape(grids.shape[:-2])


def quiz_statistics(quizzes: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-quiz statistics (canonical or any structure): cells changed
    A -> f(A) and B -> f(B), distinct non-empty colours over the four grids,
    trivial (A = f(A) or B = f(B)), mean grid entropy (bits)."""
    g = Q.canonical_grids(Q.validate_quizzes(quizzes))  # (n, 4, 10, 10)
    n = g.shape[0]
    used = torch.zeros(n, Q.N_COLORS, dtype=torch.bool)
    used.scatter_(1, g.reshape(n, -1).long(), True)
    return {
        "cells changed A->f(A)": (g[:, 0] != g[:, 1]).reshape(n, -1).sum(1).numpy(),
        "cells changed B->f(B)": (g[:, 2] != g[:, 3]).reshape(n, -1).sum(1).numpy(),
        "colours used": used[:, 1:].sum(1).numpy(),
        "trivial": Q.is_trivial(Q.reconfigure(quizzes, Q.CANONICAL)).numpy().astype(float),
        "grid entropy (bits)": grid_entropy(g).mean(1).numpy(),
    }


def classify_quizzes(quizzes: torch.Tensor, tasks=None) -> list[list[str]]:
    """For each quiz, the world tasks whose rule explains it (oracle)."""
    from culture.world.oracle import matching_tasks

    grids = Q.canonical_grids(Q.validate_quizzes(quizzes)).numpy()
    return [matching_tasks(g, tasks) for g in grids]


def match_label(matches: list[str]) -> str:
    return "+".join(matches) if matches else NO_RULE


def read_info(source, nb_train: int, nb_test: int) -> dict[str, list[dict]]:
    """The sidecar records of a source's c-quizzes (phase, generating model,
    solve probabilities when kept), trimmed/padded to the quizzes present."""
    from culture.training import read_c_quiz_info

    return read_c_quiz_info(source.file(INFO_FILE) if source.has_file(INFO_FILE) else None, nb_train, nb_test)


# ------------------------------------------------------------------ the report


def culture_report(source="bundled", *, models=None, tasks=None, num_world: int = 500, seed: int = 0,
                   noise: float = PROMPT_NOISE, averaging_rounds: int = 3, fail_below: float = 0.5,
                   batch_size: int = 100,
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The culture of ``source`` read against its world (see the module docstring).

    ``models``: model ids (default all); ``tasks``: the world tasks of the
    control (default the source's training tasks); ``num_world``: world quizzes
    of the control; ``fail_below``: a model fails a quiz when its solve
    probability is at most this (the keep rule's 0.5). Returns a JSON-ready dict.
    """
    from culture.evaluation import evaluate, make_test_set
    from culture.sources import load_culture, resolve_source
    from culture.training import solve_probabilities
    from culture.world import generate_quizzes_with_tasks, resolve_tasks, TASKS

    src = resolve_source(source)
    pair = src.c_quizzes()
    if pair is None or not (len(pair[0]) + len(pair[1])):
        raise CultureReportError(f"source {src.name} has no c-quizzes (c_quizzes.pth missing or empty)")
    train, test = pair
    info = read_info(src, len(train), len(test))
    quizzes = torch.cat([train, test])
    splits = ["train"] * len(train) + ["test"] * len(test)
    records = info["train"] + info["test"]
    phases = [r.get("phase") for r in records]
    tick = progress or (lambda *a: None)

    task_names = resolve_tasks(tasks if tasks else src.default_tasks())
    world, world_task = generate_quizzes_with_tasks(num_world, task_names, seed=seed)

    # which rule explains each quiz (and the oracle's control on world quizzes)
    tick("oracle", 0, 2)
    matches = classify_quizzes(quizzes)
    world_matches = classify_quizzes(world, tasks=TASKS)
    tick("oracle", 2, 2)
    own = sum(TASKS[int(t)] in m for t, m in zip(world_task, world_matches))
    classification = {
        "by_phase": _classification_by_phase(matches, phases, splits),
        "control_world": {
            "tasks": list(task_names),
            "matches_own_task": share(own, num_world),
            "matches_no_rule": share(sum(not m for m in world_matches), num_world),
        },
    }

    # statistics beside world quizzes
    c_stats, w_stats = quiz_statistics(quizzes), quiz_statistics(world)
    statistics = {name: {"culture": mean_with_interval(c_stats[name], seed=seed),
                         "world": mean_with_interval(w_stats[name], seed=seed)} for name in c_stats}

    # who fails which: accuracy by the evaluation protocol, solve probabilities as the keep rule
    loaded = load_culture(models, source=src)
    ids = [getattr(m, "model_id", i) for i, m in enumerate(loaded)]
    culture_set = make_test_set(len(quizzes), tasks=task_names, c_quizzes=quizzes, seed=seed, noise=noise,
                                c_quizzes_only=True)
    world_set = make_test_set(num_world, tasks=task_names, seed=seed, noise=noise)
    tick("evaluation", 0, 2)
    on_culture = evaluate(loaded, culture_set, batch_size=batch_size).to_dict()["models"]
    on_world = evaluate(loaded, world_set, batch_size=batch_size).to_dict()["models"]
    tick("evaluation", 1, 2)
    with torch.inference_mode():
        probas = solve_probabilities(loaded, quizzes, noise=noise, rounds=averaging_rounds,
                                     generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    tick("evaluation", 2, 2)
    fails_now = probas <= fail_below
    kept_probas = [r.get("solve_probabilities") for r in records]
    per_model = []
    for j, k in enumerate(ids):
        was = [p[j] <= fail_below for p in kept_probas if p is not None and j < len(p)]
        per_model.append({
            "model": k,
            "greedy_on_culture": share(round(on_culture[j]["greedy_accuracy"] * len(quizzes)), len(quizzes)),
            "expected_on_culture": on_culture[j]["expected_accuracy"],
            "greedy_on_world": share(round(on_world[j]["greedy_accuracy"] * num_world), num_world),
            "expected_on_world": on_world[j]["expected_accuracy"],
            "fails_now": share(int(fails_now[:, j].sum()), len(quizzes)),
            "failed_when_kept": share(sum(was), len(was)) if was else None,
            "generated": sum(r.get("generator") == j for r in records),
        })
    n_fail = fails_now.sum(1).tolist()
    fail_counts_now = {str(c): share(n_fail.count(c), len(n_fail)) for c in range(len(ids) + 1)}
    kept_fail = [sum(p_ <= fail_below for p_ in p) for p in kept_probas if p is not None]
    fail_counts_kept = ({str(c): share(kept_fail.count(c), len(kept_fail)) for c in range(len(ids) + 1)}
                        if kept_fail else None)

    per_quiz = []
    for i in range(len(quizzes)):
        kp = kept_probas[i]
        per_quiz.append({
            "split": splits[i], "index": i if splits[i] == "train" else i - len(train),
            "phase": phases[i], "generator": records[i].get("generator"),
            "matches": matches[i],
            "fails_now": [ids[j] for j in range(len(ids)) if bool(fails_now[i, j])],
            "failed_when_kept": None if kp is None else [ids[j] for j, p in enumerate(kp) if p <= fail_below],
            "solve_probabilities_now": [float(f"{float(p):.6f}") for p in probas[i]],
        })
    return {
        "source": src.name,
        "c_quizzes": {"train": len(train), "test": len(test)},
        "settings": {"num_world": num_world, "seed": seed, "noise": noise, "averaging_rounds": averaging_rounds,
                     "fail_below": fail_below, "tasks": list(task_names), "models": ids},
        "classification": classification,
        "statistics": statistics,
        "models": per_model,
        "failing_models_per_quiz": {"now": fail_counts_now, "when_kept": fail_counts_kept},
        "quizzes": per_quiz,
    }


def _classification_by_phase(matches, phases, splits) -> list[dict]:
    rows = []
    for phase in sorted(set(phases), key=lambda p: (p is None, p or 0)):
        for split in ("train", "test", "all"):
            idx = [i for i, (p, s) in enumerate(zip(phases, splits)) if p == phase and (split == "all" or s == split)]
            if not idx or (split == "all" and len({splits[i] for i in idx}) < 2):
                continue
            labels = Counter(match_label(matches[i]) for i in idx)
            rows.append({"phase": phase, "split": split, "n": len(idx),
                         "no_rule": share(labels.get(NO_RULE, 0), len(idx)),
                         "by_rule": dict(labels.most_common())})
    idx = list(range(len(matches)))
    labels = Counter(match_label(m) for m in matches)
    rows.append({"phase": "all", "split": "all", "n": len(idx), "no_rule": share(labels.get(NO_RULE, 0), len(idx)),
                 "by_rule": dict(labels.most_common())})
    return rows


# ------------------------------------------------------------------ gallery


def save_gallery(report: dict, source, out_dir, *, per_group: int = 6, cell_px: int = 12) -> list[Path]:
    """PNG galleries of the c-quizzes grouped by matching rule: one picture
    ``gallery_<rule>.png`` per group (at most ``per_group`` quizzes each),
    each quiz titled with split, phase, generating model and failing models."""
    from culture.render import save_quizzes_png
    from culture.sources import resolve_source

    train, test = resolve_source(source).c_quizzes()
    quizzes = torch.cat([train, test])
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(report["quizzes"]):
        groups.setdefault(match_label(q["matches"]), []).append(i)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label, idx in sorted(groups.items(), key=lambda kv: (kv[0] != NO_RULE, -len(kv[1]), kv[0])):
        idx = idx[:per_group]
        titles = []
        for i in idx:
            q = report["quizzes"][i]
            fails = ", ".join(map(str, q["fails_now"])) or "none"
            gen = "?" if q["generator"] is None else q["generator"]
            titles.append(f"{q['split']} #{q['index']}  phase {q['phase']}  made by model {gen}  "
                          f"fails: model {fails}  rule: {label}")
        safe = label.replace("+", "_").replace(" ", "_")
        written.append(save_quizzes_png(quizzes[idx], out_dir / f"gallery_{safe}.png", labels=titles,
                                        cell_px=cell_px))
    return written


# ------------------------------------------------------------------ can this zoo make a culture?


def culture_yield(source="bundled", *, models=None, candidates: int = 100, num_world: int = 100, tasks=None,
                  seed: int = 0, temperature_hot: float = 1.5, temperature_cold: float = 1.0,
                  understands: float = 0.95, not_understands: float = 0.5, max_fail: int = 2,
                  averaging_rounds: int = 3, noise: float = PROMPT_NOISE, batch_size: int = 100,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """What the culture phase's keep rule makes of ``candidates`` quizzes
    generated by the source's models (as :func:`culture.training.culture_phase`
    generates them, each model in turn) and, as the control, of ``num_world``
    world quizzes of the source's tasks: verdict counts (kept, trivial,
    undecided, solved by all, failed by too many) with intervals, and each
    model's solve-probability quantiles. A zoo whose models rarely reach
    ``understands`` even on world quizzes cannot keep c-quizzes by this rule."""
    from culture.sources import load_culture, resolve_source
    from culture.training import generate_candidates, solve_probabilities, validation_rule
    from culture.world import generate_quizzes, resolve_tasks

    src = resolve_source(source)
    loaded = load_culture(models, source=src)
    ids = [getattr(m, "model_id", i) for i, m in enumerate(loaded)]
    g = torch.Generator().manual_seed(seed)
    tick = progress or (lambda *a: None)
    made, makers = [], []
    per_model = -(-candidates // len(loaded))
    for j, model in enumerate(loaded):
        tick("generating", j, len(loaded))
        with torch.inference_mode():
            made.append(generate_candidates(model, per_model, temperature_hot=temperature_hot,
                                            temperature_cold=temperature_cold, generator=g))
        makers += [ids[j]] * per_model
    tick("generating", len(loaded), len(loaded))
    cand = torch.cat(made)[:candidates]
    world = generate_quizzes(num_world, resolve_tasks(tasks if tasks else src.default_tasks()), seed=seed)
    out = {"source": src.name, "models": ids,
           "settings": {"candidates": candidates, "num_world": num_world, "seed": seed,
                        "temperature_hot": temperature_hot, "temperature_cold": temperature_cold,
                        "understands": understands, "not_understands": not_understands, "max_fail": max_fail,
                        "averaging_rounds": averaging_rounds, "noise": noise}}
    for name, quizzes in (("candidates", cand), ("world", world)):
        tick(f"scoring {name}", 0, 1)
        trivial = Q.is_trivial(quizzes)
        kept_q = quizzes[~trivial]
        with torch.inference_mode():
            probas = solve_probabilities(loaded, kept_q, noise=noise, rounds=averaging_rounds, generator=g,
                                         batch_size=batch_size) if len(kept_q) else torch.zeros(0, len(loaded))
        verdict = validation_rule(probas, understands=understands, not_understands=not_understands,
                                  max_fail=max_fail)
        n = len(quizzes)
        q = np.quantile(probas.numpy(), [0.1, 0.5, 0.9], axis=0) if len(probas) else np.zeros((3, len(loaded)))
        out[name] = {
            "n": n,
            "verdicts": {"trivial": share(int(trivial.sum()), n),
                         **{k: share(int(v.sum()), n) for k, v in verdict.items()}},
            "solves": {str(k): share(int((probas[:, j] >= understands).sum()), n) for j, k in enumerate(ids)},
            "fails": {str(k): share(int((probas[:, j] <= not_understands).sum()), n) for j, k in enumerate(ids)},
            "solve_probability_quantiles": {str(k): {"p10": float(q[0, j]), "median": float(q[1, j]),
                                                     "p90": float(q[2, j])} for j, k in enumerate(ids)},
        }
        tick(f"scoring {name}", 1, 1)
    return out
