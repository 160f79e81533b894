"""The settings of a universality comparison, each default and bound once.

Torch-free: ``culture-interp universality compare`` takes its option
defaults from :class:`UniversalitySettings` (the options carry the field
names) and the library (:func:`culture.universality.compare_models`) checks
them once, with :meth:`UniversalitySettings.check`.

    >>> from culture.universality_settings import UniversalitySettings
    >>> s = UniversalitySettings(tokens=20 * 404, controls=("position",), cka=False).check()
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from culture.defaults import PROMPT_NOISE
from culture.errors import CultureError
from culture.settings import SettingsError, check_integers, check_settings, setting, settings_of

#: confound controls (:mod:`culture.universality.controls`): per-group means removed first
CONTROLS = ("none", "position", "position_structure", "token")
#: null versions of the other model for neurons (:mod:`culture.universality.neurons`)
BASELINES = ("rotation", "permutation", "gaussian")
#: which of a quiz's 404 positions are tokens (:func:`culture.universality.position_index`)
POSITIONS = ("all", "cells")
#: dtypes of the per-batch products (accumulation is float64 either way)
PRECISIONS = ("float32", "float64")
#: positions per quiz under each ``positions`` setting (BOS + 403 inputs; minus BOS and the 4 markers)
POSITIONS_PER_QUIZ = {"all": 404, "cells": 399}

#: The fewest quizzes a comparison accepts. Its intervals resample quizzes and
#: its held-out replication splits them into even- and odd-index halves: with
#: 8, each half has 4 quizzes, the fewest for which a bootstrap over them has
#: more than a handful of distinct resamples (C(7, 4) = 35). With fewer, the
#: intervals collapse and a neuron silent on one quiz reads as "dead".
MIN_QUIZZES = 8

#: The most further rotation draws: with d draws the reported share provably
#: lies inside its 95% interval while d + 1 <= 20 (:mod:`culture.universality.intervals`).
MAX_ROTATION_DRAWS = 19

#: earlier keyword names :func:`~culture.universality.compare_models` still takes
ALIASES = {"n_tokens": "tokens", "n_resamples": "resamples"}


class UniversalityError(CultureError, ValueError):
    """Bad input to a universality comparison (one-line message)."""


#: --max-memory's default: the memory the system has available when the comparison starts
DEFAULT_MAX_MEMORY = "available"
#: the peak a comparison's blocks and tiles are sized for when ``max_memory`` is
#: left at "available" (or the memory available, if less); a comparison that
#: needs more even with the smallest blocks still runs when the memory available allows
MEMORY_TARGET = 5 * 2**30
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_memory(value) -> int | None:
    """Bytes from 4.5G, 800M, 512MiB, 1e9 (binary units); None for "available"."""
    if str(value).strip().lower() == DEFAULT_MAX_MEMORY:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise UniversalityError(f"memory limit must be positive, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise UniversalityError(f"memory limit must be a size such as 4.5G or 800M, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class UniversalitySettingsError(UniversalityError, SettingsError):
    """A universality setting out of its bounds (``field`` names it)."""


class QuizCountError(UniversalityError):
    """Too few quizzes for the statistics a comparison prints (one line)."""


def check_quiz_count(n_quizzes: int, positions_per_quiz: int, error: type[Exception] = QuizCountError) -> None:
    """Raise ``error`` when ``n_quizzes`` < :data:`MIN_QUIZZES`, saying why and
    how many tokens that takes at ``positions_per_quiz`` positions per quiz."""
    if n_quizzes < MIN_QUIZZES:
        raise error(f"universality needs at least {MIN_QUIZZES} quizzes ({MIN_QUIZZES * positions_per_quiz:,} "
                    f"tokens at {positions_per_quiz} positions per quiz), got {n_quizzes}: its intervals resample "
                    f"quizzes and its held-out half is the odd-index quizzes, so with fewer the intervals collapse "
                    f"and a neuron silent on so few tokens would read as dead")


@dataclass
class UniversalitySettings:
    """How models are compared (:func:`culture.universality.compare_models`).

    tokens: tokens of world quizzes streamed (``ceil(tokens / positions per
        quiz)`` quizzes of ``tasks``, structures drawn from ``seed``, prompt
        ``noise``); ignored when quizzes are given.
    layers: MLP layers compared (None: every layer all models have).
    threshold: universal = excess (max-corr - baseline max-corr) > threshold;
        an SAE feature matches above it.
    baseline: the null version of the other model for neurons.
    controls: confound controls, each computed; the first is the primary one.
        ``within_position`` is ``controls=("position",)``.
    positions: "all" 404 positions or "cells" (input token a grid cell).
    random_init: also run random-init models of the same shapes.
    cka, cka_permutations: residual CKA and its permutation test's size (0: none).
    resamples, n_blocks, confidence: the bootstrap over quizzes (in
        ``n_blocks`` blocks by index); ``bootstrap_margin``: units further
        than this from the threshold keep their side in every resample.
    rotation_draws: further random rotations of the rotation baseline (at
        most 19); the neuron intervals carry their spread
        (:mod:`culture.universality.intervals`).
    batch_size: quizzes per forward pass (None: sized to the activations).
    precision: dtype of the per-batch products.
    max_memory: peak memory allowed ("4.5G", "800M", bytes, or "available":
        what the system has free at the start); a comparison whose memory plan
        (:func:`culture.universality.memory.memory_plan`) is over it is refused
        before any work. Pass 1's row blocks and the analysis tiles are the
        largest under it (left at "available": under :data:`MEMORY_TARGET`,
        5 GiB, where they can).
    block_layers: pass 1 accumulates the neuron co-moments of this many layers
        of each model (rows, against every neuron of the other model) per
        sweep over the quizzes, writing each finished block (and the group
        sums of its layers) to a temporary file; None: one sweep in memory
        when the memory plan fits, else the largest block that fits. Same
        results, to the bit, whatever the block.
    """

    tokens: int = setting(40_000, min=1)
    tasks: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    threshold: float = setting(0.5, min=-1.0, max=2.0)
    baseline: str = setting("rotation", choices=BASELINES)
    controls: tuple[str, ...] = CONTROLS
    within_position: bool = False
    positions: str = setting("all", choices=POSITIONS)
    noise: float = setting(PROMPT_NOISE, min=0.0, max=1.0)
    random_init: bool = True
    cka: bool = True
    cka_permutations: int = setting(19, min=0)
    resamples: int = setting(1000, min=1)
    n_blocks: int = setting(32, min=2)
    confidence: float = setting(0.95, above=0.0)
    bootstrap_margin: float = setting(0.15, min=0.0)
    rotation_draws: int = setting(4, min=0, max=MAX_ROTATION_DRAWS)
    seed: int = setting(0, min=0)
    batch_size: int | None = setting(None, min=1)
    precision: str = setting("float64", choices=PRECISIONS)
    max_memory: str = DEFAULT_MAX_MEMORY
    block_layers: int | None = setting(None, min=1)

    def check(self) -> "UniversalitySettings":
        """Every setting in its bounds; a one-line UniversalitySettingsError otherwise."""
        check_integers(self, ("tokens", "cka_permutations", "resamples", "n_blocks", "rotation_draws", "seed",
                              "batch_size", "block_layers"), UniversalitySettingsError)
        check_settings(self, UniversalitySettingsError)
        self.primary_controls()
        try:
            parse_memory(self.max_memory)
        except UniversalityError as exc:
            raise UniversalitySettingsError("max_memory", str(exc)) from None
        if self.n_blocks % 2:
            raise UniversalitySettingsError("n_blocks", f"must be even (even blocks hold the even quizzes), got "
                                                        f"{self.n_blocks}")
        if not self.confidence < 1.0:
            raise UniversalitySettingsError("confidence", f"must be in (0, 1), got {self.confidence}")
        return self

    def primary_controls(self) -> tuple[str, ...]:
        """The controls computed, the primary one first (``("position",)`` with ``within_position``)."""
        controls = (self.controls,) if isinstance(self.controls, str) else tuple(self.controls)
        if self.within_position:
            return ("position",)
        out = tuple(dict.fromkeys(str(c) for c in controls))
        if not out:
            raise UniversalitySettingsError("controls", "give at least one control")
        for c in out:
            if c not in CONTROLS:
                raise UniversalitySettingsError("controls", f"unknown control {c!r} (choose from "
                                                            f"{', '.join(CONTROLS)})")
        return out

    @property
    def positions_per_quiz(self) -> int:
        return POSITIONS_PER_QUIZ[self.positions]

    def n_quizzes(self) -> int:
        """World quizzes streamed for ``tokens`` tokens."""
        return -(-self.tokens // self.positions_per_quiz)

    @classmethod
    def of(cls, settings: "UniversalitySettings | None" = None, **options) -> "UniversalitySettings":
        """``settings`` (default: the defaults) with ``options`` replacing fields;
        also the earlier names ``n_tokens``, ``n_resamples`` and
        ``compute_dtype`` (a torch dtype). Checked; an error names the option
        as it was given."""
        if "compute_dtype" in options:
            options = dict(options)
            options["precision"] = str(options.pop("compute_dtype")).removeprefix("torch.")
        return settings_of(cls, settings, options, ALIASES, UniversalitySettingsError)


__all__ = ["UniversalitySettings", "UniversalityError", "UniversalitySettingsError", "QuizCountError",
           "check_quiz_count", "MIN_QUIZZES", "CONTROLS", "BASELINES", "POSITIONS", "PRECISIONS",
           "POSITIONS_PER_QUIZ", "ALIASES", "MAX_ROTATION_DRAWS"]
