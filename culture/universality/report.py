"""The result of :func:`culture.universality.compare_models`: per-layer neuron
correlations, residual CKA, SAE matchings, per-task activity, with their
random-init baselines; tables (``summary_rows``...) and JSON (``to_dict``).

Definitions (model i, neuron n, layer L, the other models j):

* ``pair_max[(i, j)][n]`` - max over model j's neurons of the Pearson
  correlation with neuron n over the same tokens (signed);
* ``mean_max(i)[n]`` - its mean over j != i ("mean max-correlation");
* universal - alive and mean max-correlation > threshold;
* dead - constant over the tokens (never fires): correlation 0, excluded from
  shares and means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from culture.universality.stats import FeatureMatching


# ---------------------------------------------------------------- results


@dataclass
class NeuronLayer:
    """Neuron max-correlations at one layer (one group of models: trained, or
    the random baseline, in ``baseline``)."""

    layer: int
    hook: str
    threshold: float
    n_neurons: list[int]
    dead: list[np.ndarray]  # (H_i,) bool: constant over the tokens
    pair_max: dict[tuple[int, int], np.ndarray]  # (i, j), i != j: (H_i,) best correlation in model j
    pair_argmax: dict[tuple[int, int], np.ndarray]  # (H_i,) that partner's index in model j
    task_fire_rate: list[np.ndarray] | None = None  # (K, H_i) share of the task's tokens with activation > 0
    task_mean: list[np.ndarray] | None = None  # (K, H_i) mean activation on the task's tokens
    baseline: NeuronLayer | None = None

    @property
    def n_models(self) -> int:
        return len(self.n_neurons)

    def mean_max(self, i: int) -> np.ndarray:
        """(H_i,) mean over the other models of the neuron's max correlation (0 for dead)."""
        others = [self.pair_max[(i, j)] for j in range(self.n_models) if j != i]
        out = np.mean(others, axis=0) if others else np.zeros(self.n_neurons[i])
        return np.where(self.dead[i], 0.0, out)

    def alive(self, i: int) -> np.ndarray:
        return ~self.dead[i]

    def universal(self, i: int) -> np.ndarray:
        """(H_i,) bool: alive and mean max-correlation > threshold."""
        return self.alive(i) & (self.mean_max(i) > self.threshold)

    def share_universal(self, i: int) -> float:
        alive = self.alive(i)
        return float(self.universal(i)[alive].mean()) if alive.any() else 0.0

    def mean_max_corr(self, i: int) -> float:
        alive = self.alive(i)
        return float(self.mean_max(i)[alive].mean()) if alive.any() else 0.0

    def pair_share(self) -> np.ndarray:
        """(M, M): share of model i's alive neurons whose max correlation in
        model j exceeds the threshold (diagonal 1: a model matches itself)."""
        m = self.n_models
        out = np.ones((m, m))
        for (i, j), v in self.pair_max.items():
            alive = self.alive(i)
            out[i, j] = float((v[alive] > self.threshold).mean()) if alive.any() else 0.0
        return out

    def pair_mean(self) -> np.ndarray:
        """(M, M): mean over model i's alive neurons of their max correlation in model j."""
        m = self.n_models
        out = np.ones((m, m))
        for (i, j), v in self.pair_max.items():
            alive = self.alive(i)
            out[i, j] = float(v[alive].mean()) if alive.any() else 0.0
        return out


@dataclass
class CKAResult:
    """Linear CKA between residual-stream layers, per model pair (i < j)."""

    labels: list[list[str]]  # per model: "embed", "0", "1"...
    hooks: list[list[str]]
    pairs: dict[tuple[int, int], np.ndarray]  # (L_i, L_j)
    baseline: dict[tuple[int, int], np.ndarray] | None = None


@dataclass
class SAEPair:
    """Two SAEs' features matched one to one."""

    i: int
    j: int
    matching: FeatureMatching
    max_corr_a: np.ndarray  # (d_i,) best correlation of each of i's features among j's
    max_corr_b: np.ndarray  # (d_j,)
    decoder_cos: np.ndarray | None  # (k,) cosine of the matched decoder directions


@dataclass
class SAEComparison:
    """SAE features of several models (entries None where a model has no SAE)."""

    threshold: float
    hooks: list[str | None]
    d_sae: list[int]
    dead: list[np.ndarray | None]
    pairs: dict[tuple[int, int], SAEPair]
    task_fire_rate: list[np.ndarray | None]
    task_mean: list[np.ndarray | None]

    @property
    def members(self) -> list[int]:
        return [i for i, h in enumerate(self.hooks) if h is not None]

    def matched_mean(self, i: int) -> np.ndarray:
        """(d_i,) mean over the other SAEs of the feature's matched correlation (0 when unmatched)."""
        vals = []
        for (a, b), p in self.pairs.items():
            if i not in (a, b):
                continue
            v = np.zeros(self.d_sae[i])
            if a == i:
                v[p.matching.a_index] = p.matching.corr
            else:
                v[p.matching.b_index] = p.matching.corr
            vals.append(v)
        return np.mean(vals, axis=0) if vals else np.zeros(self.d_sae[i])

    def universal(self, i: int) -> np.ndarray:
        return ~self.dead[i] & (self.matched_mean(i) > self.threshold)


@dataclass
class UniversalityReport:
    """Everything :func:`compare_models` measured. Arrays are numpy; see
    :meth:`to_dict` for the JSON layout and :meth:`summary_rows` for tables."""

    names: list[str]
    settings: dict
    task_names: list[str]
    task_tokens: np.ndarray  # (K,) tokens per task
    neurons: list[NeuronLayer]
    cka: CKAResult | None = None
    sae: SAEComparison | None = None

    @property
    def threshold(self) -> float:
        return float(self.settings["threshold"])

    # ------------------------------------------------------------- tables

    def summary_rows(self) -> list[dict]:
        """One row per layer, averaged over models: neurons, dead share, share
        universal and mean max-correlation, each with its baseline, and the
        excess (trained minus baseline) mean max-correlation."""
        rows = []
        for nl in self.neurons:
            m = nl.n_models
            row = {
                "layer": nl.layer,
                "neurons": int(np.mean(nl.n_neurons)) if len(set(nl.n_neurons)) == 1 else "/".join(
                    map(str, nl.n_neurons)),
                "dead": float(np.mean([nl.dead[i].mean() for i in range(m)])),
                "universal": int(sum(nl.universal(i).sum() for i in range(m))),
                "share_universal": float(np.mean([nl.share_universal(i) for i in range(m)])),
                "mean_max_corr": float(np.mean([nl.mean_max_corr(i) for i in range(m)])),
                "baseline_share_universal": None,
                "baseline_mean_max_corr": None,
                "excess_mean_max_corr": None,
            }
            b = nl.baseline
            if b is not None:
                row["baseline_share_universal"] = float(np.mean([b.share_universal(i) for i in range(m)]))
                row["baseline_mean_max_corr"] = float(np.mean([b.mean_max_corr(i) for i in range(m)]))
                row["excess_mean_max_corr"] = row["mean_max_corr"] - row["baseline_mean_max_corr"]
            rows.append(row)
        return rows

    def task_profile(self, i: int, nl: NeuronLayer, n: int) -> dict:
        """Per-task firing rate and mean activation of neuron n of model i at layer nl."""
        if nl.task_fire_rate is None:
            return {}
        return {t: {"fire_rate": float(nl.task_fire_rate[i][k, n]), "mean": float(nl.task_mean[i][k, n])}
                for k, t in enumerate(self.task_names)}

    def preferred_task(self, means: np.ndarray) -> tuple[str, float]:
        """(task with the highest mean activation, its share of the summed task means)."""
        total = float(np.clip(means, 0, None).sum())
        k = int(np.argmax(means))
        return self.task_names[k], (float(max(means[k], 0.0)) / total if total > 0 else 0.0)

    def universal_neurons(self) -> list[dict]:
        """Every universal neuron: model, layer, neuron, mean max-correlation, its
        best partner in each other model, its tasks; sorted by correlation."""
        out = []
        for nl in self.neurons:
            for i in range(nl.n_models):
                mm = nl.mean_max(i)
                for n in np.nonzero(nl.universal(i))[0]:
                    n = int(n)
                    entry = {
                        "model": self.names[i], "layer": nl.layer, "neuron": n,
                        "mean_max_corr": float(mm[n]),
                        "matches": {self.names[j]: {"neuron": int(nl.pair_argmax[(i, j)][n]),
                                                    "corr": float(nl.pair_max[(i, j)][n])}
                                    for j in range(nl.n_models) if j != i},
                    }
                    if nl.task_mean is not None:
                        task, share = self.preferred_task(nl.task_mean[i][:, n])
                        entry["preferred_task"] = task
                        entry["preferred_task_share"] = share
                        entry["tasks"] = self.task_profile(i, nl, n)
                    out.append(entry)
        out.sort(key=lambda e: (-e["mean_max_corr"], e["layer"], e["model"], e["neuron"]))
        return out

    def task_rows(self) -> list[dict]:
        """Per task: how many universal neurons prefer it (highest mean
        activation) against the share of all alive neurons that prefer it."""
        if not self.neurons or self.neurons[0].task_mean is None:
            return []
        univ = np.zeros(len(self.task_names))
        alive = np.zeros(len(self.task_names))
        for nl in self.neurons:
            for i in range(nl.n_models):
                if not nl.alive(i).any():
                    continue
                pref = np.argmax(nl.task_mean[i], axis=0)
                alive += np.bincount(pref[nl.alive(i)], minlength=len(self.task_names))
                univ += np.bincount(pref[nl.universal(i)], minlength=len(self.task_names))
        nu, na = univ.sum(), alive.sum()
        return [{"task": t, "tokens": int(self.task_tokens[k]), "universal_preferring": int(univ[k]),
                 "share_of_universal": float(univ[k] / nu) if nu else 0.0,
                 "share_of_alive": float(alive[k] / na) if na else 0.0}
                for k, t in enumerate(self.task_names)]

    def cka_diagonal_rows(self) -> list[dict]:
        """CKA at matching depth (row r of model i against row r of model j),
        over the model pairs with equal depth: mean, min, and the baseline mean."""
        if self.cka is None or not self.cka.pairs:
            return []
        rows = []
        n_rows = min(len(lab) for lab in self.cka.labels)
        for r in range(n_rows):
            vals, base = [], []
            for (i, j), mat in self.cka.pairs.items():
                if self.cka.labels[i] != self.cka.labels[j]:
                    continue
                vals.append(mat[r, r])
                if self.cka.baseline is not None:
                    base.append(self.cka.baseline[(i, j)][r, r])
            if not vals:
                continue
            rows.append({"layer": self.cka.labels[0][r], "mean": float(np.mean(vals)), "min": float(np.min(vals)),
                         "baseline_mean": float(np.mean(base)) if base else None})
        return rows

    def sae_rows(self) -> list[dict]:
        """Per SAE pair: alive features, matched pairs, median matched
        correlation, share above the threshold, mean decoder cosine."""
        if self.sae is None:
            return []
        rows = []
        for (i, j), p in self.sae.pairs.items():
            mt = p.matching
            rows.append({
                "pair": f"{self.names[i]}-{self.names[j]}",
                "alive": f"{int((~self.sae.dead[i]).sum())}/{int((~self.sae.dead[j]).sum())}",
                "matched": len(mt),
                "median_matched_corr": float(np.median(mt.corr)) if len(mt) else 0.0,
                "mean_matched_corr": float(np.mean(mt.corr)) if len(mt) else 0.0,
                "share_above": mt.share_above(self.sae.threshold),
                "mean_decoder_cos": float(np.mean(p.decoder_cos)) if p.decoder_cos is not None and len(mt) else None,
            })
        return rows

    def universal_features(self) -> list[dict]:
        """Every universal SAE feature (mean matched correlation > threshold) with its tasks."""
        if self.sae is None:
            return []
        out = []
        for i in self.sae.members:
            mm = self.sae.matched_mean(i)
            for f in np.nonzero(self.sae.universal(i))[0]:
                f = int(f)
                partners = {}
                for (a, b), p in self.sae.pairs.items():
                    if i == a:
                        k = np.nonzero(p.matching.a_index == f)[0]
                        if k.size:
                            partners[self.names[b]] = {"feature": int(p.matching.b_index[k[0]]),
                                                       "corr": float(p.matching.corr[k[0]])}
                    elif i == b:
                        k = np.nonzero(p.matching.b_index == f)[0]
                        if k.size:
                            partners[self.names[a]] = {"feature": int(p.matching.a_index[k[0]]),
                                                       "corr": float(p.matching.corr[k[0]])}
                entry = {"model": self.names[i], "feature": f, "mean_matched_corr": float(mm[f]),
                         "matches": partners}
                if self.sae.task_mean[i] is not None:
                    task, share = self.preferred_task(self.sae.task_mean[i][:, f])
                    entry["preferred_task"] = task
                    entry["preferred_task_share"] = share
                    entry["tasks"] = {t: {"fire_rate": float(self.sae.task_fire_rate[i][k, f]),
                                          "mean": float(self.sae.task_mean[i][k, f])}
                                      for k, t in enumerate(self.task_names)}
                out.append(entry)
        out.sort(key=lambda e: (-e["mean_matched_corr"], e["model"], e["feature"]))
        return out

    # --------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        """Every number, JSON-ready (floats rounded to 6 decimals)."""
        names = self.names
        neurons = []
        for nl in self.neurons:
            layer = {
                "layer": nl.layer, "hook": nl.hook, "threshold": nl.threshold,
                "pair_share_universal": _r(nl.pair_share()),
                "pair_mean_max_corr": _r(nl.pair_mean()),
                "models": [],
            }
            if nl.baseline is not None:
                layer["baseline_pair_share_universal"] = _r(nl.baseline.pair_share())
                layer["baseline_pair_mean_max_corr"] = _r(nl.baseline.pair_mean())
            for i in range(nl.n_models):
                entry = {
                    "model": names[i],
                    "neurons": nl.n_neurons[i],
                    "dead": int(nl.dead[i].sum()),
                    "universal": int(nl.universal(i).sum()),
                    "share_universal": _r(nl.share_universal(i)),
                    "mean_max_corr": _r(nl.mean_max_corr(i)),
                    "dead_neurons": np.nonzero(nl.dead[i])[0].tolist(),
                    "universal_neurons": np.nonzero(nl.universal(i))[0].tolist(),
                    "neuron_mean_max_corr": _r(nl.mean_max(i)),
                    "neuron_max_corr": {names[j]: _r(nl.pair_max[(i, j)]) for j in range(nl.n_models) if j != i},
                    "neuron_best_match": {names[j]: nl.pair_argmax[(i, j)].tolist()
                                          for j in range(nl.n_models) if j != i},
                }
                if nl.baseline is not None:
                    b = nl.baseline
                    entry["baseline"] = {
                        "dead": int(b.dead[i].sum()),
                        "share_universal": _r(b.share_universal(i)),
                        "mean_max_corr": _r(b.mean_max_corr(i)),
                        "neuron_mean_max_corr": _r(b.mean_max(i)),
                    }
                layer["models"].append(entry)
            neurons.append(layer)
        out: dict[str, Any] = {
            "kind": "culture-interp universality",
            "models": names,
            "settings": self.settings,
            "tasks": {t: int(self.task_tokens[k]) for k, t in enumerate(self.task_names)},
            "summary": [{k: _r(v) for k, v in row.items()} for row in self.summary_rows()],
            "neurons": neurons,
            "universal_neurons": [_rd(e) for e in self.universal_neurons()],
            "universal_neurons_by_task": [{k: _r(v) for k, v in row.items()} for row in self.task_rows()],
            "cka": None,
            "sae": None,
        }
        if self.cka is not None:
            out["cka"] = {
                "layers": {names[i]: lab for i, lab in enumerate(self.cka.labels)},
                "hooks": {names[i]: h for i, h in enumerate(self.cka.hooks)},
                "diagonal": [{k: _r(v) for k, v in row.items()} for row in self.cka_diagonal_rows()],
                "pairs": [{"models": [names[i], names[j]], "cka": _r(mat),
                           "baseline": _r(self.cka.baseline[(i, j)]) if self.cka.baseline is not None else None}
                          for (i, j), mat in self.cka.pairs.items()],
            }
        if self.sae is not None:
            s = self.sae
            out["sae"] = {
                "threshold": s.threshold,
                "hooks": {names[i]: s.hooks[i] for i in s.members},
                "d_sae": {names[i]: s.d_sae[i] for i in s.members},
                "dead": {names[i]: int(s.dead[i].sum()) for i in s.members},
                "summary": [{k: _r(v) for k, v in row.items()} for row in self.sae_rows()],
                "pairs": [{
                    "models": [names[i], names[j]],
                    "matched": len(p.matching),
                    "share_above": _r(p.matching.share_above(s.threshold)),
                    "matched_corr_quantiles": _r(_quantiles(p.matching.corr)),
                    "a_index": p.matching.a_index.tolist(),
                    "b_index": p.matching.b_index.tolist(),
                    "matched_corr": _r(p.matching.corr),
                    "decoder_cos": _r(p.decoder_cos) if p.decoder_cos is not None else None,
                    "max_corr_a": _r(p.max_corr_a),
                    "max_corr_b": _r(p.max_corr_b),
                } for (i, j), p in s.pairs.items()],
                "universal_features": [_rd(e) for e in self.universal_features()],
            }
        return out


def _quantiles(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {}
    qs = np.quantile(v, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    return dict(zip(["min", "p10", "p25", "median", "p75", "p90", "max"], qs.tolist()))


def _r(x, nd: int = 6):
    """Round floats (also inside arrays / lists / dicts) for JSON."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "fc":
            return np.round(x.astype(float), nd).tolist()
        return x.tolist()
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return round(v, nd) if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {k: _r(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    return x


def _rd(d: dict) -> dict:
    return {k: _r(v) for k, v in d.items()}


__all__ = ["UniversalityReport", "NeuronLayer", "CKAResult", "SAEPair", "SAEComparison"]
