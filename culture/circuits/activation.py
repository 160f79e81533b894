"""Activation patching (Meng et al. 2022; Heimersheim & Nanda 2024), batched
over pairs.

For each site (:mod:`culture.circuits.sites`) the *target* run (corrupted
quizzes when denoising, clean quizzes when noising) is run again with the
site's activation taken from the *source* run (the other side), and the
per-pair readouts (:func:`culture.circuits.metric.readouts`) are kept.

Our own loop, not ``transformer_lens.patching.generic_activation_patch``:
that function reduces the metric to one scalar per patch (``.item()``), so it
keeps no per-pair values for intervals, and patches one position at a time;
here a site patches a set of positions (a block) and every patched forward
starts at the patched layer from the target run's cached residual stream
(``start_at_layer``: the layers below see no change), which saves about a
third of the work over a full forward. Hook names come from TransformerLens
(``blocks.L.attn.hook_z`` ...), the head slice is the same as
``transformer_lens.patching.layer_head_vector_patch_setter``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from culture.circuits.metric import Baseline, QuizPairs, check_direction
from culture.circuits.runs import (
    DEFAULT_BATCH_SIZE,
    BaselineBuilder,
    Progress,
    ScoreParts,
    n_batches,
    pair_batches,
    run_cached,
)
from culture.circuits.sites import Site

__all__ = ["activation_patching", "baseline_runs", "patched_logits", "resid_name"]


def resid_name(layer: int, n_layers: int) -> str:
    """Hook of the residual stream before block ``layer`` (after the last block for n_layers)."""
    return Site("resid", layer).hook_name(n_layers)


def patched_logits(hooked, site: Site, target_resid: dict[int, torch.Tensor],
                   source: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the target run with ``site`` patched from ``source``
    activations, starting at the site's layer from ``target_resid[layer]``
    (the target run's residual stream before that block)."""
    n = hooked.cfg.n_layers
    name = site.hook_name(n)
    resid = target_resid[site.layer]
    if site.kind == "resid":
        return hooked(site.patch(resid, source[name]), start_at_layer=site.layer, return_type="logits")

    def hook(act, hook):
        return site.patch(act, source[name])

    return hooked.run_with_hooks(resid, start_at_layer=site.layer, return_type="logits", fwd_hooks=[(name, hook)])


def baseline_runs(hooked, pairs: QuizPairs, batch_size: int = DEFAULT_BATCH_SIZE) -> Baseline:
    """The unpatched clean and corrupted runs of ``pairs``."""
    out = BaselineBuilder()
    for batch in pair_batches(hooked, pairs, "denoise", batch_size):
        with torch.inference_mode():
            for side, tokens in (("clean", batch.clean_tokens), ("corrupted", batch.corrupted_tokens)):
                logits = hooked(tokens, return_type="logits")
                out.add(side, batch, logits)
    return out.build()


def activation_patching(hooked, pairs: QuizPairs, sites: Sequence[Site], direction: str = "denoise", *,
                        batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
                        ) -> tuple[dict[str, np.ndarray], Baseline]:
    """Patch each site in turn. Returns ({"ld", "margin": (C, n) float64,
    "correct": (C, n) bool, "cells": C dicts of per-pair
    :func:`~culture.circuits.metric.answer_scores`} of the patched runs, the
    unpatched runs' :class:`~culture.circuits.metric.Baseline`, with their
    cell scores)."""
    check_direction(direction)
    n = hooked.cfg.n_layers
    hooked.eval()
    sites = list(sites)
    resid_names = [resid_name(L, n) for L in range(n + 1)]
    source_names = {s.hook_name(n) for s in sites}
    base = BaselineBuilder()
    parts: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in sites] for k in ("ld", "margin", "correct")}
    cells = [ScoreParts() for _ in sites]
    total, done = n_batches(pairs, batch_size) * max(len(sites), 1), 0
    for batch in pair_batches(hooked, pairs, direction, batch_size):
        src_logits, src = run_cached(hooked, batch.source_tokens, source_names)
        tgt_logits, tgt = run_cached(hooked, batch.target_tokens, resid_names)
        sides = ("clean", "corrupted") if direction == "denoise" else ("corrupted", "clean")
        base.add(sides[0], batch, src_logits)
        base.add(sides[1], batch, tgt_logits)
        target_resid = {L: tgt[resid_names[L]] for L in range(n + 1)}
        with torch.inference_mode():
            for k, site in enumerate(sites):
                logits = patched_logits(hooked, site, target_resid, src)
                r = batch.readouts(logits)
                cells[k].add(batch.answer_scores(logits))
                for key in parts:
                    parts[key][k].append(r[key].cpu().numpy() if key == "correct" else r[key].double().cpu().numpy())
                done += 1
                if progress is not None:
                    progress("activation patching", done, total)
    out = {key: (np.stack([np.concatenate(p) for p in v]) if sites else np.zeros((0, len(pairs))))
           for key, v in parts.items()}
    out["cells"] = [c.build() for c in cells]
    return out, base.build()
