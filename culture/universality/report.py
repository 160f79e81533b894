"""The result of :func:`culture.universality.compare_models`: neurons per
control and layer (with their null baseline, held-out replication,
random-init models and bootstrap intervals), residual CKA (linear and
debiased, permutation test, random models), SAE features (one to one, many
to one, floor, ceiling, families); tables (``summary_rows``...) and JSON
(``to_dict``).

Definitions (model i, neuron n, the other models j; see
:mod:`~culture.universality.neurons`):

* ``pair_max[(i, j)][n]`` - max over every neuron of every compared layer of
  model j of the Pearson correlation with neuron n (signed);
* ``baseline_max[(i, j)][n]`` - the same against the null version of j
  (rotation by default);
* excess - mean over j of pair_max minus mean over j of baseline_max;
* universal - alive and excess > threshold (Gurnee et al.: 0.5);
* held-out - partners chosen on the even-index quizzes, correlations (and
  the baseline partner's) measured on the odd-index ones;
* dead - constant over the tokens (within the control's groups): excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from culture.universality.features import FeatureFamily, SAEPair


# ------------------------------------------------------------------ neurons


@dataclass
class NeuronLayer:
    """Neuron universality at one layer, one group of models (trained; the
    random-init models in ``random``), one control."""

    layer: int
    hook: str
    threshold: float
    control: str
    baseline_kind: str
    layers: list[int]  # the compared layers (where partners may live)
    n_neurons: list[int]
    dead: list[np.ndarray]
    pair_max: dict[tuple[int, int], np.ndarray]
    pair_layer: dict[tuple[int, int], np.ndarray]  # layer number of the best partner in j
    pair_argmax: dict[tuple[int, int], np.ndarray]  # its index within that layer
    same_layer_max: dict[tuple[int, int], np.ndarray]
    baseline_max: dict[tuple[int, int], np.ndarray]
    held_corr: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    held_baseline: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    held_alive: list[np.ndarray] | None = None
    intervals: dict = field(default_factory=dict)  # name -> (low, high)
    task_fire_rate: list[np.ndarray] | None = None  # (K, H_i)
    task_mean: list[np.ndarray] | None = None
    random: NeuronLayer | None = None

    @property
    def n_models(self) -> int:
        return len(self.n_neurons)

    def others(self, i: int) -> list[int]:
        return [j for j in range(self.n_models) if j != i]

    def alive(self, i: int) -> np.ndarray:
        return ~self.dead[i]

    def _mean(self, table, i) -> np.ndarray:
        out = np.mean([table[(i, j)] for j in self.others(i)], axis=0)
        return np.where(self.dead[i], 0.0, out)

    def mean_max(self, i: int) -> np.ndarray:
        """(H_i,) mean over the other models of the neuron's max-corr."""
        return self._mean(self.pair_max, i)

    def mean_baseline(self, i: int) -> np.ndarray:
        return self._mean(self.baseline_max, i)

    def excess(self, i: int) -> np.ndarray:
        return self.mean_max(i) - self.mean_baseline(i)

    def universal(self, i: int) -> np.ndarray:
        return self.alive(i) & (self.excess(i) > self.threshold)

    def held_excess(self, i: int) -> np.ndarray | None:
        if not self.held_corr:
            return None
        return np.where(self.held_alive[i], self._mean(self.held_corr, i) - self._mean(self.held_baseline, i), 0.0)

    def held_universal(self, i: int) -> np.ndarray | None:
        e = self.held_excess(i)
        return None if e is None else self.alive(i) & self.held_alive[i] & (e > self.threshold)

    def share_universal(self, i: int | None = None) -> float:
        """Share of alive neurons that are universal (model i, or pooled over models)."""
        models = range(self.n_models) if i is None else [i]
        alive = sum(int(self.alive(k).sum()) for k in models)
        return sum(int(self.universal(k).sum()) for k in models) / alive if alive else 0.0

    def held_share(self) -> float | None:
        if not self.held_corr:
            return None
        alive = sum(int((self.alive(k) & self.held_alive[k]).sum()) for k in range(self.n_models))
        return sum(int(self.held_universal(k).sum()) for k in range(self.n_models)) / alive if alive else 0.0

    def _pooled(self, fn) -> float:
        vals = [fn(k)[self.alive(k)] for k in range(self.n_models)]
        vals = np.concatenate(vals) if vals else np.zeros(0)
        return float(vals.mean()) if vals.size else 0.0

    def mean_max_corr(self) -> float:
        return self._pooled(self.mean_max)

    def mean_baseline_corr(self) -> float:
        return self._pooled(self.mean_baseline)

    def mean_excess(self) -> float:
        return self._pooled(self.excess)

    def held_mean_excess(self) -> float | None:
        if not self.held_corr:
            return None
        vals = np.concatenate([self.held_excess(k)[self.alive(k) & self.held_alive[k]] for k in range(self.n_models)])
        return float(vals.mean()) if vals.size else 0.0

    def same_layer_share(self) -> float:
        """Share of (alive neuron, other model) whose best partner is in the same layer."""
        hits = total = 0
        for (i, j), lay in self.pair_layer.items():
            alive = self.alive(i)
            hits += int((lay[alive] == self.layer).sum())
            total += int(alive.sum())
        return hits / total if total else 0.0

    def partner_layers(self) -> dict[int, float]:
        """{layer: share of best partners living there} over (alive neuron, other model)."""
        counts: dict[int, int] = {}
        total = 0
        for (i, j), lay in self.pair_layer.items():
            for v in lay[self.alive(i)].tolist():
                counts[int(v)] = counts.get(int(v), 0) + 1
                total += 1
        return {k: counts.get(k, 0) / total if total else 0.0 for k in self.layers}

    def pair_share(self) -> np.ndarray:
        """(M, M): share of model i's alive neurons with max-corr in j minus
        baseline max-corr in j above the threshold (diagonal 1)."""
        m = self.n_models
        out = np.ones((m, m))
        for (i, j), v in self.pair_max.items():
            alive = self.alive(i)
            ex = v - self.baseline_max[(i, j)]
            out[i, j] = float((ex[alive] > self.threshold).mean()) if alive.any() else 0.0
        return out

    def interval(self, name: str):
        v = self.intervals.get(name)
        return None if v is None else tuple(v)


# ---------------------------------------------------------------------- CKA


@dataclass
class CKAResult:
    """Residual CKA: (rows_i, rows_j) matrices per model pair (i < j); linear
    under every control, debiased and the permutation test under the primary one."""

    labels: list[list[str]]
    hooks: list[list[str]]
    linear: dict[str, dict[tuple[int, int], np.ndarray]]  # every control
    debiased: dict[str, dict[tuple[int, int], np.ndarray]]  # the primary control
    random_linear: dict[str, dict[tuple[int, int], np.ndarray]] | None = None
    random_debiased: dict[str, dict[tuple[int, int], np.ndarray]] | None = None
    tests: dict = field(default_factory=dict)  # ((i, j), r, s) -> p-values (primary control)
    primary: str = "none"
    permutations: int = 0

    @property
    def pairs(self) -> dict[tuple[int, int], np.ndarray]:
        """Linear CKA under the primary control."""
        return self.linear[self.primary]

    @property
    def baseline(self):
        return None if self.random_linear is None else self.random_linear[self.primary]


# --------------------------------------------------------------------- SAEs


@dataclass
class SAEComparison:
    """SAE features of the compared models: entries (one SAE per model, plus
    ceiling SAEs), pairs, families."""

    threshold: float
    control: str
    labels: list[str]
    models: list[int]
    hooks: list[str]
    d_sae: list[int]
    pairs: dict[tuple[int, int], SAEPair]
    anchor: int | None = None
    family_members: list[int] = field(default_factory=list)
    families: list[FeatureFamily] = field(default_factory=list)
    null_families: int = 0
    categories: list[str] = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # family index -> (quizzes, {entry: acts (k, 404)}, titles)


# ------------------------------------------------------------------- report


@dataclass
class UniversalityReport:
    """Everything :func:`compare_models` measured (numpy arrays); see
    :meth:`to_dict` for the JSON layout and the ``*_rows`` methods for tables."""

    names: list[str]
    settings: dict
    task_names: list[str]
    task_tokens: np.ndarray
    controls: dict[str, list[NeuronLayer]]
    cka: CKAResult | None = None
    sae: SAEComparison | None = None

    @property
    def primary(self) -> str:
        return next(iter(self.controls))

    @property
    def neurons(self) -> list[NeuronLayer]:
        """The neuron layers under the primary control."""
        return self.controls[self.primary] if self.controls else []

    @property
    def threshold(self) -> float:
        return float(self.settings["threshold"])

    # ------------------------------------------------------------- tables

    def summary_rows(self, control: str | None = None) -> list[dict]:
        """One row per layer (pooled over models) under ``control`` (default the
        primary one): max-corr, baseline max-corr, excess, share universal, the
        held-out replication, the random-init models, where partners live,
        each share / mean with its bootstrap interval."""
        rows = []
        for nl in self.controls[control or self.primary]:
            r = nl.random
            row = {
                "layer": nl.layer,
                "control": nl.control,
                "neurons": int(np.mean(nl.n_neurons)) if len(set(nl.n_neurons)) == 1 else "/".join(
                    map(str, nl.n_neurons)),
                "dead": float(np.mean([nl.dead[i].mean() for i in range(nl.n_models)])),
                "universal": int(sum(nl.universal(i).sum() for i in range(nl.n_models))),
                "mean_max_corr": nl.mean_max_corr(), "mean_baseline": nl.mean_baseline_corr(),
                "mean_excess": nl.mean_excess(),
                "share_universal": nl.share_universal(), "share_universal_ci": nl.interval("share"),
                "held_share_universal": nl.held_share(), "held_share_universal_ci": nl.interval("held_share"),
                "held_mean_excess": nl.held_mean_excess(),
                "same_layer_partner": nl.same_layer_share(),
                "partner_layers": nl.partner_layers(),
                "random_share_universal": r.share_universal() if r is not None else None,
                "random_share_universal_ci": r.interval("share") if r is not None else None,
                "random_mean_max_corr": r.mean_max_corr() if r is not None else None,
                "random_mean_excess": r.mean_excess() if r is not None else None,
            }
            rows.append(row)
        return rows

    def control_rows(self) -> list[dict]:
        """Per layer, per control: share universal [interval], mean excess, held-out share."""
        out = []
        for control, layers in self.controls.items():
            for nl in layers:
                out.append({"control": control, "layer": nl.layer, "share_universal": nl.share_universal(),
                            "share_universal_ci": nl.interval("share"), "mean_excess": nl.mean_excess(),
                            "held_share_universal": nl.held_share(),
                            "held_share_universal_ci": nl.interval("held_share"),
                            "mean_max_corr": nl.mean_max_corr(), "mean_baseline": nl.mean_baseline_corr(),
                            "dead": float(np.mean([nl.dead[i].mean() for i in range(nl.n_models)])),
                            "random_share_universal": nl.random.share_universal() if nl.random else None})
        return out

    def task_profile(self, i: int, nl: NeuronLayer, n: int) -> dict:
        if nl.task_fire_rate is None:
            return {}
        return {t: {"fire_rate": float(nl.task_fire_rate[i][k, n]), "mean": float(nl.task_mean[i][k, n])}
                for k, t in enumerate(self.task_names)}

    def preferred_task(self, means: np.ndarray) -> tuple[str, float]:
        total = float(np.clip(means, 0, None).sum())
        k = int(np.argmax(means))
        return self.task_names[k], (float(max(means[k], 0.0)) / total if total > 0 else 0.0)

    def universal_neurons(self, control: str | None = None) -> list[dict]:
        """Every universal neuron (under ``control``): model, layer, neuron,
        excess, best partner per model (layer, neuron, corr), its tasks."""
        out = []
        for nl in self.controls[control or self.primary]:
            for i in range(nl.n_models):
                ex, mm = nl.excess(i), nl.mean_max(i)
                held = nl.held_excess(i)
                for n in np.nonzero(nl.universal(i))[0]:
                    n = int(n)
                    entry = {
                        "model": self.names[i], "layer": nl.layer, "neuron": n, "excess": float(ex[n]),
                        "mean_max_corr": float(mm[n]), "mean_baseline": float(nl.mean_baseline(i)[n]),
                        "held_excess": None if held is None else float(held[n]),
                        "matches": {self.names[j]: {"layer": int(nl.pair_layer[(i, j)][n]),
                                                    "neuron": int(nl.pair_argmax[(i, j)][n]),
                                                    "corr": float(nl.pair_max[(i, j)][n])}
                                    for j in nl.others(i)},
                    }
                    if nl.task_mean is not None:
                        task, share = self.preferred_task(nl.task_mean[i][:, n])
                        entry["preferred_task"] = task
                        entry["preferred_task_share"] = share
                        entry["tasks"] = self.task_profile(i, nl, n)
                    out.append(entry)
        out.sort(key=lambda e: (-e["excess"], e["layer"], e["model"], e["neuron"]))
        return out

    def cka_diagonal_rows(self, control: str | None = None) -> list[dict]:
        """CKA at matching depth over the pairs of equal depth: linear and
        debiased (mean, min), random-model means, the largest permutation p."""
        if self.cka is None:
            return []
        control = control or self.cka.primary
        lin, deb = self.cka.linear[control], self.cka.debiased.get(control)
        rows = []
        n_rows = min(len(lab) for lab in self.cka.labels)
        for r in range(n_rows):
            vals, dvals, base, dbase, p_lin, p_deb = [], [], [], [], [], []
            for (i, j), mat in lin.items():
                if self.cka.labels[i] != self.cka.labels[j]:
                    continue
                vals.append(mat[r, r])
                if deb is not None:
                    dvals.append(deb[(i, j)][r, r])
                if self.cka.random_linear is not None:
                    base.append(self.cka.random_linear[control][(i, j)][r, r])
                    if deb is not None:
                        dbase.append(self.cka.random_debiased[control][(i, j)][r, r])
                t = self.cka.tests.get(((i, j), r, r)) if control == self.cka.primary else None
                if t:
                    p_lin.append(t["linear"])
                    p_deb.append(t["debiased"])
            if not vals:
                continue
            rows.append({"layer": self.cka.labels[0][r], "control": control,
                         "mean": float(np.mean(vals)), "min": float(np.min(vals)),
                         "debiased_mean": float(np.mean(dvals)) if dvals else None,
                         "debiased_min": float(np.min(dvals)) if dvals else None,
                         "baseline_mean": float(np.mean(base)) if base else None,
                         "baseline_debiased_mean": float(np.mean(dbase)) if dbase else None,
                         "max_p_linear": max(p_lin) if p_lin else None,
                         "max_p_debiased": max(p_deb) if p_deb else None,
                         "permutations": self.cka.permutations if p_lin else None})
        return rows

    def sae_rows(self) -> list[dict]:
        """Per SAE pair: alive features, one-to-one share above the threshold
        and median correlation [interval] with the shuffled-quiz floor, many-to-one
        mean max-corr with its floor, decoder cosine and SVCCA with theirs."""
        if self.sae is None:
            return []
        s = self.sae
        rows = []
        for (a, b), p in s.pairs.items():
            mt = p.matching
            ma, mb = p.mean_max()
            rows.append({
                "pair": f"{s.labels[a]} - {s.labels[b]}",
                "kind": "ceiling (same model, other seed)" if p.same_model else "across models",
                "alive": f"{int((~p.dead_a).sum())}/{int((~p.dead_b).sum())}",
                "matched": len(mt),
                "share_above": p.share_above(s.threshold), "share_above_ci": p.intervals.get("share_above"),
                "null_share_above": p.null_share_above(s.threshold),
                "median_matched_corr": float(np.median(mt.corr)) if len(mt) else 0.0,
                "mean_matched_corr": float(np.mean(mt.corr)) if len(mt) else 0.0,
                "null_median_matched_corr": (float(np.median(p.null_matching.corr))
                                             if p.null_matching is not None and len(p.null_matching) else None),
                "mean_max_corr": (ma + mb) / 2, "mean_max_corr_a": ma, "mean_max_corr_b": mb,
                "share_max_above_a": float((p.max_corr_a[~p.dead_a] > s.threshold).mean()) if (~p.dead_a).any()
                else 0.0, "share_max_above_a_ci": p.intervals.get("share_max_above_a"),
                "null_share_max_above_a": (float((p.null_max_a > s.threshold).mean())
                                           if p.null_max_a is not None and p.null_max_a.size else None),
                "null_mean_max_corr": (float(np.mean(np.concatenate([p.null_max_a, p.null_max_b])))
                                       if p.null_max_a is not None else None),
                "mean_decoder_cos": float(np.mean(p.decoder_cos)) if p.decoder_cos is not None else None,
                "decoder_cos_floor": p.decoder_cos_floor,
                "svcca": p.svcca, "svcca_floor": p.svcca_floor[0] if p.svcca_floor else None,
                "svcca_floor_p95": p.svcca_floor[1] if p.svcca_floor else None,
            })
        return rows

    def family_rows(self, top: int | None = None) -> list[dict]:
        """The feature families (strongest first): members, correlation with the
        anchor, consistency, firing rates per category."""
        if self.sae is None:
            return []
        s = self.sae
        fams = sorted(s.families, key=lambda f: -f.min_corr)
        out = []
        for k, f in enumerate(fams[:top] if top else fams):
            out.append({"family": s.families.index(f),
                        "members": {s.labels[e]: int(v) for e, v in f.members.items()},
                        "corr": {s.labels[e]: float(v) for e, v in f.corr.items()},
                        "min_corr": f.min_corr, "consistent": f.consistent,
                        "rates": {c: {"value": v, "ci95": list(ci)} for c, (v, ci) in f.rates.items()},
                        "member_rates": {s.labels[e]: r for e, r in f.member_rates.items()}})
        return out

    # --------------------------------------------------------------- JSON

    def _neuron_layer_dict(self, nl: NeuronLayer, detail: bool) -> dict:
        names = self.names
        out = {"layer": nl.layer, "hook": nl.hook, "control": nl.control, "baseline": nl.baseline_kind,
               "threshold": nl.threshold, "share_universal": _r(nl.share_universal()),
               "share_universal_ci95": _r(nl.interval("share")),
               "held_share_universal": _r(nl.held_share()), "held_share_universal_ci95": _r(nl.interval("held_share")),
               "mean_max_corr": _r(nl.mean_max_corr()), "mean_baseline": _r(nl.mean_baseline_corr()),
               "mean_excess": _r(nl.mean_excess()), "intervals": _r(nl.intervals),
               "partner_layers": _r(nl.partner_layers()), "pair_share_universal": _r(nl.pair_share()),
               "random": None if nl.random is None else {
                   "share_universal": _r(nl.random.share_universal()),
                   "share_universal_ci95": _r(nl.random.interval("share")),
                   "mean_max_corr": _r(nl.random.mean_max_corr()), "mean_excess": _r(nl.random.mean_excess())}}
        if detail:
            out["models"] = []
            for i in range(nl.n_models):
                e = {"model": names[i], "neurons": nl.n_neurons[i], "dead": int(nl.dead[i].sum()),
                     "universal": int(nl.universal(i).sum()), "share_universal": _r(nl.share_universal(i)),
                     "dead_neurons": np.nonzero(nl.dead[i])[0].tolist(),
                     "universal_neurons": np.nonzero(nl.universal(i))[0].tolist(),
                     "neuron_excess": _r(nl.excess(i)), "neuron_mean_max_corr": _r(nl.mean_max(i)),
                     "neuron_mean_baseline": _r(nl.mean_baseline(i)),
                     "neuron_held_excess": _r(nl.held_excess(i)),
                     "neuron_max_corr": {names[j]: _r(nl.pair_max[(i, j)]) for j in nl.others(i)},
                     "neuron_best_match": {names[j]: {"layer": nl.pair_layer[(i, j)].tolist(),
                                                      "neuron": nl.pair_argmax[(i, j)].tolist()}
                                           for j in nl.others(i)}}
                out["models"].append(e)
        return out

    def to_dict(self) -> dict:
        """Every number, JSON-ready (floats rounded to 6 decimals)."""
        names = self.names
        out: dict[str, Any] = {
            "kind": "culture-interp universality",
            "models": names,
            "settings": self.settings,
            "tasks": {t: int(self.task_tokens[k]) for k, t in enumerate(self.task_names)},
            "summary": [_rd(row) for row in self.summary_rows()],
            "controls": [_rd(row) for row in self.control_rows()],
            "neurons": {c: [self._neuron_layer_dict(nl, c == self.primary) for nl in layers]
                        for c, layers in self.controls.items()},
            "universal_neurons": [_rd(e) for e in self.universal_neurons()],
            "cka": None,
            "sae": None,
        }
        if self.cka is not None:
            c = self.cka
            out["cka"] = {
                "primary_control": c.primary, "permutations": c.permutations,
                "layers": {names[i]: lab for i, lab in enumerate(c.labels)},
                "hooks": {names[i]: h for i, h in enumerate(c.hooks)},
                "diagonal": {ctl: [_rd(r) for r in self.cka_diagonal_rows(ctl)] for ctl in c.linear},
                "pairs": [{"models": [names[i], names[j]], "control": ctl, "linear": _r(mat),
                           "debiased": _r(c.debiased[ctl][(i, j)]) if ctl in c.debiased else None,
                           "random_linear": _r(c.random_linear[ctl][(i, j)]) if c.random_linear else None,
                           "random_debiased": (_r(c.random_debiased[ctl][(i, j)])
                                               if c.random_debiased and ctl in c.random_debiased else None)}
                          for ctl, mats in c.linear.items() for (i, j), mat in mats.items()],
                "tests": [{"models": [names[i], names[j]], "rows": [c.labels[i][r], c.labels[j][s]], **_rd(v)}
                          for ((i, j), r, s), v in c.tests.items()],
            }
        if self.sae is not None:
            s = self.sae
            out["sae"] = {
                "threshold": s.threshold, "control": s.control,
                "saes": [{"label": lab, "model": names[s.models[e]], "hook": s.hooks[e], "d_sae": s.d_sae[e]}
                         for e, lab in enumerate(s.labels)],
                "summary": [_rd(r) for r in self.sae_rows()],
                "families": {"anchor": s.labels[s.anchor] if s.anchor is not None else None,
                             "members": [s.labels[e] for e in s.family_members],
                             "count": len(s.families), "null_count": s.null_families,
                             "consistent": int(sum(f.consistent for f in s.families)),
                             "list": [_rd(r) for r in self.family_rows()]},
                "pairs": [{"saes": [s.labels[a], s.labels[b]], "same_model": p.same_model,
                           "a_index": p.matching.a_index.tolist(), "b_index": p.matching.b_index.tolist(),
                           "matched_corr": _r(p.matching.corr),
                           "null_matched_corr": _r(p.null_matching.corr) if p.null_matching is not None else None,
                           "max_corr_a": _r(p.max_corr_a), "max_corr_b": _r(p.max_corr_b),
                           "decoder_cos": _r(p.decoder_cos), "intervals": _r(p.intervals)}
                          for (a, b), p in s.pairs.items()],
            }
        return out


def _r(x, nd: int = 6):
    """Round floats (also inside arrays / lists / tuples / dicts) for JSON."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "fc":
            return [_r(v, nd) for v in x.astype(float).tolist()] if x.ndim else _r(float(x), nd)
        return x.tolist()
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return round(v, nd) if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {str(k): _r(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    return x


def _rd(d: dict) -> dict:
    return {k: _r(v) for k, v in d.items()}


__all__ = ["UniversalityReport", "NeuronLayer", "CKAResult", "SAEComparison"]
