"""Universality across the culture's models (Gurnee et al., 2024, "Universal
Neurons in GPT2 Language Models"): are the same neurons, representations and
SAE features learned by GPTs trained side by side?

    >>> from culture.sources import load_culture
    >>> from culture.universality import compare_models, plot_report
    >>> report = compare_models(load_culture([0, 1, 2, 3], "bundled"), n_tokens=50_000)
    >>> report.summary_rows()       # per layer: share universal vs random baseline...
    >>> report.to_dict()            # every number (JSON-ready)
    >>> plot_report(report, "figures/")

Modules: :mod:`~culture.universality.stats` (streaming correlation, CKA,
matching), :mod:`~culture.universality.runner` (tokens, models at
TransformerLens hook names, baselines, SAEs), :mod:`~culture.universality.compare`
(the one-pass comparison), :mod:`~culture.universality.report` (its result,
tables and JSON), :mod:`~culture.universality.plots` (matplotlib figures).
"""

from culture.universality.compare import (
    EMBED_HOOK,
    NEURON_HOOK,
    RESID_HOOK,
    compare_models,
    estimate_memory,
    resolve_layers,
)
from culture.universality.plots import plot_report
from culture.universality.report import CKAResult, NeuronLayer, SAEComparison, SAEPair, UniversalityReport
from culture.universality.runner import (
    POSITIONS,
    ModelRunner,
    UniversalityError,
    baseline_seed,
    load_sae,
    load_saes,
    position_index,
    sae_hook_name,
    world_quiz_stream,
)
from culture.universality.stats import (
    Centered,
    FeatureMatching,
    GroupSums,
    StreamingCKA,
    StreamingCorrelation,
    cka_from_comoments,
    hsic_linear,
    linear_cka,
    match_features,
    max_correlations,
)

__all__ = [
    "compare_models", "UniversalityReport", "NeuronLayer", "CKAResult", "SAEComparison", "SAEPair",
    "UniversalityError", "StreamingCorrelation", "StreamingCKA", "GroupSums", "Centered", "linear_cka",
    "cka_from_comoments", "hsic_linear", "max_correlations", "match_features", "FeatureMatching", "plot_report",
    "load_saes", "load_sae", "sae_hook_name", "world_quiz_stream", "position_index", "ModelRunner",
    "baseline_seed", "resolve_layers", "estimate_memory", "NEURON_HOOK", "EMBED_HOOK", "RESID_HOOK", "POSITIONS",
]
