"""Plumbing shared by the patching methods: batches of pairs as
TransformerLens tokens, the unpatched runs, and frozen parameters for the
backward passes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from culture.circuits.metric import Baseline, CircuitError, QuizPairs, answer_scores, check_direction, readouts

Progress = Callable[[str, int, int], None]  # (phase, done, total)

DEFAULT_BATCH_SIZE = 50


@dataclass
class PairBatch:
    """One batch of pairs on the model's device: quizzes and hooked tokens of
    both sides, and which side a patch runs (``target``) or reads (``source``)."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    direction: str

    @property
    def target_tokens(self) -> torch.Tensor:
        return self.corrupted_tokens if self.direction == "denoise" else self.clean_tokens

    @property
    def source_tokens(self) -> torch.Tensor:
        return self.clean_tokens if self.direction == "denoise" else self.corrupted_tokens

    def readouts(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return readouts(logits, self.clean, self.corrupted)

    def answer_scores(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return answer_scores(logits, self.clean)


def check_batch_size(batch_size: int) -> int:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise CircuitError(f"batch size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_hook_names(hooked, names) -> None:
    """Every hook name in ``names`` exists in ``hooked`` (a CircuitError
    naming the first that does not): checked before a long loop."""
    hook_dict = hooked.hook_dict
    missing = sorted(n for n in set(names) if n not in hook_dict)
    if missing:
        raise CircuitError(f"the model has no hook {missing[0]!r} ({len(hook_dict)} hooks, e.g. "
                           f"{next(iter(hook_dict), '-')})")


def pair_batches(hooked, pairs: QuizPairs, direction: str, batch_size: int) -> Iterator[PairBatch]:
    from culture.hooked import to_hooked_tokens

    check_direction(direction)
    check_batch_size(batch_size)
    device = hooked.cfg.device
    for lo in range(0, len(pairs), batch_size):
        c = pairs.clean[lo:lo + batch_size].to(device)
        r = pairs.corrupted[lo:lo + batch_size].to(device)
        yield PairBatch(c, r, to_hooked_tokens(c).to(device), to_hooked_tokens(r).to(device), direction)


def n_batches(pairs: QuizPairs, batch_size: int) -> int:
    return -(-len(pairs) // batch_size)


class BaselineBuilder:
    """Collects the per-pair readouts of the unpatched clean and corrupted
    runs, and their cell scores against the clean answer."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {}
        self.cells: dict[str, ScoreParts] = {}

    def add(self, side: str, batch: PairBatch, logits: torch.Tensor,
            r: dict[str, torch.Tensor] | None = None) -> None:
        """One batch of the ``side`` run; ``r``: its readouts when the caller has them already."""
        r = batch.readouts(logits) if r is None else r
        for key, v in r.items():
            self.parts.setdefault(f"{side}_{key}", []).append(v.detach().double().cpu().numpy()
                                                              if key != "correct" else v.cpu().numpy())
        self.cells.setdefault(side, ScoreParts()).add(batch.answer_scores(logits))

    def build(self) -> Baseline:
        cells = {f"{side}_cells": parts.build() for side, parts in self.cells.items()}
        return Baseline(**{k: np.concatenate(v) for k, v in self.parts.items()}, **cells)


class ScoreParts:
    """Per-batch :func:`~culture.circuits.metric.answer_scores`, concatenated over pairs."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, scores: dict[str, torch.Tensor]) -> None:
        for key, v in scores.items():
            self.parts.setdefault(key, []).append(v)

    def build(self) -> dict[str, torch.Tensor]:
        return {key: torch.cat(v) for key, v in self.parts.items()}


@contextmanager
def frozen_parameters(hooked):
    """Parameters stop requiring gradients (restored after): the backward
    passes want gradients of activations only."""
    flags = [(p, p.requires_grad) for p in hooked.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield hooked
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def run_cached(hooked, tokens: torch.Tensor, names) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {hook name: activation}) of one no-grad forward."""
    names = sorted(set(names))
    with torch.inference_mode():
        logits, cache = hooked.run_with_cache(tokens, names_filter=lambda n: n in names, return_type="logits")
    return logits, {n: cache[n] for n in names}
