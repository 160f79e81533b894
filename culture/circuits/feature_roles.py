"""SAE features on the circuit: which features move the rule's answer, per
model, and whether features matched across models play the same causal role.

**Effect** of a feature on a pair (attribution patching through the SAE,
Marks et al. 2024): ``sum over positions of (f_clean - f_corrupted) *
(W_dec[f] . dLD/dx)``, x the activation the SAE reads (its hook), the
gradient at the clean run; divided by the mean gap ``LD_clean -
LD_corrupted`` it reads in recovery units (the share of the logit
difference the feature carries, to first order). A model's *causal
features* for a task: its ``top_k`` features by |mean effect|.

**Matching**: the universality matching of features (Hungarian assignment on
the features' activation correlations over the same tokens,
:func:`culture.universality.stats.match_features`), here on the pairs' clean
quizzes, every position, no control.

**Shared causal role** (model a -> b): of a's causal features that have a
partner in b, the share whose partner is among b's causal features. Its
interval resamples the pairs (effects, hence both causal sets, recomputed)
and, given re-done matchings (:func:`rematched_partners`: the quizzes of
the matching resampled, the features matched again), each replicate uses one
of them, so the interval carries the matching's chance too. **Null**: the same share with the partners
drawn at random (a random one-to-one matching of the same features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from culture.circuits.metric import CircuitError, QuizPairs
from culture.circuits.runs import BaselineBuilder, pair_batches

__all__ = ["feature_effects", "feature_activations", "match_sae_features", "rematched_partners", "shared_causal_share",
           "FeatureEffects"]


@dataclass
class FeatureEffects:
    """Per-pair effects (d_sae, n) of one SAE's features, in logit-difference units, and the pairs' gap."""

    effects: np.ndarray
    gap: np.ndarray  # (n,) LD_clean - LD_corrupted

    def mean(self, w: np.ndarray | None = None) -> np.ndarray:
        """(d_sae,) mean effect / mean gap (recovery units), with pair weights ``w`` (None: equal)."""
        n = self.effects.shape[1]
        w = np.full(n, 1.0 / n) if w is None else w
        gap = float(self.gap @ w)
        return (self.effects @ w) / gap if gap != 0 else np.zeros(len(self.effects))

    def top(self, k: int, w: np.ndarray | None = None) -> np.ndarray:
        return np.argsort(-np.abs(self.mean(w)), kind="stable")[:k]


def _hook(sae) -> str:
    from culture.hooks import sae_hook_name

    name = sae_hook_name(sae)
    if not name:
        raise CircuitError("the SAE names no hook")
    return name


def feature_effects(hooked, sae, pairs: QuizPairs, *, batch_size: int = 25) -> FeatureEffects:
    """Attribution of every feature of ``sae`` to the logit difference of ``pairs`` (see the module docstring)."""
    from culture.circuits.attribution import activations_and_gradients
    from culture.circuits.runs import run_cached

    hook = _hook(sae)
    hooked.eval()
    w_dec = sae.W_dec.detach()
    parts, base = [], BaselineBuilder()
    for batch in pair_batches(hooked, pairs, "noise", batch_size):
        corr_logits, corr = run_cached(hooked, batch.corrupted_tokens, [hook])
        acts, grads, logits = activations_and_gradients(hooked, batch.clean_tokens, [hook],
                                                        lambda lg: batch.readouts(lg)["ld"])
        base.add("clean", batch, logits)
        base.add("corrupted", batch, corr_logits)
        with torch.no_grad():
            df = sae.encode(acts[hook]) - sae.encode(corr[hook])  # (b, pos, d_sae)
            direction = grads[hook] @ w_dec.T  # (b, pos, d_sae)
            parts.append((df * direction).sum(1).double().cpu().numpy())
    b = base.build()
    return FeatureEffects(np.concatenate(parts).T, b.gap)


def feature_activations(hooked, sae, quizzes: torch.Tensor, *, batch_size: int = 25) -> np.ndarray:
    """(tokens, d_sae) float32 feature activations at every position of ``quizzes``."""
    from culture.circuits.runs import run_cached
    from culture.hooked import to_hooked_tokens

    hook = _hook(sae)
    out = []
    for lo in range(0, len(quizzes), batch_size):
        tokens = to_hooked_tokens(quizzes[lo:lo + batch_size]).to(hooked.cfg.device)
        _, acts = run_cached(hooked, tokens, [hook])
        with torch.no_grad():
            f = sae.encode(acts[hook])
        out.append(f.reshape(-1, f.shape[-1]).float().cpu().numpy())
    return np.concatenate(out)


def match_sae_features(fa: np.ndarray, fb: np.ndarray):
    """One-to-one matching of the features of two SAEs by activation
    correlation over the same tokens (alive features only):
    :class:`culture.universality.stats.FeatureMatching`."""
    from culture.universality.stats import match_features

    def standard(x):
        x = x.astype(np.float64)
        x = x - x.mean(0)
        sd = x.std(0)
        return x / np.where(sd > 0, sd, 1.0), sd > 0

    za, alive_a = standard(fa)
    zb, alive_b = standard(fb)
    corr = za.T @ zb / len(za)
    return match_features(corr, alive_a, alive_b)


def rematched_partners(fa: np.ndarray, fb: np.ndarray, n_quizzes: int, draws: int, seed: int = 0) -> list[dict]:
    """``draws`` matchings of the features of ``fa`` / ``fb`` ((tokens, d_sae)
    activations of the same ``n_quizzes`` quizzes, quiz after quiz), each on
    the quizzes resampled with replacement: the matching's own chance, for
    :func:`shared_causal_share`'s interval. Partner maps ``{a: b}``."""
    if len(fa) != len(fb) or n_quizzes < 1 or len(fa) % n_quizzes:
        raise CircuitError("feature activations must be of the same quizzes, whole quizzes each")
    rows = len(fa) // n_quizzes
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        pick = rng.integers(0, n_quizzes, n_quizzes)
        idx = (pick[:, None] * rows + np.arange(rows)[None, :]).ravel()
        mt = match_sae_features(fa[idx], fb[idx])
        out.append({int(a): int(b) for a, b in zip(mt.a_index, mt.b_index)})
    return out


def _share(top_a: np.ndarray, top_b: np.ndarray, partner: dict) -> tuple[int, int]:
    mine = [int(f) for f in top_a if int(f) in partner]
    b_set = {int(f) for f in top_b}
    return sum(partner[f] in b_set for f in mine), len(mine)


def shared_causal_share(ea: FeatureEffects, eb: FeatureEffects, a_index: np.ndarray, b_index: np.ndarray, *,
                        top_k: int = 10, n_resamples: int = 1000, null_draws: int = 200, seed: int = 0,
                        confidence: float = 0.95, rematched: list[dict] | None = None) -> dict:
    """Share of a's causal features whose matched partner is causal in b,
    with its bootstrap interval over pairs (replicate r using matching
    ``rematched[r % len(rematched)]`` when given: :func:`rematched_partners`)
    and the shuffled-match null."""
    if top_k < 1:
        raise CircuitError(f"top_k must be >= 1, got {top_k}")
    partner = {int(a): int(b) for a, b in zip(a_index, b_index)}
    k, n = _share(ea.top(top_k), eb.top(top_k), partner)
    value = k / n if n else float("nan")
    rng = np.random.default_rng(seed)
    n_pairs = ea.effects.shape[1]
    stats = []
    for r in range(n_resamples):
        w = rng.multinomial(n_pairs, np.full(n_pairs, 1.0 / n_pairs)) / n_pairs
        kk, nn = _share(ea.top(top_k, w), eb.top(top_k, w), rematched[r % len(rematched)] if rematched else partner)
        if nn:
            stats.append(kk / nn)
    null = []
    for _ in range(null_draws):
        shuffled = dict(zip(partner, rng.permutation(list(partner.values())).tolist()))
        kk, nn = _share(ea.top(top_k), eb.top(top_k), shuffled)
        if nn:
            null.append(kk / nn)
    alpha = (1 - confidence) / 2
    if stats and n:
        lo, hi = (float(x) for x in np.quantile(stats, [alpha, 1 - alpha]))
        ci = [min(lo, value), max(hi, value)]
    else:
        ci = [value, value]
    return {"value": value, "k": k, "n": n, "ci95": ci, "top_k": top_k,
            "null_mean": float(np.mean(null)) if null else None,
            "null_q95": float(np.quantile(null, 0.95)) if null else None}
