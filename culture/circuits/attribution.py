"""Attribution patching (Nanda 2023; Syed et al. 2023): the first-order
Taylor estimate of every activation patch from one forward on each side and
one backward.

For a site with activation a (target run: corrupted when denoising, clean
when noising) and the source run's a', the patched metric is estimated as

    M(a') ~ M(a) + (a' - a) . dM/da |_a

per pair (each pair's metric depends on its own activations only, so one
backward of the summed metric gives every pair's gradient). ``key`` picks the
metric differentiated: ``ld`` (the logit difference) or ``margin`` (the
control metric). Written with TransformerLens forward / backward hooks; no
library function does this for arbitrary site tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from culture.circuits.metric import Baseline, CircuitError, QuizPairs, check_direction
from culture.circuits.runs import (
    DEFAULT_BATCH_SIZE,
    BaselineBuilder,
    Progress,
    frozen_parameters,
    n_batches,
    pair_batches,
    run_cached,
)
from culture.circuits.sites import Site
from culture.hooks import act_name

__all__ = ["attribution_patching", "activations_and_gradients"]

METRIC_KEYS = ("ld", "margin")


def activations_and_gradients(hooked, tokens: torch.Tensor, names, metric, embed: torch.Tensor | None = None
                              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """One forward with grad and one backward of ``metric(logits).sum()``:
    ({hook: activation}, {hook: d metric / d activation}, logits). The
    parameters are frozen meanwhile; gradients flow from the embeddings.
    ``embed``: replaces the token embeddings (``hook_embed``), e.g. an
    interpolation between two runs' (integrated gradients)."""
    names = sorted(set(names))
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def start(act, hook):  # the leaf the backward starts from
        if embed is not None and hook.name == act_name("embed"):
            act = embed.to(act)
        return act.detach().requires_grad_(True)

    def keep(act, hook):
        acts[hook.name] = act.detach()

    def keep_grad(grad, hook):
        grads[hook.name] = grad.detach()

    fwd = [(act_name("embed"), start), (act_name("pos_embed"), start)] + [(n, keep) for n in names]
    bwd = [(n, keep_grad) for n in names]
    with frozen_parameters(hooked), hooked.hooks(fwd_hooks=fwd, bwd_hooks=bwd), warnings.catch_warnings():
        # torch notes that full backward hooks fire on module outputs when no input needs a gradient:
        # the output gradient is exactly what we keep
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        logits = hooked(tokens, return_type="logits")
        metric(logits).sum().backward()
    missing = [n for n in names if n not in grads]
    for n in missing:  # an activation the metric does not depend on
        grads[n] = torch.zeros_like(acts[n])
    return acts, grads, logits.detach()


def attribution_patching(hooked, pairs: QuizPairs, sites: Sequence[Site], direction: str = "denoise", *,
                         key: str = "ld", batch_size: int = DEFAULT_BATCH_SIZE,
                         progress: Progress | None = None) -> tuple[np.ndarray, Baseline]:
    """Attribution estimate of each site's patched metric ``key`` per pair:
    ((C, n) float64 = target run's metric + first-order term, the unpatched
    runs' Baseline)."""
    check_direction(direction)
    if key not in METRIC_KEYS:
        raise CircuitError(f"metric must be one of {', '.join(METRIC_KEYS)}, got {key!r}")
    n = hooked.cfg.n_layers
    hooked.eval()
    sites = list(sites)
    names = {s.hook_name(n) for s in sites}
    base = BaselineBuilder()
    parts: list[list[np.ndarray]] = [[] for _ in sites]
    total, done = n_batches(pairs, batch_size), 0
    for batch in pair_batches(hooked, pairs, direction, batch_size):
        src_logits, src = run_cached(hooked, batch.source_tokens, names)
        acts, grads, tgt_logits = activations_and_gradients(
            hooked, batch.target_tokens, names, lambda logits: batch.readouts(logits)[key])
        sides = ("clean", "corrupted") if direction == "denoise" else ("corrupted", "clean")
        base.add(sides[0], batch, src_logits)
        r_tgt = batch.readouts(tgt_logits)
        base.add(sides[1], batch, tgt_logits, r_tgt)
        with torch.no_grad():
            for k, site in enumerate(sites):
                name = site.hook_name(n)
                delta = site.select(src[name]) - site.select(acts[name])
                term = (delta * site.select(grads[name])).reshape(delta.shape[0], -1).sum(1)
                parts[k].append((r_tgt[key].double() + term.double()).cpu().numpy())
        done += 1
        if progress is not None:
            progress("attribution patching", done, total)
    out = np.stack([np.concatenate(p) for p in parts]) if sites else np.zeros((0, len(pairs)))
    return out, base.build()
