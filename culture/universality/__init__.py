"""Universality across the culture's models (Gurnee et al., 2024, "Universal
Neurons in GPT2 Language Models"): are the same neurons, representations and
SAE features learned by GPTs trained side by side?

    >>> from culture.sources import load_culture
    >>> from culture.universality import compare_models, plot_report
    >>> report = compare_models(load_culture([0, 1, 2, 3], "bundled"), n_tokens=40_000)
    >>> report.summary_rows()       # per layer: excess over the rotation baseline, share universal [CI]...
    >>> report.to_dict()            # every number (JSON-ready)
    >>> plot_report(report, "figures/")

Modules: :mod:`~culture.universality.stats` (streaming correlation, CKA,
rotation, SVCCA, bootstrap helpers), :mod:`~culture.universality.controls`
(confound controls, token categories), :mod:`~culture.universality.neurons`
(Gurnee-faithful universal neurons), :mod:`~culture.universality.cka`
(linear / debiased CKA, permutation test), :mod:`~culture.universality.features`
(SAE features: matching, floor, ceiling, families),
:mod:`~culture.universality.runner` (tokens, models at TransformerLens hook
names, random-init models, SAEs), :mod:`~culture.universality.compare` (the
two-pass comparison), :mod:`~culture.universality.report` (its result, tables
and JSON), :mod:`~culture.universality.plots` (matplotlib figures).
"""

from culture.universality.cka import CKAMoments
from culture.universality.compare import (
    DEFAULT_CONTROLS,
    EMBED_HOOK,
    NEURON_HOOK,
    RESID_HOOK,
    compare_models,
    estimate_memory,
    resolve_layers,
)
from culture.universality.controls import CONTROLS, TokenLabels, check_controls
from culture.universality.features import FeatureFamily, SAEEntry, SAEPair, find_families
from culture.universality.memory import MemoryPlan, check_memory, memory_plan, parse_memory, settings_memory_plan
from culture.universality.neurons import BASELINES, NeuronAnalysis, NeuronMoments, QuizRoller
from culture.universality.plots import plot_report
from culture.universality.report import CKAResult, NeuronLayer, SAEComparison, UniversalityReport
from culture.universality.runner import (
    ModelRunner,
    baseline_seed,
    load_sae,
    permuted_mlp_copy,
    load_saes,
    position_index,
    world_quiz_stream,
)
from culture.universality.stats import (
    Centered,
    FeatureMatching,
    GroupSums,
    StreamingCKA,
    StreamingCorrelation,
    cka_from_comoments,
    debiased_cka,
    hsic_linear,
    linear_cka,
    match_features,
    max_correlations,
    random_orthogonal,
    svcca,
)
from culture.universality_settings import (
    MIN_QUIZZES,
    POSITIONS,
    UniversalityError,
    UniversalitySettings,
    UniversalitySettingsError,
)

__all__ = [
    "compare_models", "UniversalitySettings", "UniversalitySettingsError", "MIN_QUIZZES",
    "UniversalityReport", "NeuronLayer", "CKAResult", "SAEComparison", "SAEPair",
    "DEFAULT_CONTROLS", "CONTROLS", "BASELINES", "TokenLabels", "check_controls", "FeatureFamily", "SAEEntry",
    "find_families", "NeuronAnalysis", "NeuronMoments", "QuizRoller", "CKAMoments", "debiased_cka",
    "random_orthogonal", "svcca", "permuted_mlp_copy",
    "UniversalityError", "StreamingCorrelation", "StreamingCKA", "GroupSums", "Centered", "linear_cka",
    "cka_from_comoments", "hsic_linear", "max_correlations", "match_features", "FeatureMatching", "plot_report",
    "load_saes", "load_sae", "world_quiz_stream", "position_index", "ModelRunner",
    "baseline_seed", "resolve_layers", "estimate_memory", "memory_plan", "settings_memory_plan", "check_memory",
    "MemoryPlan",
    "parse_memory", "NEURON_HOOK", "EMBED_HOOK", "RESID_HOOK", "POSITIONS",
]
