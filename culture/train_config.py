"""The settings of a culture run (:class:`TrainConfig`, saved as train_config.json).

Torch-free: ``culture-interp train`` takes its option defaults from these
fields (same names) and every bound is declared here once (:func:`culture.settings.setting`),
checked by :meth:`TrainConfig.check` for library users and the CLI alike.
:mod:`culture.training` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from culture.defaults import PROMPT_NOISE, TEST_SAMPLES
from culture.errors import CultureError
from culture.settings import SettingsError, check_settings, setting, settings_dict


class TrainingError(CultureError):
    """A training run cannot start or resume as asked."""


class TrainingSettingsError(TrainingError, SettingsError):
    """A setting of a culture run out of its bounds (names the field)."""


#: the largest dropout / EMA decay accepted
MAX_DROPOUT = 0.99
MAX_EMA_DECAY = 0.9999


@dataclass
class TrainConfig:
    """Everything that defines a culture run (saved as train_config.json)."""

    nb_models: int = setting(5, min=1)
    model: str = "37M"
    dim_model: int | None = setting(None, min=1)
    dim_keys: int | None = setting(None, min=1)
    dim_hidden: int | None = setting(None, min=1)
    nb_heads: int | None = setting(None, min=1)
    nb_blocks: int | None = setting(None, min=1)
    dropout: float = setting(0.1, min=0.0, max=MAX_DROPOUT)
    attention_dropout: float | None = setting(None, min=0.0, max=MAX_DROPOUT)  # None: same as dropout (reference)
    tasks: tuple[str, ...] | None = None
    train_samples: int = setting(40_000, min=1)
    test_samples: int = setting(TEST_SAMPLES, min=1)
    batch_size: int = setting(25, min=1)
    lr: float = setting(5e-4, above=0.0)
    prompt_noise: float = setting(PROMPT_NOISE, min=0.0, max=1.0)
    seed: int = setting(0, min=0)
    threshold: float = setting(0.95, min=0.0, max=1.0)
    max_rounds: int | None = setting(None, min=1)
    target_accuracy: float | None = setting(None, min=0.0, max=1.0)
    target_greedy_accuracy: float | None = setting(None, min=0.0, max=1.0)
    culture: bool = True
    max_fail: int = setting(2, min=1)
    proba_understands: float = setting(0.95, min=0.0, max=1.0)
    proba_not_understands: float = setting(0.5, min=0.0, max=1.0)
    temperature_hot: float = setting(1.5, above=0.0)
    temperature_cold: float = setting(1.0, above=0.0)
    averaging_rounds: int = setting(3, min=1)
    c_quizzes_train: int | None = setting(None, min=0)
    c_quizzes_test: int | None = setting(None, min=0)
    culture_max_batches: int = setting(20, min=1)
    culture_batch: int = setting(500, min=1)
    eval_batch_size: int = setting(100, min=1)
    fresh_optimizer: bool = False
    ema_decay: float | None = setting(None, min=0.0, max=MAX_EMA_DECAY)  # None or 0: no weight averaging
    train_structures: tuple[int, ...] | None = None  # None: all five (reference)
    device: str = "cpu"

    def check(self) -> "TrainConfig":
        """Every setting in its bounds, known tasks and structures, a preset
        whose heads divide the width; a one-line TrainingError otherwise."""
        check_settings(self, TrainingSettingsError)
        if self.tasks is not None:
            from culture.world import TASKS

            unknown = [t for t in self.tasks if t not in TASKS]
            if unknown:
                raise TrainingError(f"unknown task {unknown[0]!r} (tasks: {', '.join(TASKS)})")
        self.structures()
        self.gpt_config()
        return self

    def gpt_config(self):
        """The :class:`culture.mygpt.GPTConfig` of the run's models."""
        from culture.mygpt import PRESETS, GPTConfig

        if self.model not in PRESETS:
            raise TrainingSettingsError("model", f"unknown model size {self.model!r} "
                                                 f"(presets: {', '.join(PRESETS)})")
        base = PRESETS[self.model].to_dict()
        for key in ("dim_model", "dim_keys", "dim_hidden", "nb_heads", "nb_blocks"):
            value = getattr(self, key)
            if value is not None:
                base[key] = value
        base["dropout"] = self.dropout
        base["attention_dropout"] = self.attention_dropout
        cfg = GPTConfig(**base)
        if cfg.dim_model % cfg.nb_heads:
            raise TrainingError(f"dim_model {cfg.dim_model} is not a multiple of nb_heads {cfg.nb_heads}")
        return cfg

    @property
    def nb_c_quizzes_train(self) -> int:
        return self.c_quizzes_train if self.c_quizzes_train is not None else self.train_samples // 100

    @property
    def nb_c_quizzes_test(self) -> int:
        return self.c_quizzes_test if self.c_quizzes_test is not None else self.test_samples // 100

    def to_dict(self) -> dict:
        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("tasks", "train_structures"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def structures(self):
        """The structures training quizzes are drawn from (culture.quiz.Structure)."""
        from culture import quiz as Q

        if not self.train_structures:
            return Q.STRUCTURES
        chosen = []
        for i in dict.fromkeys(self.train_structures):
            try:
                chosen.append(Q.parse_structure(int(i)))
            except ValueError:
                raise TrainingSettingsError(
                    "train_structures", f"unknown structure {i} (structures: 1..{len(Q.STRUCTURES)})") from None
        return tuple(chosen)


__all__ = ["TrainConfig", "TrainingError", "TrainingSettingsError"]
