"""One patching experiment: a table of sites, activation and / or attribution
patching on counterfactual pairs, the control pairs beside them, and the
agreement of the two methods (the library behind ``culture-interp patch``).

    >>> from culture.circuits import QuizPairs, run_patching
    >>> report = run_patching(hooked, QuizPairs(clean, corrupted), what="heads", method="both",
    ...                       control=QuizPairs(clean_c, corrupted_c))
    >>> report.recovery("activation")         # (sites,) 0 = corrupted run, 1 = clean run
    >>> report.agreement()                    # Pearson r, Spearman rho, top-k overlap
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from culture.circuit_settings import METHODS
from culture.circuits.metric import (
    Baseline,
    CircuitError,
    QuizPairs,
    check_direction,
    control_effect,
    recovery,
    recovery_interval,
    require_gap,
)
from culture.circuits.runs import DEFAULT_BATCH_SIZE, Progress, check_batch_size, check_hook_names
from culture.circuits.sites import SiteTable, block_names, site_table

__all__ = ["METHODS", "MethodResult", "PatchReport", "run_patching", "agreement"]

TOP_K = 5


@dataclass
class MethodResult:
    """Per-site, per-pair values of one method: ``ld`` (C, n) patched logit
    difference (estimated for attribution), ``correct`` (C, n) greedy answer =
    clean answer (activation only), ``control_margin`` (C, m) on the control
    pairs, ``cells``: per site, the patched run's per-pair
    :func:`~culture.circuits.metric.answer_scores` (activation only)."""

    ld: np.ndarray
    correct: np.ndarray | None = None
    control_margin: np.ndarray | None = None
    cells: list[dict] | None = None


def agreement(a, b, k: int = TOP_K) -> dict:
    """Agreement of two per-site effect vectors: Pearson r, Spearman rho, and
    the overlap of their top-k sites by |effect| (share of a's top k in b's)."""
    from scipy.stats import pearsonr, spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    k = min(k, len(a))
    out = {"n_sites": int(len(a)), "k": k, "pearson_r": None, "spearman_rho": None, "top_k_overlap": None,
           "same_top_site": None}
    if len(a) >= 2 and np.std(a) > 0 and np.std(b) > 0:
        out["pearson_r"] = float(pearsonr(a, b).statistic)
        out["spearman_rho"] = float(spearmanr(a, b).statistic)
    if k:
        ta, tb = np.argsort(-np.abs(a))[:k], np.argsort(-np.abs(b))[:k]
        out["top_k_overlap"] = len(set(ta.tolist()) & set(tb.tolist())) / k
        out["same_top_site"] = bool(ta[0] == tb[0])
    return out


@dataclass
class PatchReport:
    """Results of :func:`run_patching`; numbers come from methods, JSON from :meth:`to_dict`."""

    table: SiteTable
    direction: str
    baseline: Baseline
    methods: dict[str, MethodResult]
    control: Baseline | None = None
    settings: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def recovery(self, method: str) -> np.ndarray:
        return recovery(self.methods[method].ld, self.baseline)

    def recovery_ci(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        return recovery_interval(self.methods[method].ld, self.baseline)

    def accuracy(self, method: str = "activation") -> dict | None:
        """Share of pairs whose greedy answer is the clean one, per site, with Wilson intervals."""
        from culture.intervals import wilson_interval

        correct = self.methods[method].correct
        if correct is None:
            return None
        k, n = correct.sum(1), correct.shape[1]
        low, high = wilson_interval(k, n)
        return {"value": k / n, "low": np.atleast_1d(low), "high": np.atleast_1d(high), "k": k, "n": n}

    def control_effect(self, method: str) -> dict | None:
        m = self.methods[method].control_margin
        if m is None or self.control is None:
            return None
        return control_effect(m, self.control, self.direction, self.baseline.mean_gap)

    def cell_families(self, method: str = "activation") -> list[dict] | None:
        """Per site: the patched run's accuracy and loss against the clean
        answer on all predicted cells and on the transform cells
        (:func:`culture.evaluation.cell_metrics`), each with its change from
        the unpatched target run (paired intervals over the same pairs)."""
        from culture.evaluation import cell_metrics
        from culture.intervals import Resampler

        key = ("cell_families", method)
        if key in self._cache:
            return self._cache[key]
        cells = self.methods[method].cells
        side = "corrupted" if self.direction == "denoise" else "clean"
        target = self.baseline.cells(side)
        if cells is None or target is None:
            return None
        R = Resampler(len(self.baseline.clean_ld))
        out = []
        for scores in cells:
            m = cell_metrics(scores, baseline=target, resampler=R)
            out.append({"all_cells": m["all_cells"], "transform_cells": m["transform_cells"]})
        self._cache[key] = out
        return out

    def agreement(self) -> dict | None:
        if not {"activation", "attribution"} <= set(self.methods):
            return None
        return agreement(self.recovery("activation"), self.recovery("attribution"))

    def ranking(self, method: str | None = None) -> list[int]:
        """Site indices by decreasing |recovery| (of ``method``, default activation when run)."""
        method = method or ("activation" if "activation" in self.methods else "attribution")
        return [int(i) for i in np.argsort(-np.abs(self.recovery(method)), kind="stable")]

    def site_rows(self) -> list[dict]:
        """One dict per site: label, component, every method's recovery with its interval..."""
        rows = []
        rec = {m: (self.recovery(m), self.recovery_ci(m)) for m in self.methods}
        acc = self.accuracy() if "activation" in self.methods else None
        ctrl = {m: self.control_effect(m) for m in self.methods}
        families = self.cell_families() if "activation" in self.methods else None
        for i, s in enumerate(self.table.sites):
            row = {"site": s.label, "component": s.component(), "kind": s.kind, "layer": s.layer, "head": s.head,
                   "positions": "all" if s.positions is None else len(s.positions)}
            for m, (v, (lo, hi)) in rec.items():
                row[m] = {"recovery": float(v[i]), "ci95": [float(lo[i]), float(hi[i])]}
                if ctrl[m] is not None:
                    row[m]["control"] = {"value": float(ctrl[m]["value"][i]),
                                         "ci95": [float(ctrl[m]["low"][i]), float(ctrl[m]["high"][i])]}
            if acc is not None:
                row["activation"]["accuracy"] = {"value": float(acc["value"][i]), "k": int(acc["k"][i]),
                                                 "n": int(acc["n"]),
                                                 "ci95": [float(acc["low"][i]), float(acc["high"][i])]}
            if families is not None:
                row["activation"].update(families[i])
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {
            "settings": {**self.settings, "what": self.table.what, "direction": self.direction,
                         "methods": list(self.methods)},
            "baseline": self.baseline.to_dict(),
            "control_baseline": None if self.control is None else self.control.to_dict(),
            "agreement": self.agreement(),
            "rows": self.table.rows,
            "cols": self.table.cols,
            "sites": self.site_rows(),
        }


def _methods(method: str) -> list[str]:
    if method not in METHODS:
        raise CircuitError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return ["activation", "attribution"] if method == "both" else [method]


def run_patching(hooked, pairs: QuizPairs, *, what: str = "heads", method: str = "both",
                 direction: str = "denoise", control: QuizPairs | None = None, block: int = 2, layers=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> PatchReport:
    """Scan the sites of table ``what`` (:func:`culture.circuits.sites.site_table`)
    with activation and / or attribution patching (``method``), denoising or
    noising; ``control``: pairs whose answers coincide (factor ``example``),
    scanned the same way for the control row."""
    from culture.circuits.activation import activation_patching, baseline_runs
    from culture.circuits.attribution import attribution_patching

    check_direction(direction)
    methods = _methods(method)
    if pairs.is_control:
        raise CircuitError("the pairs' answers never differ (control pairs): the recovery is undefined; "
                           "pass them as control=")
    if control is not None and not control.is_control:
        raise CircuitError("control pairs must have equal answers (factor 'example')")
    check_batch_size(batch_size)
    cfg = hooked.cfg
    table = site_table(what, cfg.n_layers, cfg.n_heads, block=block, layers=layers,
                       names=block_names(pairs.clean[0]))
    # preconditions that cost a forward pass or less, before the loops: the hooks exist, the clean run
    # prefers the clean answer (else the recovery is meaningless)
    check_hook_names(hooked, [s.hook_name(cfg.n_layers) for s in table.sites])
    if progress is not None:
        progress("unpatched runs", 0, 1)
    require_gap(baseline_runs(hooked, pairs, batch_size=batch_size))
    if progress is not None:
        progress("unpatched runs", 1, 1)
    results: dict[str, MethodResult] = {}
    baseline = control_base = None
    control_progress = None if progress is None else (lambda p, d, t: progress(f"{p} (control pairs)", d, t))
    for m in methods:
        if m == "activation":
            out, baseline = activation_patching(hooked, pairs, table.sites, direction, batch_size=batch_size,
                                                progress=progress)
            res = MethodResult(out["ld"], out["correct"], cells=out["cells"])
            if control is not None:
                c_out, control_base = activation_patching(hooked, control, table.sites, direction,
                                                          batch_size=batch_size, progress=control_progress)
                res.control_margin = c_out["margin"]
        else:
            ld, base = attribution_patching(hooked, pairs, table.sites, direction, batch_size=batch_size,
                                            progress=progress)
            baseline = baseline or base
            res = MethodResult(ld)
            if control is not None:
                res.control_margin, c_base = attribution_patching(hooked, control, table.sites, direction,
                                                                  key="margin", batch_size=batch_size,
                                                                  progress=control_progress)
                control_base = control_base or c_base
        results[m] = res
    settings = {"n_pairs": len(pairs), "n_control_pairs": 0 if control is None else len(control),
                "task": pairs.task, "vary": pairs.vary, "block": table.block,
                "metric": "logit difference clean vs corrupted answer over the predicted cells where they differ; "
                          "recovery = (patched - corrupted) / (clean - corrupted), ratio of means over pairs",
                "positions": "hooked position p reads quiz token p-1 (BOS with block A)"}
    return PatchReport(table, direction, baseline, results, control_base, settings)
