"""Evaluation of culture GPTs: the reference's test protocol, scored in one
teacher-forced pass.

Protocol (REFERENCE.md section 5, from the reference ``quiz_machine.py``):

* :func:`make_test_set` -- n world quizzes of the eight tasks, mixed with test
  c-quizzes when given (at most n//2 of them; the world quizzes make up the
  rest), shuffled; each quiz reconfigured to a structure drawn uniformly from
  the four deterministic ones, then prompt noise (:data:`culture.defaults.PROMPT_NOISE`) on the noised block of
  structures 1 and 2.
* Perplexity: exp(mean token cross-entropy over all 404 positions of every
  quiz, teacher-forced), the target being the (noised) test quiz itself.
* The reference's accuracy samples the predicted block at temperature 1 and
  counts a quiz correct when every predicted cell equals the target. Two exact
  quantities come out of one teacher-forced forward, no generation needed:

  - greedy accuracy: the argmax equals the target at every predicted cell
    (exactly the accuracy of greedy decoding, quiz by quiz);
  - expected sampled accuracy: the mean over quizzes of
    exp(sum of log p(target cell)) over the predicted cells -- the probability
    that sampling at temperature 1 reproduces the target, i.e. the expectation
    of the reference's sampled accuracy.

  ``evaluate(..., generate=True)`` also samples (temperature 1, KV cache) for
  the reference's own, noisy, number.

* Two metric families (:func:`cell_scores`, :func:`cell_metrics`): every
  loss and accuracy on all predicted cells and on the *transform cells*, the
  predicted cells that differ from the paired grid of the clean quiz
  (:func:`culture.quiz.transform_mask`) -- about a tenth of an answer, the
  rest being copies that dilute every average. Each with a 95% interval
  (:mod:`culture.intervals`); :func:`cell_metrics` with a baseline gives
  paired changes, :func:`loss_recovered` the loss recovered with its floor.

Models: :class:`culture.mygpt.MyGPT`, TransformerLens ``HookedTransformer``
(from ``culture.hooked``), or any callable quizzes -> logits in the reference
convention (see :func:`culture.generation.logits_fn`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from culture.defaults import PROMPT_NOISE, TEST_SAMPLES
from culture.errors import CultureError
from culture.generation import DEFAULT_BATCH_SIZE, generate_blocks, logits_fn, model_device
from culture.quiz import (
    BLOCK_LEN,
    EVAL_STRUCTURES,
    QUIZ_LEN,
    STRUCTURES,
    Structure,
    add_prompt_noise,
    ar_mask,
    parse_structure,
    random_structures,
    structure_index,
    transform_mask,
    validate_quizzes,
)
from culture.settings import QUIZ_KINDS

__all__ = [
    "source_test_set",
    "C_QUIZ_LABEL",
    "TestSet",
    "ModelEval",
    "EvalResults",
    "EvaluationError",
    "make_test_set",
    "score_quizzes",
    "predicted_log_probs",
    "cell_scores",
    "cell_metrics",
    "loss_recovered",
    "group_metrics",
    "CELL_FAMILIES",
    "summarize",
    "evaluate",
    "logits_fn",
]

#: label of the c-quizzes in a test set (world quizzes carry their task name)
C_QUIZ_LABEL = "culture"

Progress = Callable[[str, int, int], None]  # (description, done, total)


class EvaluationError(CultureError, ValueError):
    """Bad evaluation arguments (sizes, structures, devices...)."""


# ------------------------------------------------------------------ test set


@dataclass
class TestSet:
    """Test quizzes in the reference protocol.

    ``quizzes``: (n, 404) what the model sees -- each quiz in its structure,
    with prompt noise; it is also the perplexity target (as in the reference).
    ``targets``: the same quizzes before noise; the predicted cells (the only
    ones accuracy looks at) are identical in both, noise never touching a
    predicted block. ``labels``: task name per quiz, ``"culture"`` for
    c-quizzes. ``structures``: (n,) 0-based index into
    :data:`culture.quiz.STRUCTURES` (structure k of REFERENCE.md = index k-1).
    """

    __test__ = False  # not a pytest class

    quizzes: torch.Tensor
    targets: torch.Tensor
    labels: list[str]
    structures: torch.Tensor
    tasks: tuple[str, ...] = ()
    seed: int | None = None
    noise: float = 0.0
    n_c_quizzes: int = 0

    def __len__(self) -> int:
        return self.quizzes.shape[0]

    @property
    def label_names(self) -> list[str]:
        """Distinct labels: world tasks in TASKS order, then others, then culture."""
        try:
            from culture.world import TASKS
        except ImportError:  # pragma: no cover - world is part of the package
            TASKS = ()
        present = set(self.labels)
        ordered = [t for t in TASKS if t in present]
        ordered += sorted(present - set(ordered) - {C_QUIZ_LABEL})
        if C_QUIZ_LABEL in present:
            ordered.append(C_QUIZ_LABEL)
        return ordered

    def subset(self, index) -> "TestSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return TestSet(self.quizzes[index], self.targets[index], [self.labels[int(i)] for i in index],
                       self.structures[index], self.tasks, self.seed, self.noise,
                       sum(self.labels[int(i)] == C_QUIZ_LABEL for i in index))

    def settings(self) -> dict:
        return {
            "num_samples": len(self),
            "num_world_quizzes": len(self) - self.n_c_quizzes,
            "num_c_quizzes": self.n_c_quizzes,
            "tasks": list(self.tasks),
            "seed": self.seed,
            "prompt_noise": self.noise,
            "structures": {str(k + 1): STRUCTURES[k].name for k in sorted(set(self.structures.tolist()))},
        }


def _as_c_quizzes(c_quizzes) -> torch.Tensor | None:
    if c_quizzes is None:
        return None
    if isinstance(c_quizzes, (list, tuple)):
        parts = [torch.as_tensor(c).reshape(-1, QUIZ_LEN) for c in c_quizzes]
        if not parts:
            return None
        c_quizzes = torch.cat(parts)
    c = validate_quizzes(c_quizzes, what="c-quizzes")
    return c if c.shape[0] else None


def _structure_list(structures) -> list[Structure]:
    out = []
    for s in structures:
        try:
            s = parse_structure(s)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        if s not in STRUCTURES:
            raise EvaluationError(f"structure {s.name} is not one of the five of the published run")
        out.append(s)
    if not out:
        raise EvaluationError("no structure given")
    return out


def make_test_set(
    n: int = TEST_SAMPLES,
    tasks=None,
    c_quizzes=None,
    seed: int = 0,
    noise: float = PROMPT_NOISE,
    structures: Sequence = EVAL_STRUCTURES,
    c_quizzes_only: bool = False,
) -> TestSet:
    """The reference's test set: ``n`` quizzes (see the module docstring).

    ``tasks``: world tasks (default the eight of the published models).
    ``c_quizzes``: test c-quizzes, a (k, 404) tensor or a list of them (as in
    c_quizzes.pth); at most n//2 are kept (a random subset), world quizzes
    fill the rest. ``structures``: those drawn uniformly (default the four
    deterministic ones; give all of ``STRUCTURES`` for the original run's mix,
    where structure-5 quizzes count in perplexity but not in accuracy).
    ``c_quizzes_only``: no world quizzes -- the test set is the c-quizzes
    (at most n, in random structures with prompt noise as usual).
    Same arguments -> same test set.
    """
    from culture.world import TASKS, generate_quizzes_with_tasks, resolve_tasks

    n = int(n)
    if n < 1:
        raise EvaluationError(f"the test set needs at least 1 quiz, got n={n}")
    if not (0.0 <= float(noise) <= 1.0):
        raise EvaluationError(f"prompt noise must be a probability in [0, 1], got {noise}")
    structs = _structure_list(structures)
    task_names = resolve_tasks(tasks)
    g = torch.Generator().manual_seed(int(seed))

    c = _as_c_quizzes(c_quizzes)
    if c_quizzes_only:
        if c is None or not len(c):
            raise EvaluationError("no c-quizzes to build a culture-only test set from")
        n = min(n, c.shape[0])
    cap = n if c_quizzes_only else n // 2
    if c is not None and c.shape[0] > cap:
        c = c[torch.randperm(c.shape[0], generator=g)[:cap]]
    n_c = 0 if c is None else c.shape[0]
    # world quizzes are i.i.d., so generating n - n_c of them is the reference's
    # "n generated, subsampled to n - n_c"
    world, task_index = generate_quizzes_with_tasks(n - n_c, task_names, seed=int(seed))
    labels = [TASKS[int(i)] for i in task_index] + [C_QUIZ_LABEL] * n_c
    quizzes = world.long() if c is None else torch.cat([world.long(), c])

    perm = torch.randperm(n, generator=g)
    quizzes = quizzes[perm]
    labels = [labels[int(i)] for i in perm]
    targets, _ = random_structures(quizzes, structs, generator=g)
    noised = add_prompt_noise(targets, float(noise), generator=g)
    return TestSet(noised, targets, labels, structure_index(targets), tuple(task_names), int(seed),
                   float(noise), n_c)


# -------------------------------------------------------------------- scores




def source_test_set(source, n: int, tasks=None, *, c_quizzes: bool = True, seed: int = 0,
                    noise: float = PROMPT_NOISE, quizzes: str = "both") -> TestSet:
    """:func:`make_test_set` with the test c-quizzes of a model source (a
    :class:`culture.sources.ModelSource` or anything ``resolve_source`` takes)
    mixed in, at most half, when ``c_quizzes`` and the source has some.

    ``quizzes`` (:data:`QUIZ_KINDS`): ``"both"`` that mix; ``"world"`` world
    quizzes only; ``"culture"`` the source's test c-quizzes only (at most n;
    an error when it has none)."""
    from culture.sources import resolve_source

    if quizzes not in QUIZ_KINDS:
        raise EvaluationError(f"unknown quiz kind {quizzes!r} (choose from {', '.join(QUIZ_KINDS)})")
    src = resolve_source(source)
    want = quizzes == "culture" or (quizzes == "both" and c_quizzes)
    pair = src.c_quizzes() if want else None
    if quizzes == "culture" and (pair is None or not len(pair[1])):
        raise EvaluationError(f"source {src.name} has no test c-quizzes "
                              "(--quizzes culture needs them)")
    return make_test_set(n, tasks=tasks, c_quizzes=None if pair is None else pair[1], seed=seed, noise=noise,
                         c_quizzes_only=quizzes == "culture")


def teacher_forced(quizzes, targets=None) -> torch.Tensor:
    """The teacher-forced sequences: ``quizzes`` with their predicted cells
    taken from ``targets`` (what :func:`score_quizzes` scores). ``quizzes``
    may be a :class:`TestSet` (its quizzes and targets)."""
    if isinstance(quizzes, TestSet):
        quizzes, targets = quizzes.quizzes, quizzes.targets
    q = validate_quizzes(quizzes)
    if targets is None:
        return q
    t = validate_quizzes(targets, what="targets")
    if t.shape != q.shape:
        raise EvaluationError(f"targets {tuple(t.shape)} and quizzes {tuple(q.shape)} differ in shape")
    if not torch.equal(q[:, ::BLOCK_LEN], t[:, ::BLOCK_LEN]):
        raise EvaluationError("targets and quizzes are not in the same structures")
    return torch.where(ar_mask(q), t, q)


def deterministic_mask(seq: torch.Tensor) -> torch.Tensor:
    """(n,) bool: the quiz's structure predicts one block (counts for accuracy;
    the reference leaves structure 5 out)."""
    idx = structure_index(seq)
    table = torch.tensor([s.deterministic for s in STRUCTURES] + [True])
    return table[idx]


def score_quizzes(
    model,
    quizzes,
    targets=None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device=None,
    progress: Callable[[int, int], None] | None = None,
    batch_hooks: Callable[[torch.Tensor], Sequence] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-quiz scores from one teacher-forced forward per batch.

    ``quizzes``: (n, 404), or a :class:`TestSet` (then ``targets`` come from
    it). The sequence scored is ``quizzes`` with its predicted cells replaced
    by ``targets`` when given. Returns CPU tensors (n,):

    * ``ce``: mean token cross-entropy over the 404 positions (perplexity =
      exp(mean of ce) -- every quiz has the same length);
    * ``greedy_correct``: argmax == target at every predicted cell;
    * ``log_prob``: sum of log p(target) over the predicted cells
      (exp(log_prob) = probability that temperature-1 sampling is right);
    * ``n_wrong``: predicted cells where the argmax differs from the target;
    * ``n_predicted``; ``transform_log_prob``, ``transform_n_wrong``,
      ``n_transform``: the same on the *transform cells* (predicted cells
      that differ from the paired grid of the clean ``targets``, see
      :func:`culture.quiz.transform_mask`; without ``targets``, of
      ``quizzes``) -- see :func:`cell_scores`;
    * ``deterministic``: the structure predicts one block (accuracy counts it).

    ``batch_hooks`` (TransformerLens models only): called with the row
    indices (into the test set) of each batch, returns the ``fwd_hooks`` for
    that batch's forward -- for edits that differ per quiz (mean ablation per
    structure, resampling from other quizzes).
    """
    if isinstance(quizzes, TestSet):
        quizzes, targets = quizzes.quizzes, quizzes.targets
    seq = teacher_forced(quizzes, targets)
    if batch_size < 1:
        raise EvaluationError(f"batch size must be >= 1, got {batch_size}")
    device = model_device(model) if device is None else torch.device(device)
    fn = logits_fn(model)
    mask = ar_mask(seq)
    changed = transform_mask(seq, paired=seq if targets is None else validate_quizzes(targets, what="targets"))
    out: dict[str, list] = {}
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.inference_mode():
            done = 0
            for x, m, t in zip(seq.split(batch_size), mask.split(batch_size), changed.split(batch_size)):
                rows = torch.arange(done, done + x.shape[0])
                x = x.to(device)
                if batch_hooks is not None:
                    with model.hooks(fwd_hooks=list(batch_hooks(rows))):
                        logits = fn(x)
                else:
                    logits = fn(x)
                for k, v in cell_scores(logits, x, m.to(device), t.to(device)).items():
                    out.setdefault(k, []).append(v.cpu())
                done += x.shape[0]
                if progress is not None:
                    progress(done, seq.shape[0])
    finally:
        if was_training:
            model.train()
    scores = {k: torch.cat(v) for k, v in out.items()}
    if not out:
        scores = {k: torch.empty(0) for k in _SCORE_KEYS}
    scores["deterministic"] = deterministic_mask(seq)
    return scores


#: per-quiz tensors of :func:`cell_scores`
_SCORE_KEYS = ("ce", "greedy_correct", "log_prob", "n_wrong", "n_predicted", "transform_log_prob",
               "transform_n_wrong", "n_transform")


def cell_scores(logits: torch.Tensor, sequences: torch.Tensor, predicted: torch.Tensor,
                transform: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-quiz scores of one batch of teacher-forced logits, on the predicted
    cells and on the transform cells (the reusable core of every loss and
    accuracy in the toolkit; :func:`cell_metrics` turns them into metrics).

    ``logits`` (b, 404, vocab) in the reference convention (position t
    predicts token t); ``sequences`` (b, 404) the targets; ``predicted`` and
    ``transform`` (b, 404) bool masks (:func:`culture.quiz.ar_mask`,
    :func:`culture.quiz.transform_mask` against the clean quizzes). Returns
    (b,) tensors: ``ce`` (mean cross-entropy over all 404 positions),
    ``log_prob`` / ``transform_log_prob`` (sum of log p(target) over the
    family's cells), ``n_wrong`` / ``transform_n_wrong`` (cells whose argmax
    is not the target), ``n_predicted`` / ``n_transform`` (cells in the
    family), ``greedy_correct`` (no predicted cell wrong).
    """
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    token_lp = logp.gather(-1, sequences.unsqueeze(-1)).squeeze(-1)  # (b, 404)
    miss = logits.argmax(-1) != sequences
    zero = torch.zeros_like(token_lp)
    wrong = miss & predicted
    return {
        "ce": -token_lp.mean(1),
        "greedy_correct": ~wrong.any(1),
        "log_prob": torch.where(predicted, token_lp, zero).sum(1),
        "n_wrong": wrong.sum(1),
        "n_predicted": predicted.sum(1),
        "transform_log_prob": torch.where(transform, token_lp, zero).sum(1),
        "transform_n_wrong": (miss & transform).sum(1),
        "n_transform": transform.sum(1),
    }


def predicted_log_probs(model, quizzes, targets=None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                        device=None) -> torch.Tensor:
    """(n,) summed log-probability of the predicted cells (from each quiz's
    structure), teacher-forced: the reference's ``models_logprobas`` for one
    model. exp() of it is the probability that sampling solves the quiz."""
    return score_quizzes(model, quizzes, targets, batch_size=batch_size, device=device)["log_prob"]


def generated_correct(model, quizzes, targets=None, *, temperature: float = 1.0,
                      generator: torch.Generator | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      use_cache: bool = True, progress: Callable[[int, int], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's accuracy test: the predicted block(s) generated (sampling
    at ``temperature``, KV cache) and compared with the target at every cell.
    Returns (correct (n,) bool, generated quizzes (n, 404))."""
    seq = teacher_forced(quizzes, targets)
    gen = generate_blocks(model, seq, ar_mask(seq), temperature, use_cache=use_cache, generator=generator,
                          batch_size=batch_size, progress=progress)
    return (gen == seq).all(1), gen


# ------------------------------------------------------------------ summaries


def _mean(x: torch.Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def _perplexity(ce: torch.Tensor) -> float | None:
    if not ce.numel():
        return None
    m = float(ce.double().mean())
    return math.exp(m) if m < 700 else float("inf")


#: the two metric families: every predicted cell, and the transform cells
#: (predicted cells that differ from the paired grid) -> the score keys of each
CELL_FAMILIES = {
    "all_cells": ("log_prob", "n_wrong", "n_predicted"),
    "transform_cells": ("transform_log_prob", "transform_n_wrong", "n_transform"),
}


def _rows(scores: dict, index) -> torch.Tensor:
    n = scores["ce"].shape[0]
    if index is None:
        return torch.arange(n)
    index = torch.as_tensor(index)
    return index.nonzero().flatten() if index.dtype == torch.bool else index.long()


def _np(t: torch.Tensor):
    return t.double().cpu().numpy()


def _family_arrays(scores: dict, rows: torch.Tensor, family: str) -> dict:
    lp, wrong, cells = CELL_FAMILIES[family]
    det = scores["deterministic"][rows]
    n_cells = scores[cells][rows]
    scored = det & (n_cells > 0)  # quizzes whose grid accuracy counts
    return {
        "nll": -_np(scores[lp][rows]),
        "cells": _np(n_cells),
        "right_cells": _np((n_cells - scores[wrong][rows]) * det),
        "det_cells": _np(n_cells * det),
        "grid_right": _np((scores[wrong][rows] == 0) & scored),
        "grid_prob": _np(scores[lp][rows].double().exp() * scored),
        "scored": _np(scored),
    }


def cell_metrics(scores: dict, index=None, *, baseline: dict | None = None, resampler=None) -> dict:
    """Loss and accuracy of a group of quizzes on all predicted cells and on
    the transform cells, each with its 95% interval (one bootstrap over the
    group's quizzes; Wilson for whole-grid accuracy).

    ``scores``: per-quiz scores of :func:`score_quizzes` (or
    :func:`cell_scores`); ``index``: the group (bool mask or indices; all
    quizzes when None). Returns ``{"n", "n_scored", "loss", "ce_all",
    "greedy_accuracy", "all_cells": F, "transform_cells": F}``, F =

    * ``cells``: cells of the family; ``quizzes``: scored quizzes having some;
    * ``ce``: cross-entropy per cell, pooled over the group's cells;
    * ``cell_accuracy``: share of the family's cells whose argmax is right;
    * ``grid_accuracy``: share of quizzes with every cell of the family right
      (Wilson interval, ``k`` of ``n``) -- on all cells, the greedy accuracy;
    * ``expected_grid_accuracy``: mean probability that sampling at
      temperature 1 gets every cell of the family right;
    * with ``baseline`` (scores of the same quizzes under another condition,
      e.g. the clean model): ``change``, this minus the baseline for ``ce``,
      ``cell_accuracy`` and ``grid_accuracy`` with *paired* intervals (the
      quizzes are resampled together), and ``ce_ratio``.

    Accuracies count deterministic quizzes only (as the reference); values
    are ``{"value", "ci95": [low, high]}`` dicts. Flat ``loss`` (= all-cells
    ce), ``ce_all`` (mean over all 404 positions) and ``greedy_accuracy``
    are the legacy numbers. ``resampler``: a :class:`culture.intervals.Resampler`
    over the group's quizzes, to share between calls on the same group.
    """
    from culture.intervals import Resampler, share

    rows = _rows(scores, index)
    n = int(rows.numel())
    R = resampler if resampler is not None else Resampler(n)
    if R.n != n:
        raise EvaluationError(f"resampler over {R.n} samples, group has {n}")
    out = {"n": n, "n_scored": int(scores["deterministic"][rows].sum()),
           "ce_all": _mean(scores["ce"][rows])}
    for family in CELL_FAMILIES:
        a = _family_arrays(scores, rows, family)
        k, m = int(a["grid_right"].sum()), int(a["scored"].sum())
        fam = {
            "cells": int(a["cells"].sum()),
            "quizzes": m,
            "ce": R.ratio(a["nll"], a["cells"]),
            "cell_accuracy": R.ratio(a["right_cells"], a["det_cells"]),
            "grid_accuracy": share(k, m),
            "expected_grid_accuracy": R.ratio(a["grid_prob"], a["scored"]),
        }
        if baseline is not None:
            b = _family_arrays(baseline, rows, family)
            ce_b = R.ratio(b["nll"], b["cells"])["value"]
            fam["change"] = {
                "ce": R.ratio(a["nll"] - b["nll"], a["cells"]),
                "cell_accuracy": R.ratio(a["right_cells"] - b["right_cells"], a["det_cells"]),
                "grid_accuracy": R.ratio(a["grid_right"] - b["grid_right"], a["scored"]),
            }
            ce = fam["ce"]["value"]
            fam["ce_ratio"] = ce / ce_b if ce is not None and ce_b else None
        out[family] = fam
    out["loss"] = out["all_cells"]["ce"]["value"]
    out["greedy_accuracy"] = out["all_cells"]["grid_accuracy"]["value"]
    return out


def loss_recovered(patched: dict, clean: dict, floor: dict, index=None, *, floor_name: str = "zero ablation",
                   resampler=None) -> dict:
    """Loss recovered, (floor - patched) / (floor - clean) on the pooled
    cross-entropy per cell, on all predicted cells and on the transform
    cells, with a paired bootstrap interval over the group's quizzes
    (``patched``, ``clean``, ``floor``: per-quiz scores of the same quizzes;
    ``floor_name`` says what the floor is -- 1 = nothing lost, 0 = as bad as
    the floor). ``{family: {"value", "ci95", "floor"}}``."""
    from culture.intervals import Resampler

    rows = _rows(clean, index)
    R = resampler if resampler is not None else Resampler(int(rows.numel()))
    out = {}
    for family in CELL_FAMILIES:
        p, c, f = (_family_arrays(s, rows, family)["nll"] for s in (patched, clean, floor))
        v = R.pooled(lambda fp, fc: fp / fc, f - p, f - c)
        v["floor"] = floor_name
        out[family] = v
    return out


def group_metrics(scores: dict, labels: Sequence[str], groups: Sequence[str], *, baseline: dict | None = None,
                  resamplers: dict | None = None, all_label: str = "all") -> dict:
    """{group: :func:`cell_metrics`} for each label of ``groups`` (quizzes
    whose label is it) and ``all_label`` (every quiz). ``resamplers``: a dict
    kept by the caller, filled with one Resampler per group, so that repeated
    calls on the same quizzes share resamples (and cost less)."""
    from culture.intervals import Resampler

    lab = list(labels)
    cache = resamplers if resamplers is not None else {}
    out = {}
    for g in [*groups, all_label]:
        mask = torch.ones(len(lab), dtype=torch.bool) if g == all_label else torch.tensor(
            [x == g for x in lab], dtype=torch.bool)
        if g not in cache:
            cache[g] = Resampler(int(mask.sum()))
        out[g] = cell_metrics(scores, mask, baseline=baseline, resampler=cache[g])
    return out


def summarize(scores: dict[str, torch.Tensor], index=None) -> dict:
    """The metrics of a group of quizzes (``index``: bool mask or indices; all
    when None): n, perplexity, greedy / expected / generated accuracy (None
    when the group has no deterministic quiz, or no generation) with their
    95% intervals (``*_ci95``), and :func:`cell_metrics`'s two families
    (``all_cells``, ``transform_cells``: cross-entropy, per-cell and
    whole-grid accuracy)."""
    if index is None:
        index = torch.ones(scores["ce"].shape[0], dtype=torch.bool)
    index = torch.as_tensor(index)
    det = scores["deterministic"][index]
    out = {
        "n": int(scores["ce"][index].numel()),
        "n_scored": int(det.sum()),
        "perplexity": _perplexity(scores["ce"][index]),
        "mean_cross_entropy": _mean(scores["ce"][index]),
        "greedy_accuracy": _mean(scores["greedy_correct"][index][det].float()),
        "expected_accuracy": _mean(scores["log_prob"][index][det].double().exp()),
        "generated_accuracy": None,
    }
    if "generated_correct" in scores:
        out["generated_accuracy"] = _mean(scores["generated_correct"][index][det].float())
    return out | _intervals(scores, index)


def _intervals(scores: dict, index) -> dict:
    """The 95% intervals of summarize's accuracies and both cell families."""
    from culture.intervals import wilson_interval

    cells = cell_metrics(scores, index)
    out = {
        "greedy_accuracy_ci95": cells["all_cells"]["grid_accuracy"]["ci95"],
        "expected_accuracy_ci95": cells["all_cells"]["expected_grid_accuracy"]["ci95"],
        "generated_accuracy_ci95": None,
    }
    if "generated_correct" in scores:
        det = scores["deterministic"][index]
        ok = scores["generated_correct"][index][det]
        out["generated_accuracy_ci95"] = list(wilson_interval(int(ok.sum()), int(ok.numel())))
    out["all_cells"] = cells["all_cells"]
    out["transform_cells"] = cells["transform_cells"]
    return out


@dataclass
class ModelEval:
    """One model's results: headline metrics, their intervals and cell
    families (``intervals``: the ``*_ci95`` and ``all_cells`` /
    ``transform_cells`` entries of :func:`summarize`), breakdowns by task
    label and by structure (keys "1".."5"), and the per-quiz ``scores`` (not
    in to_dict)."""

    name: str
    n: int
    n_scored: int
    perplexity: float | None
    mean_cross_entropy: float | None
    greedy_accuracy: float | None
    expected_accuracy: float | None
    generated_accuracy: float | None = None
    checkpoint_accuracy: float | None = None
    intervals: dict = field(default_factory=dict)
    by_task: dict[str, dict] = field(default_factory=dict)
    by_structure: dict[str, dict] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "model": self.name,
            "n": self.n,
            "n_scored": self.n_scored,
            "perplexity": self.perplexity,
            "mean_cross_entropy": self.mean_cross_entropy,
            "greedy_accuracy": self.greedy_accuracy,
            "expected_accuracy": self.expected_accuracy,
            "generated_accuracy": self.generated_accuracy,
            "checkpoint_accuracy": self.checkpoint_accuracy,
            **self.intervals,
            "by_task": self.by_task,
            "by_structure": self.by_structure,
        }


class EvalResults(list):
    """A list of :class:`ModelEval` plus the test-set settings; ``to_dict()``
    is JSON-serialisable."""

    def __init__(self, items=(), settings: dict | None = None):
        super().__init__(items)
        self.settings = dict(settings or {})

    def to_dict(self) -> dict:
        return {"settings": self.settings, "models": [m.to_dict() for m in self]}


def _model_name(model, i: int) -> str:
    for attr in ("model_id", "id"):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return str(v)
    return str(i)


def _to_device(model, device):
    if device is None or not isinstance(model, torch.nn.Module):
        return model
    return model.to(device)


def check_device(device) -> torch.device:
    """torch.device for "cpu", "cuda[:k]" or "mps", or EvaluationError when it
    is unknown or not available here."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise EvaluationError(f"unknown device {device!r} (cpu, cuda, mps)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("device cuda is not available on this machine (use --device cpu)")
    if d.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise EvaluationError("device mps is not available on this machine (use --device cpu)")
    if d.type not in ("cpu", "cuda", "mps"):
        raise EvaluationError(f"unsupported device {device!r} (cpu, cuda, mps)")
    return d


def evaluate(
    models,
    test_set: TestSet,
    generate: bool = False,
    device=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    *,
    names: Sequence[str] | None = None,
    checkpoint_accuracies: Sequence[float | None] | None = None,
    seed: int | None = None,
) -> EvalResults:
    """Evaluate each model on ``test_set`` -> :class:`EvalResults` (a list of
    :class:`ModelEval`, same order as ``models``).

    Per model: perplexity, greedy accuracy, expected sampled accuracy, and with
    ``generate`` the sampled accuracy of the reference (temperature 1, KV
    cache; every model draws the same uniforms, seeded by ``seed``, default the
    test set's seed). Each broken down by task label and by structure.
    ``device``: move the models there (None: leave them where they are).
    ``progress(description, done, total)`` is called after every batch.
    ``checkpoint_accuracies`` (or a model's ``accuracy`` attribute, as set by
    ``culture.sources.load_culture``) is reported alongside.
    """
    if not isinstance(test_set, TestSet):
        raise EvaluationError("evaluate needs a TestSet (see make_test_set)")
    if isinstance(models, torch.nn.Module) or not isinstance(models, Sequence):
        models = [models]
    if device is not None:
        device = check_device(device)
    seed = test_set.seed if seed is None else seed
    settings = test_set.settings()
    settings.update({"generate": bool(generate), "batch_size": int(batch_size),
                     "device": None if device is None else str(device)})
    results = EvalResults(settings=settings)
    for i, model in enumerate(models):
        name = names[i] if names is not None else _model_name(model, i)
        model = _to_device(model, device)

        def tick(what):
            if progress is None:
                return None
            return lambda done, total: progress(f"model {name}: {what}", done, total)

        scores = score_quizzes(model, test_set, batch_size=batch_size, device=device,
                               progress=tick("teacher-forced"))
        if generate:
            det = scores["deterministic"]
            idx = det.nonzero().flatten()
            correct = torch.zeros(len(test_set), dtype=torch.bool)
            if idx.numel():
                g = torch.Generator().manual_seed(0 if seed is None else int(seed))
                ok, _ = generated_correct(model, test_set.quizzes[idx], test_set.targets[idx], generator=g,
                                          batch_size=batch_size, progress=tick("sampling"))
                correct[idx] = ok
            scores["generated_correct"] = correct
        head = summarize(scores)
        if checkpoint_accuracies is not None:
            ckpt = checkpoint_accuracies[i]
        else:
            ckpt = getattr(model, "accuracy", None)
        ckpt = None if ckpt is None else float(ckpt)
        labels = test_set.labels
        by_task = {
            label: summarize(scores, torch.tensor([l == label for l in labels], dtype=torch.bool))
            for label in test_set.label_names
        }
        by_structure = {}
        for k in sorted(set(test_set.structures.tolist())):
            entry = summarize(scores, test_set.structures == k)
            entry["markers"] = STRUCTURES[k].name if k >= 0 else "other"
            by_structure[str(k + 1) if k >= 0 else "other"] = entry
        results.append(ModelEval(
            name=str(name), n=head["n"], n_scored=head["n_scored"], perplexity=head["perplexity"],
            mean_cross_entropy=head["mean_cross_entropy"], greedy_accuracy=head["greedy_accuracy"],
            expected_accuracy=head["expected_accuracy"], generated_accuracy=head["generated_accuracy"],
            checkpoint_accuracy=ckpt, by_task=by_task, by_structure=by_structure, scores=scores,
            intervals={k: v for k, v in head.items() if k.endswith("_ci95") or k in CELL_FAMILIES},
        ))
    return results
