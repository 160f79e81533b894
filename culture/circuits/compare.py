"""Do the models share circuits? One comparison on the same counterfactual
pairs for every model (the library behind ``culture-interp circuit compare``):

1. per model, head recovery (activation patching of every head) and its
   circuit (the ``circuit_edges`` top edges by edge attribution,
   :func:`culture.circuits.discovery.edge_scores`) on the pairs of one task
   and factor;
2. heads matched across models by their roles
   (:mod:`culture.circuits.head_roles`, :mod:`culture.circuits.matching`),
   against shuffled role vectors; which head of each model plays the
   reference head's role (default: model 0's head of highest recovery);
3. cross-model faithfulness (:mod:`culture.circuits.cross_faithfulness`):
   model j's circuit carried to model k through the matching, patched in k
   alone, with intervals over pairs *and* matchings, and a shuffled-matching null;
4. optionally, SAE features on the circuit (:mod:`culture.circuits.feature_roles`).

    >>> from culture.hooked import load_hooked
    >>> cmp = compare_circuits(load_hooked([0, 1, 2, 3], "bundled"), "replace_color", "dst",
    ...                        profile_tasks=["replace_color", "frame", "detect"])
    >>> cmp.to_dict()["reference"]       # which head plays model 0's top head's role in each model
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from culture.circuit_settings import CircuitCompareSettings
from culture.circuits.cross_faithfulness import circuit_heads, evaluate_mapped, interval, map_circuit, replicates
from culture.circuits.head_roles import head_labels, head_role_data, role_conditions
from culture.circuits.matching import HeadMatching, match_heads, parse_head
from culture.circuits.metric import CircuitError, recovery, recovery_interval
from culture.circuits.runs import Progress

__all__ = ["CircuitComparison", "compare_circuits"]


@dataclass
class CircuitComparison:
    """Result of :func:`compare_circuits`; JSON from :meth:`to_dict`."""

    names: list[str]
    n_layers: int
    n_heads: int
    recovery: list[dict]  # per model: {"value": (L*H,), "low", "high"}
    circuits: list[list[dict]]  # per model: its edges (src, dst, score)
    circuit_heads: list[list[str]]
    own_faithfulness: list[dict]
    faithfulness: list[list[dict]]  # [j][k]: j's circuit carried to k (diagonal: own)
    relative: list[list[dict]]  # [j][k]: faithfulness[j][k] / own faithfulness of k
    null_faithfulness: list[list[dict | None]]
    matchings: dict[tuple[int, int], HeadMatching]
    stability: dict[tuple[int, int], np.ndarray]  # (L*H,) share of bootstrap matchings equal to the point one
    reference: tuple[int, int]
    features: dict | None = None
    settings: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return head_labels(self.n_layers, self.n_heads)

    def top_head(self, m: int) -> str:
        return self.labels[int(np.argmax(self.recovery[m]["value"]))]

    def reference_rows(self) -> list[dict]:
        """Per model: the head playing the reference head's role (matched
        within its layer; best match anywhere), its similarity against the
        null, how often the bootstrap matchings agree, and the model's own
        top head by recovery."""
        layer, head = self.reference
        i = layer * self.n_heads + head
        rows = []
        for m, name in enumerate(self.names):
            rec = self.recovery[m]
            if m == 0:
                own = f"{layer}.{head}"
                row = {"model": name, "matched": own, "similarity": 1.0, "best_anywhere": own, "stability": 1.0}
            else:
                row = {"model": name, **self.matchings[(0, m)].counterpart(layer, head),
                       "stability": float(self.stability[(0, m)][i])}
            j = self.labels.index(row["matched"])
            row["matched_recovery"] = {"value": float(rec["value"][j]),
                                       "ci95": [float(rec["low"][j]), float(rec["high"][j])]}
            row["top_head"] = self.top_head(m)
            row["top_recovery"] = float(np.max(rec["value"]))
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        ref = f"{self.reference[0]}.{self.reference[1]}"
        return {
            "settings": self.settings,
            "models": self.names,
            "heads": self.labels,
            "reference_head": ref,
            "reference": self.reference_rows(),
            "head_recovery": [{"value": r["value"].tolist(), "low": r["low"].tolist(), "high": r["high"].tolist()}
                              for r in self.recovery],
            "circuits": [{"edges": c, "heads": h, "faithfulness": f}
                         for c, h, f in zip(self.circuits, self.circuit_heads, self.own_faithfulness)],
            "cross_faithfulness": self.faithfulness,
            "relative_faithfulness": self.relative,
            "null_faithfulness": self.null_faithfulness,
            "matchings": {f"{a}->{b}": {**m.to_dict(), "stability": self.stability[(a, b)].tolist()}
                          for (a, b), m in self.matchings.items()},
            "features": self.features,
        }


def _draws(rng, n: int, r: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=r) / n


def compare_circuits(models: list, task: str, vary: str, *, settings: CircuitCompareSettings | None = None,
                     names=None, profile_tasks=None, saes=None, progress: Progress | None = None,
                     **options) -> CircuitComparison:
    """Compare the circuits of ``models`` (hooked, same shape) on ``task`` /
    ``vary`` pairs; see the module docstring. ``settings``: a
    :class:`~culture.circuit_settings.CircuitCompareSettings` (default: its
    defaults); ``options`` replace its fields by name (the earlier keywords
    ``n_pairs``, ``circuit_edges``, ``reference``, ``n_resamples`` and
    ``top_k_features`` still work). ``profile_tasks``: tasks whose factors make
    the patching profile of the head roles (default ``[task]``); ``saes``: one
    SAE per model (or None) for the feature part."""
    from culture.circuits.activation import activation_patching
    from culture.circuits.discovery import edge_scores
    from culture.circuits.pairs import make_pairs
    from culture.circuits.sites import site_table

    cs = CircuitCompareSettings.of(settings, **options)
    n_pairs, profile_pairs, circuit_edges, ig_steps = cs.num_pairs, cs.profile_pairs, cs.edges, cs.ig_steps
    reference, n_resamples, match_resamples, null_draws = cs.head, cs.resamples, cs.match_resamples, cs.null_draws
    null_circuits, top_k_features, feature_quizzes = cs.null_circuits, cs.top_features, cs.feature_quizzes
    seed, batch_size = cs.seed, cs.batch_size
    if len(models) < 2:
        raise CircuitError("compare needs at least two models")
    shapes = {(m.cfg.n_layers, m.cfg.n_heads) for m in models}
    if len(shapes) != 1:
        raise CircuitError(f"the models differ in shape (layers, heads): {sorted(shapes)}")
    (L, H), = shapes
    ref = parse_head(reference, L, H) if reference is not None else None
    names = [str(k) for k in range(len(models))] if names is None else [str(n) for n in names]
    if saes is not None and len(saes) != len(models):
        raise CircuitError("give one SAE per model (or none)")
    M = len(models)
    say = (lambda phase, done, total: progress(phase, done, total)) if progress is not None else (lambda *a: None)

    pairs = make_pairs(n_pairs, task, vary, seed=seed)
    conditions = role_conditions(profile_tasks or [task])
    pair_sets = {f"{t}/{f}": make_pairs(profile_pairs, t, f, seed=seed + 1 + i) for i, (t, f) in enumerate(conditions)}

    # 1. per model: head recovery, edge scores and the top-edge circuit, role data
    sites = site_table("heads", L, H).sites
    rec, scores, bases, roles = [], [], [], []
    graph = None
    for m, hooked in enumerate(models):
        out, base = activation_patching(hooked, pairs, sites, "denoise", batch_size=batch_size)
        if base.mean_gap <= 0:
            raise CircuitError(f"model {names[m]}: the clean run does not prefer the clean answer (mean logit "
                               f"difference gap {base.mean_gap:.3g}): nothing to compare")
        lo, hi = recovery_interval(out["ld"], base)
        rec.append({"value": recovery(out["ld"], base), "low": lo, "high": hi})
        s, b, graph = edge_scores(hooked, pairs, ig_steps=ig_steps, batch_size=batch_size)
        scores.append(s)
        bases.append(b)
        roles.append(head_role_data(hooked, pair_sets, batch_size=batch_size))
        say("models", m + 1, M)
    if circuit_edges > len(graph.edges):
        raise CircuitError(f"circuit_edges must be at most {len(graph.edges)} (the graph's edges)")
    own = [[int(e) for e in np.argsort(-np.abs(s), kind="stable")[:circuit_edges]] for s in scores]
    if ref is None:
        ref = divmod(int(np.argmax(rec[0]["value"])), H)

    # 2. matchings: point, with the shuffled null, and one per bootstrap draw of the role data
    rng = np.random.default_rng(seed)
    vectors = [r.vectors() for r in roles]
    matchings = {(a, b): match_heads(vectors[a], vectors[b], L, H, null_draws=null_draws, seed=seed + a * M + b)
                 for a in range(M) for b in range(M) if a != b}
    boot_perms: dict[tuple[int, int], list[np.ndarray]] = {k: [] for k in matchings}
    for r in range(match_resamples):
        w = roles[0].resample_weights(rng)  # the models share pairs and quizzes: one draw for all
        bv = [x.vectors(w) for x in roles]
        for (a, b) in matchings:
            boot_perms[(a, b)].append(match_heads(bv[a], bv[b], L, H).perm)
        say("bootstrap matchings", r + 1, match_resamples)
    stability = {k: np.mean([p.reshape(-1) == matchings[k].perm.reshape(-1) for p in v], 0)
                 for k, v in boot_perms.items()}

    # 3. cross-model faithfulness: j's circuit carried to k, patched in k
    draws = _draws(rng, n_pairs, n_resamples)
    which_boot = np.arange(n_resamples) % match_resamples
    F = [[None] * M for _ in range(M)]
    rel = [[None] * M for _ in range(M)]
    nulls = [[None] * M for _ in range(M)]
    own_f = [None] * M
    for k in range(M):
        circuits = [own[k]]
        index = {}
        for j in range(M):
            if j == k:
                continue
            point = map_circuit(own[j], graph, matchings[(j, k)].perm)
            boots = [map_circuit(own[j], graph, p) for p in boot_perms[(j, k)]]
            rand = [map_circuit(own[j], graph, np.stack([rng.permutation(H) for _ in range(L)]))
                    for _ in range(null_circuits)]
            index[j] = (len(circuits), len(boots), len(rand))
            circuits += [point] + boots + rand
        ld, distinct = evaluate_mapped(models[k], pairs, circuits, batch_size=batch_size)
        row = np.array([distinct.index(tuple(sorted(c))) for c in circuits])
        base = bases[k]
        own_stats = replicates(ld, base, draws, np.full(n_resamples, row[0]))
        own_value = float(recovery(ld[row[0]], base))
        own_f[k] = interval(own_value, own_stats)
        for j in range(M):
            if j == k:
                F[j][k] = own_f[k]
                rel[j][k] = interval(1.0, np.ones(1))
                continue
            start, nb, nr = index[j]
            boot_rows = row[start + 1:start + 1 + nb]
            value = float(recovery(ld[row[start]], base))
            stats = replicates(ld, base, draws, boot_rows[which_boot])
            F[j][k] = interval(value, stats)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel[j][k] = interval(value / own_value if own_value else float("nan"), stats / own_stats)
            if nr:
                null_v = recovery(ld[row[start + 1 + nb:start + 1 + nb + nr]], base)
                nulls[j][k] = {"mean": float(np.mean(null_v)), "q95": float(np.quantile(null_v, 0.95)),
                               "draws": int(nr)}
        say("cross-model faithfulness", k + 1, M)

    features = None
    if saes is not None:
        features = _feature_part(models, saes, pairs, names, top_k_features, feature_quizzes, n_resamples,
                                 null_draws, seed, batch_size, match_resamples)
        say("SAE features", 1, 1)

    comparison = CircuitComparison(
        names=names, n_layers=L, n_heads=H, recovery=rec,
        circuits=[[{"src": graph.edge_name(e)[0], "dst": graph.edge_name(e)[1], "score": float(scores[m][e])}
                   for e in own[m]] for m in range(M)],
        circuit_heads=[circuit_heads(c, graph) for c in own], own_faithfulness=own_f, faithfulness=F,
        relative=rel, null_faithfulness=nulls, matchings=matchings, stability=stability, reference=ref,
        features=features)
    comparison.settings = {
        "task": task, "vary": vary, "n_pairs": n_pairs, "seed": seed, "profile_conditions": list(pair_sets),
        "profile_pairs": profile_pairs, "circuit_edges": circuit_edges, "ig_steps": ig_steps,
        "n_resamples": n_resamples, "match_resamples": match_resamples, "null_draws": null_draws,
        "null_circuits": null_circuits, "n_edges": len(graph.edges),
        "faithfulness": "recovery of the logit difference with every edge outside the circuit patched from the "
                        "corrupted run; a circuit of model j is carried to model k by the head matching j->k",
        "intervals": "95% percentile bootstrap: pairs resampled, and each replicate uses the head matching re-done "
                     "on resampled role data; widened to contain the estimate when it misses it"}
    return comparison


def _feature_part(models, saes, pairs, names, top_k, n_quizzes, n_resamples, null_draws, seed, batch_size,
                  match_resamples) -> dict:
    from culture.circuits.feature_roles import (
        feature_activations,
        feature_effects,
        match_sae_features,
        rematched_partners,
        shared_causal_share,
    )

    present = [m for m, s in enumerate(saes) if s is not None]
    effects = {m: feature_effects(models[m], saes[m], pairs, batch_size=batch_size) for m in present}
    quizzes = pairs.clean[:n_quizzes]
    acts = {m: feature_activations(models[m], saes[m], quizzes, batch_size=batch_size) for m in present}
    top = {names[m]: [{"feature": int(f), "effect": float(effects[m].mean()[f])} for f in effects[m].top(top_k)]
           for m in present}
    shares = {}
    for a in present:
        for b in present:
            if a == b:
                continue
            mt = match_sae_features(acts[a], acts[b])
            rematched = rematched_partners(acts[a], acts[b], len(quizzes), match_resamples, seed=seed + 1 + a * 97 + b)
            shares[f"{names[a]}->{names[b]}"] = shared_causal_share(
                effects[a], effects[b], mt.a_index, mt.b_index, top_k=top_k, n_resamples=n_resamples,
                null_draws=null_draws, seed=seed, rematched=rematched)
    return {"top_features": top, "shared": shares, "top_k": top_k, "matching_quizzes": int(len(quizzes)),
            "interval": "95% percentile bootstrap over pairs; each replicate uses one of the "
                        f"{match_resamples} matchings re-done on resampled matching quizzes",
            "effect": "attribution through the SAE: sum over positions of (f_clean - f_corrupted) * (W_dec[f] . "
                      "dLD/dx), divided by the mean gap"}
