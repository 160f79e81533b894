"""The settings of the patching and circuit experiments (``culture-interp
patch`` / ``circuit``): :class:`PatchSettings` and :class:`CircuitSettings`.

Torch-free, like :mod:`culture.train_config`: the CLI options take their
defaults from these fields (same names, :func:`culture.settings.default_of`)
and every bound is declared here once, checked by ``.check()`` for library
users and the CLI alike (a test compares the CLI defaults with these).
The library behind them is :mod:`culture.circuits`.

Sizes have upper bounds: the pairs are drawn and kept in memory (about 6.5 kB
a pair), every site or circuit keeps a few numbers per pair, and a batch's
activations grow with ``batch_size`` (see the commands' help for how much).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from culture.errors import CultureError
from culture.settings import SettingsError, check_integers, check_settings, setting, settings_dict, settings_of

__all__ = ["CircuitError", "CircuitSettingsError", "PatchSettings", "CircuitSettings", "CircuitCompareSettings",
           "DIRECTIONS", "METHODS",
           "WHAT", "BLOCKS", "MAX_PAIRS", "MAX_IG_STEPS", "MAX_RANDOM_CIRCUITS", "parse_block"]

#: denoise: run the corrupted pair, restore clean activations; noise: run the clean one, insert corrupted ones
DIRECTIONS = ("denoise", "noise")
#: patching methods (``both``: activation and attribution side by side)
METHODS = ("activation", "attribution", "both")
#: the tables of sites (:func:`culture.circuits.sites.site_table`)
WHAT = ("resid", "layers", "heads", "heads-by-block", "cells")
#: names of the four blocks (and their aliases) -> block index
BLOCKS = {"A": 0, "f(A)": 1, "f_A": 1, "fA": 1, "B": 2, "f(B)": 3, "f_B": 3, "fB": 3}
#: the most pairs (and control pairs, and pairs per batch) one experiment takes
MAX_PAIRS = 10_000
#: the most interpolation steps of EAP-IG (each is one backward pass per batch)
MAX_IG_STEPS = 100
#: the most random circuits per size of the baseline curve (each is one forward per batch)
MAX_RANDOM_CIRCUITS = 100


class CircuitError(CultureError, ValueError):
    """Bad patching / circuit arguments (pairs, sites, sizes...)."""


class CircuitSettingsError(CircuitError, SettingsError):
    """A patching / circuit setting out of its bounds (names the field)."""


def parse_block(spec) -> int:
    """Block index 0..3 of ``spec``: 0..3 or a name (A, f(A), B, f(B) and aliases)."""
    text = str(spec).strip()
    if text.isdigit() and 0 <= int(text) <= 3:
        return int(text)
    if text in BLOCKS:
        return BLOCKS[text]
    raise CircuitSettingsError("block", f"must be A, f(A), B, f(B) or 0..3, got {spec!r}")


@dataclass
class PatchSettings:
    """One patching experiment (:func:`culture.circuits.run_patching`):
    ``num_pairs`` pairs (and ``control_pairs`` control pairs, 0: none) of seed
    ``seed``, the table ``what`` (``block``: the block of ``cells``;
    ``layers``: only these rows), ``method``, ``direction``, ``batch_size``
    pairs a batch; ``top`` rows of the printed table."""

    num_pairs: int = setting(200, min=2, max=MAX_PAIRS)
    what: str = setting("heads", choices=WHAT)
    method: str = setting("both", choices=METHODS)
    direction: str = setting("denoise", choices=DIRECTIONS)
    block: str = "B"
    layers: tuple[int, ...] | None = setting(None, min=0)
    control_pairs: int = setting(50, min=0, max=MAX_PAIRS)
    top: int = setting(10, min=1)
    seed: int = setting(0, min=0)
    batch_size: int = setting(50, min=1, max=MAX_PAIRS)

    def check(self) -> "PatchSettings":
        check_settings(self, CircuitSettingsError)
        if self.control_pairs == 1:
            raise CircuitSettingsError("control_pairs", "must be 0 or at least 2, got 1")
        parse_block(self.block)
        return self

    @property
    def block_index(self) -> int:
        return parse_block(self.block)

    def to_dict(self) -> dict:
        return settings_dict(self)


@dataclass
class CircuitSettings:
    """One circuit discovery (:func:`culture.circuits.discovery.discover_circuit`):
    ``num_pairs`` pairs of seed ``seed``, edge scores with ``ig_steps``
    interpolations (0: plain EAP), the faithfulness curve at ``sizes`` (None:
    about 12, geometric) with ``random_circuits`` random edge sets per size,
    the smallest circuit reaching ``threshold``; ``batch_size`` pairs a batch;
    ``top`` rows of the printed edge table."""

    num_pairs: int = setting(100, min=2, max=MAX_PAIRS)
    threshold: float = setting(0.8, above=0.0, max=1.0)
    sizes: tuple[int, ...] | None = setting(None, min=0)
    random_circuits: int = setting(2, min=0, max=MAX_RANDOM_CIRCUITS)
    ig_steps: int = setting(5, min=0, max=MAX_IG_STEPS)
    top: int = setting(12, min=1)
    seed: int = setting(0, min=0)
    batch_size: int = setting(25, min=1, max=MAX_PAIRS)

    def check(self) -> "CircuitSettings":
        check_settings(self, CircuitSettingsError)
        return self

    def to_dict(self) -> dict:
        return settings_dict(self)


@dataclass
class CircuitCompareSettings:
    """One cross-model circuit comparison (:func:`culture.circuits.compare.compare_circuits`,
    ``culture-interp circuit compare``): ``num_pairs`` pairs of seed ``seed``
    patched in every model; the heads' patching profile over ``profile_pairs``
    pairs per (task, factor); each model's circuit: its top ``edges`` edges by
    EAP(-IG, ``ig_steps`` interpolations) score; ``head``: the reference head
    ``L.H`` of the first model (None: its head of highest recovery);
    ``resamples`` bootstrap draws of the pairs, each with one of
    ``match_resamples`` head matchings re-done on resampled role data (and
    as many SAE-feature matchings on resampled matching quizzes);
    ``null_draws`` shuffled role vectors / matches, ``null_circuits`` circuits
    carried by random head permutations; SAE features: each model's top
    ``top_features`` by |effect|, matched on ``feature_quizzes`` quizzes;
    ``batch_size`` pairs a batch."""

    num_pairs: int = setting(50, min=2, max=MAX_PAIRS)
    profile_pairs: int = setting(20, min=2, max=MAX_PAIRS)
    edges: int = setting(30, min=1)
    ig_steps: int = setting(2, min=0, max=MAX_IG_STEPS)
    head: str | None = None
    resamples: int = setting(1000, min=1)
    match_resamples: int = setting(20, min=1)
    null_draws: int = setting(100, min=0)
    null_circuits: int = setting(10, min=0)
    top_features: int = setting(10, min=1)
    feature_quizzes: int = setting(20, min=1)
    seed: int = setting(0, min=0)
    batch_size: int = setting(25, min=1, max=MAX_PAIRS)

    #: the library's earlier keyword names of these fields (still accepted by ``of``)
    ALIASES: ClassVar[dict[str, str]] = {"n_pairs": "num_pairs", "circuit_edges": "edges", "reference": "head",
                                         "n_resamples": "resamples", "top_k_features": "top_features"}

    @classmethod
    def of(cls, settings: "CircuitCompareSettings | None" = None, **options) -> "CircuitCompareSettings":
        """``settings`` (default: the defaults) with ``options`` replacing fields by name, checked."""
        return settings_of(cls, settings, options, cls.ALIASES, CircuitSettingsError)

    def check(self) -> "CircuitCompareSettings":
        check_integers(self, [f.name for f in fields(self) if f.name != "head"], CircuitSettingsError, none_ok=False)
        check_settings(self, CircuitSettingsError)
        return self
