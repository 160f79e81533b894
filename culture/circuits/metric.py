"""The patching metric on counterfactual quiz pairs.

A pair is a *clean* and a *corrupted* quiz that share the B grid but whose
examples (A, f(A)) make f(B) differ (``culture.world.generate_pairs``). The
model reads both teacher-forced, each with its own answer (TransformerLens
input ``BOS 0 + quiz[:-1]``, so the logit at hooked position t predicts quiz
token t).

* **Logit difference** of a run on a pair: over the predicted cells where the
  clean and the corrupted answers differ, the sum of
  ``logit(clean answer) - logit(corrupted answer)``.
* **Recovery** of a patched run: ``(mean LD_patched - mean LD_corrupted) /
  (mean LD_clean - mean LD_corrupted)`` over the pairs -- 0 is the corrupted
  run, 1 the clean run (a ratio of means, as in Wang et al. 2022, so that a
  pair whose two runs barely differ cannot blow up the average). Its 95%
  interval bootstraps the pairs (:func:`recovery_interval`).
* **Accuracy recovery**: the share of pairs whose greedy answer (argmax at
  every predicted cell, under the run's own teacher-forced input) is the clean
  answer, with a Wilson interval (:func:`culture.intervals.wilson_interval`).
* **Control pairs** (factor ``example``: a new example with the same
  parameters, so both answers coincide and the logit difference is 0 by
  construction): their row reports the *margin* change instead -- over the
  transform cells of the clean side (:func:`culture.quiz.transform_mask`,
  the cells the rule decides), the sum of ``logit(answer) - max other logit``,
  patched run minus unpatched run, divided by the real pairs' mean gap
  ``LD_clean - LD_corrupted`` so that it reads in recovery units. A patch that
  moved the answer for reasons unrelated to the varied factor would show here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from culture.circuit_settings import DIRECTIONS, CircuitError
from culture.quiz import QUIZ_LEN, ar_mask, block_markers, transform_mask, validate_quizzes

__all__ = [
    "CircuitError",
    "DIRECTIONS",
    "QuizPairs",
    "Baseline",
    "readouts",
    "answer_scores",
    "recovery",
    "recovery_interval",
    "require_gap",
    "control_effect",
]

def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise CircuitError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return direction


@dataclass
class QuizPairs:
    """Counterfactual pairs: ``clean`` and ``corrupted`` (n, 404) quizzes in the
    same structure. ``task`` / ``vary`` only label them."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    task: str | None = None
    vary: str | None = None

    def __post_init__(self):
        self.clean = validate_quizzes(self.clean, what="clean quizzes")
        self.corrupted = validate_quizzes(self.corrupted, what="corrupted quizzes")
        if self.clean.shape != self.corrupted.shape:
            raise CircuitError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} "
                               "quizzes differ in shape")
        if len(self.clean) == 0:
            raise CircuitError("no pairs")
        if not torch.equal(block_markers(self.clean), block_markers(self.corrupted)):
            raise CircuitError("clean and corrupted quizzes are not in the same structures")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def predicted(self) -> torch.Tensor:
        """(n, 404) bool: the predicted cells (from the structure)."""
        return ar_mask(self.clean)

    @property
    def answer_mask(self) -> torch.Tensor:
        """(n, 404) bool: predicted cells where the clean and corrupted answers differ."""
        return self.predicted & (self.clean != self.corrupted)

    @property
    def is_control(self) -> bool:
        """True when no pair's answers differ (the ``example`` factor)."""
        return not bool(self.answer_mask.any())

    def subset(self, index) -> QuizPairs:
        return QuizPairs(self.clean[index], self.corrupted[index], self.task, self.vary)


def answer_scores(logits: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair cell scores of one run against the *clean* answer, on all
    predicted cells and on the clean side's transform cells
    (:func:`culture.evaluation.cell_scores` plus ``deterministic``; turned
    into accuracies and losses with intervals by
    :func:`culture.evaluation.cell_metrics`). Detached, on the CPU."""
    from culture.evaluation import cell_scores, deterministic_mask

    with torch.no_grad():
        s = cell_scores(logits.detach(), clean, ar_mask(clean), transform_mask(clean))
        s["deterministic"] = deterministic_mask(clean)
    return {k: v.cpu() for k, v in s.items()}


def readouts(logits: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair numbers of one run: ``logits`` (b, 404, vocab) in hooked
    positions (position t predicts quiz token t), on pairs ``clean`` /
    ``corrupted`` (b, 404). Differentiable in ``logits`` (except ``correct``).

    * ``ld``: logit difference clean vs corrupted answer, summed over the
      predicted cells where they differ;
    * ``margin``: ``logit(clean answer) - max other logit`` summed over the
      transform cells of the clean side (the control metric);
    * ``correct``: the argmax is the clean answer at every predicted cell.
    """
    if logits.shape[1] != QUIZ_LEN:
        raise CircuitError(f"logits must cover the {QUIZ_LEN} quiz positions, got {logits.shape[1]}")
    pred = ar_mask(clean)
    differ = pred & (clean != corrupted)
    lc = logits.gather(-1, clean.unsqueeze(-1)).squeeze(-1)
    lr = logits.gather(-1, corrupted.unsqueeze(-1)).squeeze(-1)
    ld = torch.where(differ, lc - lr, torch.zeros_like(lc)).sum(1)
    others = logits.scatter(-1, clean.unsqueeze(-1), float("-inf")).amax(-1)
    tmask = transform_mask(clean)
    margin = torch.where(tmask, lc - others, torch.zeros_like(lc)).sum(1)
    correct = ((logits.argmax(-1) == clean) | ~pred).all(1)
    return {"ld": ld, "margin": margin, "correct": correct}


@dataclass
class Baseline:
    """The unpatched runs of a set of pairs, per pair (numpy, float64 / bool):
    logit difference, control margin and "greedy answer = clean answer" of the
    clean and of the corrupted run."""

    clean_ld: np.ndarray
    corrupted_ld: np.ndarray
    clean_margin: np.ndarray
    corrupted_margin: np.ndarray
    clean_correct: np.ndarray
    corrupted_correct: np.ndarray
    #: :func:`answer_scores` of each run ((n,) tensors), when collected
    clean_cells: dict | None = None
    corrupted_cells: dict | None = None

    @property
    def gap(self) -> np.ndarray:
        """LD_clean - LD_corrupted per pair."""
        return self.clean_ld - self.corrupted_ld

    @property
    def mean_gap(self) -> float:
        return float(self.gap.mean())

    def target(self, direction: str, key: str = "ld") -> np.ndarray:
        """The unpatched run a patch starts from: corrupted (denoise) or clean (noise)."""
        side = "corrupted" if check_direction(direction) == "denoise" else "clean"
        return getattr(self, f"{side}_{key}")

    def cells(self, side: str) -> dict | None:
        """:func:`answer_scores` of the ``side`` ("clean" / "corrupted") run, or None."""
        return getattr(self, f"{side}_cells")

    def to_dict(self) -> dict:
        from culture.evaluation import cell_metrics
        from culture.intervals import mean_with_interval, share

        n = len(self.clean_ld)
        out = {
            "n_pairs": n,
            "clean_logit_diff": mean_with_interval(self.clean_ld),
            "corrupted_logit_diff": mean_with_interval(self.corrupted_ld),
            "clean_accuracy": share(self.clean_correct.sum(), n),
            "corrupted_gives_clean_answer": share(self.corrupted_correct.sum(), n),
        }
        # both metric families of each run, scored against the clean answer
        for side in ("clean", "corrupted"):
            if self.cells(side) is not None:
                m = cell_metrics(self.cells(side))
                out[f"{side}_run"] = {"all_cells": m["all_cells"], "transform_cells": m["transform_cells"]}
        return out


def require_gap(baseline: Baseline, what: str = "nothing to recover") -> Baseline:
    """``baseline`` when its clean run prefers the clean answer over the
    corrupted one on average (mean gap > 0); a CircuitError otherwise, since
    recovery is then undefined or meaningless. Checked on the unpatched runs
    before any patching loop (:func:`culture.circuits.activation.baseline_runs`)."""
    if not baseline.mean_gap > 0:
        raise CircuitError(f"the clean run does not prefer the clean answer over the corrupted one "
                           f"(mean logit difference gap {baseline.mean_gap:.3g} over {len(baseline.gap)} pairs): "
                           f"{what}")
    return baseline


def recovery(patched_ld, baseline: Baseline) -> np.ndarray:
    """Normalised metric of patched runs: ``patched_ld`` (..., n) per pair ->
    (...,) ratio of means, 0 = corrupted run, 1 = clean run."""
    x = np.asarray(patched_ld, dtype=float)
    gap = baseline.mean_gap
    if gap == 0:
        raise CircuitError("the clean and corrupted runs have the same mean logit difference: "
                           "the recovery is undefined (control pairs?)")
    return (x.mean(-1) - baseline.corrupted_ld.mean()) / gap


def _bootstrap_rows(num: np.ndarray, den: np.ndarray | None, confidence: float, n_resamples: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over pairs (the last axis) of mean(num row) /
    mean(den) (den None: 1), for every row of ``num`` (C, n) at once. Written
    here rather than with ``culture.intervals.bootstrap_interval`` (scipy),
    which resamples once per component: one weight matrix serves them all,
    and numerator and denominator are resampled jointly (a ratio of means)."""
    n = num.shape[1]
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(float) / n  # (R, n)
    stats = num @ w.T  # (C, R)
    if den is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            stats = stats / (w @ den)
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha], axis=1)
    return low, high


def recovery_interval(patched_ld, baseline: Baseline, *, confidence: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% interval (bootstrap over pairs) of :func:`recovery` for every row
    of ``patched_ld`` (C, n): (low (C,), high (C,))."""
    x = np.atleast_2d(np.asarray(patched_ld, dtype=float))
    if x.shape[1] < 2:
        r = recovery(x, baseline)
        return r, r
    return _bootstrap_rows(x - baseline.corrupted_ld, baseline.gap, confidence, n_resamples, seed)


def control_effect(patched_margin, control: Baseline, direction: str, scale: float, *,
                   confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The control row: mean margin change (patched minus unpatched run) over
    the control pairs, divided by ``scale`` (the real pairs' mean gap), with
    its bootstrap interval, for each row of ``patched_margin`` (C, n):
    ``{"value", "low", "high"}`` arrays (C,)."""
    x = (np.atleast_2d(np.asarray(patched_margin, dtype=float)) - control.target(direction, "margin")) / scale
    if x.shape[1] < 2:
        v = x.mean(1)
        return {"value": v, "low": v, "high": v}
    low, high = _bootstrap_rows(x, None, confidence, n_resamples, seed)
    return {"value": x.mean(1), "low": low, "high": high}
