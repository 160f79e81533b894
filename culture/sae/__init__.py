"""Sparse autoencoders (SAELens) on the culture GPTs.

* :mod:`culture.sae.training` -- ``train_sae``: SAELens's own training runner
  (``LanguageModelSAETrainingRunner``) on a culture GPT converted to
  TransformerLens, fed with a ``dataset build`` directory or quizzes generated
  on the fly; the earlier toolkit's configuration by default
  (:class:`SAETrainSettings`); output in SAELens's format, written atomically.
* :mod:`culture.sae.loading` -- ``load_sae``: a directory, or a hub repo through
  the same source mechanism as the models (``tommyp111/culture-sae``, folder
  ``gpt-0/blocks_8_mlp_out``).
* :mod:`culture.sae.evaluation` -- ``evaluate_sae``: variance explained, L0,
  dead / dense features, loss recovered and greedy accuracy with the SAE
  spliced in, per task.
* :mod:`culture.sae.features` -- ``feature_report``: where features fire, their
  frequency per task, the colours they promote through the unembedding, and
  feature steering.

* :mod:`culture.sae.settings` -- :class:`SAETrainSettings`, every setting of
  a training run with its default and bounds (torch-free: the CLI's options
  are its fields).

Importing this package is cheap: its names are imported on first use, and
``torch``, ``sae_lens``, ``transformer_lens`` and ``datasets`` inside the
functions that need them.
"""

import importlib

#: public name -> the module of culture.sae defining it (imported on first use)
_WHERE = {
    "DEFAULT_HOOK": "common", "DEFAULT_SAE_REPO": "common", "DEFAULT_SAE_SUBFOLDER": "common", "SAEError": "common",
    "hook_dirname": "common",
    "SAETrainSettings": "settings", "SAETrainSettingsError": "settings",
    "SAETrainResult": "training", "train_sae": "training", "generate_training_dataset": "training",
    "push_sae": "training",
    "load_sae": "loading", "check_sae_for_model": "loading", "BundledSAE": "loading", "bundled_saes": "loading",
    "bundled_sae_folder": "loading",
    "SAEEvalResults": "evaluation", "evaluate_sae": "evaluation",
    "FeatureReport": "features", "SteerSpec": "features", "feature_report": "features", "parse_steer": "features",
    "steer_accuracy": "features",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = list(_WHERE)
