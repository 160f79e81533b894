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

Importing this package is cheap: ``sae_lens``, ``transformer_lens`` and
``datasets`` are imported inside the functions that need them.
"""

from culture.sae.common import (
    DEFAULT_HOOK,
    DEFAULT_SAE_REPO,
    DEFAULT_SAE_SUBFOLDER,
    SAEError,
    hook_dirname,
)
from culture.sae.evaluation import SAEEvalResults, evaluate_sae
from culture.sae.features import FeatureReport, SteerSpec, feature_report, parse_steer, steer_accuracy
from culture.sae.loading import BundledSAE, bundled_sae_folder, bundled_saes, check_sae_for_model, load_sae
from culture.sae.training import SAETrainResult, SAETrainSettings, generate_training_dataset, push_sae, train_sae

__all__ = [
    "DEFAULT_HOOK",
    "DEFAULT_SAE_REPO",
    "DEFAULT_SAE_SUBFOLDER",
    "SAEError",
    "hook_dirname",
    "SAETrainSettings",
    "SAETrainResult",
    "train_sae",
    "generate_training_dataset",
    "push_sae",
    "load_sae",
    "check_sae_for_model",
    "BundledSAE",
    "bundled_saes",
    "bundled_sae_folder",
    "SAEEvalResults",
    "evaluate_sae",
    "FeatureReport",
    "SteerSpec",
    "feature_report",
    "parse_steer",
    "steer_accuracy",
]
