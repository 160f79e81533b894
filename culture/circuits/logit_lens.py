"""Logit lens and direct logit attribution (the library behind
``culture-interp logit-lens``).

The culture GPTs have no final LayerNorm: the logits are exactly
``residual_after_last_block @ W_U + b_U``. So

* **logit lens**: decoding the residual stream before each block (and after
  the last one) with the unembedding is exact at the last layer and a plain
  linear read-out before it (no LayerNorm to approximate). Per layer and task:
  whole-grid accuracy (argmax right at every predicted cell, Wilson
  interval), cell accuracy over all predicted cells and over the *transform
  cells* (:func:`culture.quiz.transform_mask`: the predicted cells the rule
  changes; the others are copies of the paired grid), each the mean over
  quizzes of the per-quiz share, with a bootstrap interval over quizzes.
  Baselines: a randomly initialised model of the same shape, and "copy the
  paired grid" (right on every non-transform cell, wrong on every transform
  cell).
* **direct logit attribution**: the residual stream is a sum of components --
  token embedding, position embedding, each head's output (z @ W_O), each
  MLP's output, the attention biases -- and, with no final LayerNorm, the
  logits are that sum times W_U plus b_U, exactly. A component's direct
  effect on a predicted cell is its contribution to ``logit(correct colour) -
  mean logit over the 11 colours`` (centred, as softmax ignores a constant);
  the contributions add up to the centred logit exactly. Means over the
  predicted cells and over the transform cells, per task.

Quizzes: a test set of the evaluation protocol
(:func:`culture.evaluation.source_test_set`, mixed structures, prompt noise),
teacher-forced on the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from culture.circuits.metric import CircuitError
from culture.circuits.runs import Progress, check_batch_size
from culture.hooks import act_name
from culture.quiz import N_COLORS, ar_mask, transform_mask

__all__ = ["LogitLensReport", "logit_lens", "random_model_like", "ALL"]

ALL = "all"
KEYS = ("grid_accuracy", "cell_accuracy", "transform_accuracy")


def random_model_like(hooked, seed: int = 0):
    """A randomly initialised culture GPT of the same shape as ``hooked``
    (``MyGPT(cfg)`` reference initialisation, seeded), as a HookedTransformer.
    The global torch RNG is left untouched."""
    from culture.hooked import gpt_config_from_hooked, mygpt_to_hooked
    from culture.mygpt import MyGPT

    cfg = gpt_config_from_hooked(hooked.cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = MyGPT(cfg)
    return mygpt_to_hooked(model.to(hooked.cfg.device).eval())


def _check_no_final_ln(hooked) -> None:
    from culture.hooked import IdentityLNFinal

    if hooked.cfg.normalization_type is not None and not isinstance(hooked.ln_final, IdentityLNFinal):
        raise CircuitError("the model has a final LayerNorm: the logit lens / direct logit attribution here are "
                           "exact only for the culture GPTs (no final LayerNorm)")


def component_names(n_layers: int, n_heads: int) -> list[str]:
    names = ["embed", "pos_embed"]
    for L in range(n_layers):
        names += [f"head {L}.{h}" for h in range(n_heads)] + [f"mlp {L}"]
    return names + ["biases"]


@dataclass
class LogitLensReport:
    """``accuracy[group][layer][key]``: ``{"value", "ci95", ...}`` for key in
    grid_accuracy / cell_accuracy / transform_accuracy; ``baseline`` the same
    for the random-init model (or None); ``copy_baseline[group]``: the
    cell accuracies of copying the paired grid; ``dla[group]``: component ->
    {"cells", "transform"} mean centred direct effect."""

    layer_labels: list[str]
    groups: list[str]
    accuracy: dict
    baseline: dict | None
    copy_baseline: dict
    dla: dict
    components: list[str]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "layers": self.layer_labels, "groups": self.groups,
                "accuracy": self.accuracy, "random_init_accuracy": self.baseline,
                "copy_baseline": self.copy_baseline, "dla": self.dla}

    def dla_ranking(self, group: str = ALL, key: str = "transform") -> list[str]:
        return sorted(self.components, key=lambda c: -abs(self.dla[group][c][key]))


class _Accumulator:
    """Per-quiz numbers of one model, layer by layer."""

    def __init__(self, n_layers_plus: int):
        self.grid = [[] for _ in range(n_layers_plus)]
        self.cells = [[] for _ in range(n_layers_plus)]
        self.transform = [[] for _ in range(n_layers_plus)]

    def add(self, layer: int, logits: torch.Tensor, seq: torch.Tensor, pred: torch.Tensor, tmask: torch.Tensor):
        right = logits.argmax(-1) == seq
        self.grid[layer].append(((right | ~pred).all(1)).cpu().numpy())
        self.cells[layer].append(((right & pred).sum(1) / pred.sum(1).clamp_min(1)).double().cpu().numpy())
        nt = tmask.sum(1)
        frac = ((right & tmask).sum(1) / nt.clamp_min(1)).double()
        self.transform[layer].append(torch.where(nt > 0, frac, torch.nan).cpu().numpy())

    def summary(self, index) -> list[dict]:
        from culture.intervals import mean_with_interval, share

        out = []
        for L in range(len(self.grid)):
            g = np.concatenate(self.grid[L])[index]
            c = np.concatenate(self.cells[L])[index]
            t = np.concatenate(self.transform[L])[index]
            t = t[np.isfinite(t)]
            out.append({"grid_accuracy": share(int(g.sum()), len(g)), "cell_accuracy": mean_with_interval(c),
                        "transform_accuracy": mean_with_interval(t)})
        return out


def _lens_pass(hooked, seq: torch.Tensor, targets: torch.Tensor, batch_size: int, dla: bool,
               progress: Progress | None, phase: str):
    """Run the quizzes once: per-layer lens accumulator and (``dla``) per-quiz
    mean direct effects (quizzes, components, 2: cells, transform)."""
    from culture.hooked import to_hooked_tokens

    _check_no_final_ln(hooked)
    cfg = hooked.cfg
    n = cfg.n_layers
    names = [act_name("resid_pre", L) for L in range(n)] + [act_name("resid_post", n - 1)]
    extra = [act_name("embed"), act_name("pos_embed")] + [act_name(k, L) for L in range(n) for k in ("z", "mlp_out")]
    wanted = set(names) | (set(extra) if dla else set())
    acc = _Accumulator(n + 1)
    W_U = hooked.W_U.detach()
    W_U_centred = W_U - W_U[:, :N_COLORS].mean(1, keepdim=True)
    dla_parts = []
    device = cfg.device
    total = -(-len(seq) // batch_size)
    for k, (x, t) in enumerate(zip(seq.split(batch_size), targets.split(batch_size))):
        x = x.to(device)
        pred, tmask = ar_mask(x), transform_mask(x, paired=t.to(device))
        with torch.inference_mode():
            logits, cache = hooked.run_with_cache(to_hooked_tokens(x).to(device), names_filter=lambda m: m in wanted)
            for L, name in enumerate(names):
                acc.add(L, hooked.unembed(hooked.ln_final(cache[name])), x, pred, tmask)
            if dla:
                U = W_U_centred.T[x]  # (b, pos, d): centred unembedding direction of the correct token
                parts = [torch.einsum("bpd,bpd->bp", cache[act_name("embed")], U),
                         torch.einsum("bpd,bpd->bp", cache[act_name("pos_embed")], U)]
                bias = torch.zeros_like(parts[0])
                for L in range(n):
                    attn = hooked.blocks[L].attn
                    z = cache[act_name("z", L)]
                    parts += list(torch.einsum("bphe,hed,bpd->bph", z, attn.W_O, U).unbind(2))
                    parts.append(torch.einsum("bpd,bpd->bp", cache[act_name("mlp_out", L)], U))
                    bias = bias + U @ attn.b_O
                centred_b = hooked.b_U - hooked.b_U[:N_COLORS].mean()
                parts.append(bias + centred_b[x])
                contrib = torch.stack(parts, 2)  # (b, pos, components)
                rows = []
                for mask in (pred, tmask):
                    m = mask.unsqueeze(2).to(contrib.dtype)
                    cnt = mask.sum(1, keepdim=True).to(contrib.dtype)
                    rows.append(torch.where(cnt > 0, (contrib * m).sum(1) / cnt.clamp_min(1), torch.nan))
                dla_parts.append(torch.stack(rows, 2).double().cpu().numpy())
                if k == 0:  # exactness: the parts add up to the centred logit of the correct colour
                    centred = logits - logits[..., :N_COLORS].mean(-1, keepdim=True)
                    want = centred.gather(-1, x.unsqueeze(-1)).squeeze(-1)
                    err = float(((contrib.sum(2) - want).abs() * pred).max())
                    if err > 1e-3 * max(1.0, float(want.abs().max())):
                        raise CircuitError(f"direct logit attribution does not add up (error {err:.3g})")
        if progress is not None:
            progress(phase, k + 1, total)
    return acc, (np.concatenate(dla_parts) if dla else None)


def logit_lens(hooked, test_set, *, baseline: bool = True, seed: int = 0, batch_size: int = 50,
               progress: Progress | None = None) -> LogitLensReport:
    """Logit lens accuracy by layer and task, and direct logit attribution, on
    a :class:`culture.evaluation.TestSet` (see the module docstring);
    ``baseline``: also the random-init model (seeded by ``seed``)."""
    from culture.evaluation import teacher_forced
    from culture.intervals import mean_with_interval

    check_batch_size(batch_size)
    hooked.eval()
    seq = teacher_forced(test_set)
    labels = list(test_set.labels)
    groups = [*test_set.label_names, ALL]
    index = {g: np.array([lab == g for lab in labels]) if g != ALL else np.ones(len(labels), bool) for g in groups}
    acc, dla = _lens_pass(hooked, seq, test_set.targets, batch_size, True, progress, "logit lens")
    base = None
    if baseline:
        rnd, _ = _lens_pass(random_model_like(hooked, seed), seq, test_set.targets, batch_size, False, progress,
                            "logit lens (random-init model)")
        base = {g: rnd.summary(index[g]) for g in groups}
    n = hooked.cfg.n_layers
    layer_labels = ["embed"] + [f"after block {L}" for L in range(n)]
    comps = component_names(n, hooked.cfg.n_heads)
    pred, tmask = ar_mask(seq), transform_mask(seq, paired=test_set.targets)
    copy = {}
    for g in groups:
        i = torch.as_tensor(index[g])
        copy_cells = 1 - tmask[i].sum(1) / pred[i].sum(1).clamp_min(1)
        copy[g] = {"cell_accuracy": float(copy_cells.double().mean()) if int(i.sum()) else None,
                   "transform_accuracy": 0.0}
    dla_out = {}
    for g in groups:
        dla_out[g] = {}
        for j, c in enumerate(comps):
            cells = dla[index[g], j, 0]
            trans = dla[index[g], j, 1]
            trans = trans[np.isfinite(trans)]
            dla_out[g][c] = {"cells": float(np.nanmean(cells)) if len(cells) else None,
                             "transform": float(trans.mean()) if len(trans) else None,
                             "transform_ci95": mean_with_interval(trans)["ci95"] if len(trans) else None}
    settings = {**test_set.settings(), "random_init_seed": seed if baseline else None,
                "decoding": "residual @ W_U + b_U (no final LayerNorm: exact at the last layer)",
                "dla": "contribution to logit(correct colour) - mean colour logit; sums to it exactly"}
    return LogitLensReport(layer_labels, groups, {g: acc.summary(index[g]) for g in groups}, base, copy, dla_out,
                           comps, settings)
