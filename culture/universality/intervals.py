"""The intervals a universality report prints, carrying every source of chance
its shares have: the quizzes, and (rotation baseline) the random rotation.

**Quizzes.** The bootstrap over blocks of quizzes
(:class:`~culture.universality.neurons.NeuronBlockSums`,
:class:`~culture.universality.features.FeatureBlockSums`) keeps each unit's
partner fixed (the one chosen on all quizzes) and re-counts who crosses the
threshold. Units chosen as a maximum pile up just above the threshold, so the
resampled counts sit below the estimate and a plain percentile interval can
lie below its own point estimate. The interval here is the percentile
interval of the bootstrap distribution **re-centred on the estimate**
(median bias correction): the bootstrap gives the spread, the estimate the
centre. Partners are not re-matched inside each resample (the per-block
co-moments of every pair would cost blocks x the accumulators' memory).

**Rotation.** The rotation baseline's max-corr depends on one random
orthogonal rotation. The moments are re-analysed under ``rotation_draws``
further rotations; each draw's share minus the reported draw's is added to
every bootstrap sample (all combinations), so the interval holds both spreads,
and the draws' shares are reported beside it (``share_rotations``).

The estimate always lies inside: at least half the re-centred samples lie on
each side of it, and the reported draw's offset is 0, so with d draws at
least 1 / (2 (d + 1)) of the combined samples lie on each side, more than the
(1 - confidence) / 2 the percentile cuts (d + 1 <= 20 at 95%,
:data:`MAX_ROTATION_DRAWS`).
"""

from __future__ import annotations

import numpy as np

from culture.universality.neurons import NeuronAnalysis
from culture.universality.stats import percentile_interval
from culture.universality_settings import MAX_ROTATION_DRAWS

#: how the intervals are made (recorded in the report's settings)
METHOD = ("percentile interval of the quiz-block bootstrap re-centred on the estimate (median bias correction; "
          "partners fixed, not re-matched per resample), widened by the spread over rotation draws (rotation "
          "baseline)")


def centred_interval(samples, estimate: float, confidence: float, offsets=None,
                     bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float] | None:
    """Percentile interval of bootstrap ``samples`` moved so that their median
    is ``estimate``, each plus every one of ``offsets`` (other sources of
    chance: e.g. rotation draws' share minus the reported draw's; include 0),
    clipped to ``bounds``. None without samples."""
    if samples is None:
        return None
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    centred = s - np.median(s) + float(estimate)
    if offsets is not None and len(offsets):
        centred = (centred[:, None] + np.asarray(offsets, dtype=float)[None, :]).ravel()
    lo, hi = percentile_interval(centred, confidence)
    lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    # by construction lo <= estimate <= hi (module docstring); min / max only absorb rounding
    return float(min(lo, estimate)), float(max(hi, estimate))


def layer_shares(a: NeuronAnalysis, n_layers: int) -> dict[str, np.ndarray]:
    """Per compared layer, the pooled share of alive neurons that are universal
    (``share``) and its held-out replication (``held_share``, when measured):
    what :class:`~culture.universality.report.NeuronLayer` reports."""
    out = {"share": np.zeros(n_layers)}
    if a.held_corr:
        out["held_share"] = np.zeros(n_layers)
    for k in range(n_layers):
        hits = alive = held_hits = held_alive = 0
        for i in range(a.n_models):
            off = a.offsets(i)
            sl = slice(off[k], off[k + 1])
            live = ~a.dead[i][sl]
            hits += int(a.universal(i)[sl].sum())
            alive += int(live.sum())
            if a.held_corr:
                held_hits += int(a.held_universal(i)[sl].sum())
                held_alive += int((live & a.held_alive[i][sl]).sum())
        out["share"][k] = hits / alive if alive else 0.0
        if a.held_corr:
            out["held_share"][k] = held_hits / held_alive if held_alive else 0.0
    return out


def rotation_draw_shares(moments, analyses: dict, n_layers: int, draws: int,
                         seed: int) -> dict[str, dict[str, np.ndarray] | None]:
    """Per control, (draws + 1, layers) shares per name under the reported
    rotation (row 0: from ``analyses``, the moments' analysis per control
    under their own rotation, already made) and ``draws`` further rotations of
    the baseline, from the pass-1 moments (None unless the baseline is the
    rotation). A draw's rotated units have their own variances, from the
    layers' self co-moments, as the reported rotation's
    (:meth:`~culture.universality.neurons.NeuronMoments.use_rotations`).
    Each draw is made once and analysed under every control together, its
    rotation baseline alone (the max-corr and held-out partners do not depend
    on the rotation: they are read from ``analyses``;
    :meth:`~culture.universality.neurons.NeuronMoments.analyse_draw`); the moments
    keep their own rotation afterwards: made again from its seed, so that one
    set of rotations is held at a time (768 MiB at the 37M shape, two models)."""
    if moments.baseline != "rotation" or draws <= 0:
        return {c: None for c in analyses}
    rows = {c: {name: [v] for name, v in layer_shares(a, n_layers).items()} for c, a in analyses.items()}
    try:
        for d in range(1, draws + 1):
            moments.use_rotations(rotation_seed(seed, d))
            for c, drawn in moments.analyse_draw(analyses).items():
                for name, v in layer_shares(drawn, n_layers).items():
                    rows[c][name].append(v)
    finally:
        if not moments.own_rotation:
            moments.use_rotations(None)
    return {c: {name: np.stack(v) for name, v in r.items()} for c, r in rows.items()}


def rotation_seed(seed: int, draw: int) -> int:
    """Seed of further rotation draw ``draw`` (>= 1) of a group seeded ``seed``."""
    return (int(seed) + 1) * 1_000_003 + int(draw)


def neuron_intervals(block_sums, analysis: NeuronAnalysis, draws: dict[str, np.ndarray] | None,
                     confidence: float) -> None:
    """Replace ``analysis.intervals``' per-layer ``share`` and ``held_share``
    intervals by re-centred ones carrying the rotation draws; add the draws'
    shares (``share_rotations``, ``held_share_rotations``) and the method."""
    n_layers = min(len(s) for s in analysis.layer_sizes)
    estimates = layer_shares(analysis, n_layers)
    iv = analysis.intervals
    for name, samples in block_sums.samples.items():
        if name not in estimates:
            continue
        per_layer = []
        for k in range(n_layers):
            offsets = None
            if draws is not None and name in draws:
                offsets = draws[name][:, k] - draws[name][0, k]
            per_layer.append(centred_interval(samples[k], estimates[name][k], confidence, offsets))
        iv[name] = per_layer
        if draws is not None and name in draws:
            iv[f"{name}_rotations"] = [draws[name][:, k].tolist() for k in range(n_layers)]
    iv["rotation_draws"] = 0 if draws is None else int(next(iter(draws.values())).shape[0] - 1)
    iv["method"] = METHOD


def feature_intervals(feature_sums, pairs, threshold: float, confidence: float) -> None:
    """Re-centre each SAE pair's one-to-one and many-to-one share intervals on
    the shares the report prints."""
    for p, sp in pairs.items():
        alive_a, alive_b = ~sp.dead_a, ~sp.dead_b
        estimates = {
            "one": float(sp.matching.share_above(threshold)),
            "a": float((sp.max_corr_a[alive_a] > threshold).mean()) if alive_a.any() else 0.0,
            "b": float((sp.max_corr_b[alive_b] > threshold).mean()) if alive_b.any() else 0.0,
        }
        keys = {"one": "share_above", "a": "share_max_above_a", "b": "share_max_above_b"}
        for kind, key in keys.items():
            samples = feature_sums.samples.get((p, kind))
            if samples is not None:
                sp.intervals[key] = centred_interval(samples, estimates[kind], confidence)
        sp.intervals["method"] = METHOD


def shares_outside_intervals(report_json, tolerance: float = 1e-6) -> list[str]:
    """Every share of a report's JSON (:meth:`UniversalityReport.to_dict`)
    printed beside an interval that it does not lie in, as "path: value
    [low, high]" (empty when every one lies inside). Pairs read: ``X`` with
    ``X_ci`` or ``X_ci95``, and ``value`` with ``ci95``."""
    bad: list[str] = []

    def check(path, value, ci):
        if value is None or not ci or ci[0] is None or ci[1] is None:
            return
        if not ci[0] - tolerance <= value <= ci[1] + tolerance:
            bad.append(f"{path}: {value} [{ci[0]}, {ci[1]}]")

    def walk(x, path):
        if isinstance(x, dict):
            for key, value in x.items():
                for suffix in ("_ci", "_ci95"):
                    if key + suffix in x and isinstance(value, (int, float)):
                        check(f"{path}/{key}", value, x[key + suffix])
                if key == "value" and "ci95" in x:
                    check(f"{path}/value", value, x["ci95"])
                walk(value, f"{path}/{key}")
        elif isinstance(x, list):
            for k, v in enumerate(x):
                walk(v, f"{path}[{k}]")

    walk(report_json, "")
    return bad


__all__ = ["shares_outside_intervals", "centred_interval", "layer_shares", "rotation_draw_shares", "neuron_intervals", "feature_intervals",
           "METHOD", "MAX_ROTATION_DRAWS", "rotation_seed"]
