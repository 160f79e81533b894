"""How good is an SAE, per task, on held-out quizzes.

:func:`evaluate_sae` runs the test set (:func:`culture.evaluation.make_test_set`:
world quizzes in random structures with prompt noise, c-quizzes optional)
through the model, in TransformerLens form (input BOS 0 + quiz[:-1], 404
positions), and reports per task label and over all quizzes:

* ``explained_variance``: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over
  every position of the group's quizzes, x the activation at the SAE's hook,
  x_hat the SAE's reconstruction (SAELens's definition);
* ``l0``: mean number of features > 0 per position;
* ``dead_features``: features that never fire on the group's positions;
  ``dense_features``: features firing on more than ``dense_threshold`` of them
  (a small test set counts more features as dead than there are);
* ``loss_clean`` / ``loss_sae`` / ``loss_zero``: mean cross-entropy over the
  predicted cells, teacher-forced, with the model untouched, with the SAE's
  reconstruction spliced in at the hook (``HookedSAETransformer.saes``, no
  error term) and with the hook zero-ablated; ``loss_recovered`` =
  (zero - sae) / (zero - clean): 1 = the SAE loses nothing, 0 = as bad as
  deleting the activation; the same over all 404 positions as
  ``ce_all_*`` / ``ce_all_recovered``;
* ``accuracy_clean`` / ``accuracy_sae`` / ``accuracy_zero``: greedy accuracy
  (argmax right at every predicted cell) in the three cases;
* ``all_cells`` / ``transform_cells``: the two metric families of
  :func:`culture.evaluation.cell_metrics` (cross-entropy per cell, per-cell
  and whole-grid accuracy, 95% intervals) for ``clean``, ``sae`` and ``zero``
  (the last two with their paired change against clean), and
  ``loss_recovered`` on that family's cells with a paired bootstrap interval
  and its floor named (the hook zero-ablated). On the transform cells -- the
  cells the rule changes, about a tenth of the answer -- the SAE's losses
  show undiluted by the copied cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from culture.ablation import ALL
from culture.evaluation import group_metrics, teacher_forced
from culture.evaluation import CELL_FAMILIES, loss_recovered
from culture.sae.common import SAEError, ensure_sae_model, hook_activations

Progress = Callable[[str, int, int], None]


@dataclass
class SAEEvalResults:
    """Per group (task labels, then "all"): the metrics of the module docstring."""

    hook_name: str
    d_in: int
    d_sae: int
    groups: list[str]
    by_group: dict[str, dict]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"hook_name": self.hook_name, "d_in": self.d_in, "d_sae": self.d_sae, "settings": self.settings,
                "groups": self.groups, "by_group": self.by_group}

    @property
    def overall(self) -> dict:
        return self.by_group[ALL]


def sae_input(sae, act: torch.Tensor) -> torch.Tensor:
    """The hook activation in the form the SAE's encode takes: heads kept for
    an SAE that reshapes hook_z itself, one head with hook_head_index, heads
    flattened otherwise."""
    if act.dim() == 4:
        head = getattr(sae.cfg.metadata, "hook_head_index", None)
        if head is not None:
            return act[:, :, head]
        if getattr(sae.cfg, "reshape_activations", "none") != "hook_z":
            return act.flatten(2)
    return act


def encode_decode(sae, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, features, reconstruction) with x and the reconstruction flattened to
    (..., d_in)."""
    x = sae_input(sae, act)
    f = sae.encode(x)
    recon = sae.decode(f)
    d_in = sae.cfg.d_in
    return x.reshape(*x.shape[:2], d_in), f, recon.reshape(*x.shape[:2], d_in)


def _ratio(zero, sae, clean):
    if zero is None or sae is None or clean is None:
        return None
    den = zero - clean
    if abs(den) < 1e-12:
        return None
    return (zero - sae) / den


def evaluate_sae(hooked, sae, test_set, *, batch_size: int = 50, dense_threshold: float = 0.1,
                 device=None, progress: Progress | None = None) -> SAEEvalResults:
    """Evaluate ``sae`` on ``hooked`` (a culture GPT in TransformerLens form;
    converted to a HookedSAETransformer when needed) over ``test_set``."""
    from culture.evaluation import score_quizzes
    from culture.hooked import to_hooked_tokens
    from culture.sae.loading import check_sae_for_model

    if batch_size < 1:
        raise SAEError(f"batch size must be >= 1, got {batch_size}")
    if not 0 < dense_threshold <= 1:
        raise SAEError(f"dense threshold must be in (0, 1], got {dense_threshold}")
    model = ensure_sae_model(hooked)
    model.eval()
    sae.eval()
    hook = check_sae_for_model(sae, model)
    dev = torch.device(device) if device is not None else torch.device(model.cfg.device)
    names = test_set.label_names
    index = {g: i for i, g in enumerate(names)}
    labels = torch.tensor([index[x] for x in test_set.labels])
    G, d_in, d_sae = len(names), int(sae.cfg.d_in), int(sae.cfg.d_sae)

    n_tok = torch.zeros(G, dtype=torch.float64)
    sum_x = torch.zeros(G, d_in, dtype=torch.float64)
    sum_x2 = torch.zeros(G, dtype=torch.float64)
    sse = torch.zeros(G, dtype=torch.float64)
    l0 = torch.zeros(G, dtype=torch.float64)
    fires = torch.zeros(G, d_sae, dtype=torch.float64)

    seq = teacher_forced(test_set)
    n = seq.shape[0]
    done = 0
    with torch.inference_mode():
        for x_q, lab in zip(seq.split(batch_size), labels.split(batch_size)):
            tokens = to_hooked_tokens(x_q).to(dev)
            act = hook_activations(model, tokens, hook)
            x, f, recon = encode_decode(sae, act)
            x, f, recon = x.double().cpu(), f.float().cpu(), recon.double().cpu()
            err = (recon - x).pow(2).sum(-1)  # (b, T)
            active = f > 0
            for g in lab.unique().tolist():
                m = lab == g
                n_tok[g] += m.sum() * x.shape[1]
                sum_x[g] += x[m].sum((0, 1))
                sum_x2[g] += x[m].pow(2).sum()
                sse[g] += err[m].sum()
                l0[g] += active[m].sum()
                fires[g] += active[m].sum((0, 1)).double()
            done += x_q.shape[0]
            if progress is not None:
                progress("activations", done, n)

    def scored(phase: str):
        def report(d, t):
            if progress is not None:
                progress(phase, d, t)
        return score_quizzes(model, test_set, batch_size=batch_size, device=dev, progress=report)

    clean_scores = scored("clean")
    with model.saes(saes=[sae], use_error_term=False):
        sae_scores = scored("sae")
    with model.hooks(fwd_hooks=[(hook, lambda a, hook: torch.zeros_like(a))]):
        zero_scores = scored("zero")
    resamplers: dict = {}
    clean = group_metrics(clean_scores, test_set.labels, names, resamplers=resamplers)
    spliced = group_metrics(sae_scores, test_set.labels, names, baseline=clean_scores, resamplers=resamplers)
    zero = group_metrics(zero_scores, test_set.labels, names, baseline=clean_scores, resamplers=resamplers)

    def activation_stats(sel: list[int]) -> dict:
        N = float(n_tok[sel].sum())
        if N == 0:
            return {}
        mean = sum_x[sel].sum(0) / N
        sst = float(sum_x2[sel].sum()) - N * float(mean.pow(2).sum())
        f = fires[sel].sum(0)
        return {
            "n_tokens": int(N),
            "explained_variance": (1.0 - float(sse[sel].sum()) / sst) if sst > 0 else None,
            "mse": float(sse[sel].sum()) / N,
            "l0": float(l0[sel].sum()) / N,
            "dead_features": int((f == 0).sum()),
            "dense_features": int((f / N > dense_threshold).sum()),
            "alive_fraction": float((f > 0).double().mean()),
        }

    by_group = {}
    for g in [*names, ALL]:
        sel = list(range(G)) if g == ALL else [index[g]]
        c, s, z = clean[g], spliced[g], zero[g]
        by_group[g] = {
            "n": c["n"],
            **activation_stats(sel),
            "loss_clean": c["loss"], "loss_sae": s["loss"], "loss_zero": z["loss"],
            "loss_recovered": _ratio(z["loss"], s["loss"], c["loss"]),
            "ce_all_clean": c["ce_all"], "ce_all_sae": s["ce_all"], "ce_all_zero": z["ce_all"],
            "ce_all_recovered": _ratio(z["ce_all"], s["ce_all"], c["ce_all"]),
            "accuracy_clean": c["greedy_accuracy"], "accuracy_sae": s["greedy_accuracy"],
            "accuracy_zero": z["greedy_accuracy"],
        }
        mask = None if g == ALL else torch.tensor([x == g for x in test_set.labels], dtype=torch.bool)
        recovered = loss_recovered(sae_scores, clean_scores, zero_scores, mask, floor_name="hook zero-ablated",
                                   resampler=resamplers[g])
        for family in CELL_FAMILIES:
            by_group[g][family] = {"clean": c[family], "sae": s[family], "zero": z[family],
                                   "loss_recovered": recovered[family]}
    settings = {
        "dense_threshold": dense_threshold,
        "positions": "all 404 positions of each quiz (hooked input BOS 0 + quiz[:-1])",
        "loss": "mean cross-entropy over the predicted cells, teacher-forced",
        "splice": "SAE reconstruction replaces the hook activation (no error term)",
        "loss_recovered": "(zero - SAE) / (zero - clean); floor: the hook zero-ablated",
        "transform_cells": "predicted cells that differ from the paired grid of the clean quiz",
        "intervals": "95%: Wilson for whole-grid accuracy, bootstrap over quizzes otherwise (paired for changes)",
    }
    return SAEEvalResults(hook_name=hook, d_in=d_in, d_sae=d_sae, groups=[*names, ALL], by_group=by_group,
                          settings=settings)
