"""The settings of an SAE training run (:class:`SAETrainSettings`): each
default and each bound written once.

Torch-free: ``culture-interp sae train`` takes its option defaults from these
fields (same names, ``--train-batch-size-tokens`` for
``train_batch_size_tokens``...) and :meth:`SAETrainSettings.check` enforces
the bounds for library users and the CLI alike, before any work.
:func:`culture.sae.train_sae` runs them with SAELens.

The checks kept here are the ones SAELens makes late (after the model and the
data are set up) or not at all; what SAELens checks when its config is built
-- the architecture's name, ``normalize_activations``, the fields given
through ``extra`` -- is left to it (:func:`culture.sae.training.runner_config`
builds that config before any data is generated and turns its error into one
line).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from culture.defaults import PROMPT_NOISE
from culture.sae.common import DEFAULT_HOOK, SAEError
from culture.settings import SettingsError, check_settings, setting, settings_dict

#: tokens per row read by the SAE runner: BOS + the 404-token quiz (culture.dataset.SEQ_LEN)
SEQ_LEN = 405
#: the SAE dtypes accepted
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: the most batches the activation-norm estimate reads (SAELens's default, the earlier toolkit's run)
NORM_ESTIMATE_MAX_BATCHES = 1000
#: without --n-batches-for-norm-estimate: one estimate batch per this many training steps
NORM_ESTIMATE_STEPS_PER_BATCH = 10


class SAETrainSettingsError(SAEError, SettingsError):
    """An SAE training setting out of its bounds (``field`` names it)."""


def norm_estimate_batches(total_steps: int) -> int:
    """Batches of the activation-norm estimate when none is asked: one per
    :data:`NORM_ESTIMATE_STEPS_PER_BATCH` training steps, at least 1, at most
    :data:`NORM_ESTIMATE_MAX_BATCHES` (the earlier toolkit's 30,000 steps: 1,000;
    a 10-step run: 1). The estimate is one scalar (the mean activation norm):
    a few thousand tokens already pin it down."""
    return max(1, min(NORM_ESTIMATE_MAX_BATCHES, int(total_steps) // NORM_ESTIMATE_STEPS_PER_BATCH))


@dataclass
class SAETrainSettings:
    """Every setting of an SAE training run. Defaults: the earlier toolkit's
    run (REFERENCE.md section 9). ``culture-interp sae train`` has one option
    per field, under the same name.

    ``steps`` sets ``training_tokens = steps * train_batch_size_tokens`` unless
    ``training_tokens`` is given. ``l1_warm_up_steps`` / ``lr_decay_steps``:
    None = 5% / 20% of the steps. ``d_sae``: None = ``expansion_factor * d_in``.
    ``k``: active features of the top-k architectures. ``decoder_init_norm``:
    None or 0 = no heuristic init. ``n_batches_for_norm_estimate``: None =
    :func:`norm_estimate_batches` of the steps. ``extra``: any other field of
    ``LanguageModelSAERunnerConfig`` or of the architecture's SAE config, by
    name (e.g. ``{"prefetch_llm_batches": True}``).

    The data, when no dataset is given: ``num_quizzes`` world quizzes (None:
    as many as the run reads) of ``tasks`` (None: the eight of the published
    models; the CLI uses the source's training tasks) in random structures
    with prompt noise ``noise``, generated with ``seed``.
    """

    hook_name: str = DEFAULT_HOOK
    architecture: str = "standard"
    expansion_factor: int = setting(32, min=1)
    d_sae: int | None = setting(None, min=1)
    l1_coefficient: float = setting(5.0, min=0.0)
    lp_norm: float = setting(1.0, above=0.0)
    l1_warm_up_steps: int | None = setting(None, min=0)
    steps: int = setting(30_000, min=1)
    training_tokens: int | None = setting(None, min=1)
    train_batch_size_tokens: int = setting(4096, min=1)
    context_size: int = setting(SEQ_LEN, min=1, max=SEQ_LEN)
    lr: float = setting(2e-5, above=0.0)
    lr_scheduler_name: str = "constant"
    lr_warm_up_steps: int = setting(0, min=0)
    lr_decay_steps: int | None = setting(None, min=0)
    lr_end: float | None = setting(None, min=0.0)
    adam_beta1: float = setting(0.9, min=0.0)
    adam_beta2: float = setting(0.999, min=0.0)
    normalize_activations: str = "expected_average_only_in"
    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = setting(0.1, min=0.0)
    n_batches_in_buffer: int = setting(64, min=1)
    store_batch_size_prompts: int = setting(16, min=1)
    activations_mixing_fraction: float = setting(0.5, min=0.0, max=1.0)
    feature_sampling_window: int = setting(1000, min=1)
    dead_feature_window: int = setting(1000, min=1)
    dead_feature_threshold: float = setting(1e-4, min=0.0)
    n_batches_for_norm_estimate: int | None = setting(None, min=1)
    seed: int = setting(42, min=0)
    dtype: str = setting("float32", choices=DTYPES)
    device: str = "cpu"
    autocast: bool = False
    compile_sae: bool = False
    n_checkpoints: int = setting(0, min=0)
    wandb: bool = False
    wandb_project: str = "culture_sae"
    wandb_log_frequency: int = setting(30, min=1)
    eval_every_n_wandb_logs: int = setting(20, min=1)
    extra: dict = setting(None, factory=dict)
    k: int | None = setting(None, min=1)
    tasks: tuple[str, ...] | None = None
    noise: float = setting(PROMPT_NOISE, min=0.0, max=1.0)
    num_quizzes: int | None = setting(None, min=1)

    @property
    def total_tokens(self) -> int:
        return int(self.training_tokens if self.training_tokens is not None
                   else self.steps * self.train_batch_size_tokens)

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.train_batch_size_tokens

    @property
    def norm_batches(self) -> int:
        """Batches the activation-norm estimate reads (0 when the activations are not normalised by an estimate)."""
        if self.normalize_activations not in ("expected_average_only_in", "covariance_whitening"):
            return 0
        return self.resolved()["n_batches_for_norm_estimate"]

    def resolved(self) -> dict:
        """The settings with the step-dependent defaults filled in."""
        d = self.to_dict()
        steps = self.total_steps
        d["training_tokens"] = self.total_tokens
        d["steps"] = steps
        d["l1_warm_up_steps"] = steps // 20 if self.l1_warm_up_steps is None else int(self.l1_warm_up_steps)
        d["lr_decay_steps"] = steps // 5 if self.lr_decay_steps is None else int(self.lr_decay_steps)
        d["n_batches_for_norm_estimate"] = (norm_estimate_batches(steps) if self.n_batches_for_norm_estimate is None
                                            else int(self.n_batches_for_norm_estimate))
        return d

    def check(self) -> "SAETrainSettings":
        """Every setting in its bounds, and the combinations SAELens would
        reject late (or accept): a one-line :class:`SAETrainSettingsError`."""
        check_settings(self, SAETrainSettingsError)

        def need(ok: bool, name: str, detail: str):
            if not ok:
                raise SAETrainSettingsError(name, detail)

        need(self.total_steps >= 1, "training_tokens", f"training needs at least one step ({self.total_tokens} "
             f"tokens < one batch of {self.train_batch_size_tokens})")
        for name in ("adam_beta1", "adam_beta2"):
            need(getattr(self, name) < 1, name, f"must be < 1, got {getattr(self, name)}")
        r = self.resolved()
        need(r["lr_warm_up_steps"] + r["lr_decay_steps"] <= self.total_steps, "lr_decay_steps",
             f"lr warm-up ({r['lr_warm_up_steps']}) + decay ({r['lr_decay_steps']}) steps exceed the "
             f"{self.total_steps} training steps")
        need(self.n_batches_in_buffer * self.context_size >= self.train_batch_size_tokens, "n_batches_in_buffer",
             f"the activation buffer ({self.n_batches_in_buffer} x {self.context_size} tokens) must hold at least "
             f"one training batch ({self.train_batch_size_tokens} tokens)")
        if self.tasks is not None:
            from culture.world import TASKS

            unknown = [t for t in self.tasks if t not in TASKS]
            need(not unknown, "tasks", f"unknown task {unknown[0]!r} (tasks: {', '.join(TASKS)})" if unknown else "")
        return self

    def to_dict(self) -> dict:
        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAETrainSettings":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("tasks") is not None:
            d["tasks"] = tuple(d["tasks"])
        return cls(**d)


__all__ = ["SAETrainSettings", "SAETrainSettingsError", "norm_estimate_batches", "SEQ_LEN",
           "NORM_ESTIMATE_MAX_BATCHES", "NORM_ESTIMATE_STEPS_PER_BATCH", "DTYPES"]
