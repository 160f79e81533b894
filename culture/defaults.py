"""Defaults shared by the library and the CLI: one named constant per fact.

The protocol values of the published run (REFERENCE.md sections 1, 2 and 5).
This module imports nothing (no torch), so a CLI option can take its default
from here without slowing ``--help``. The structures themselves (marker
orders, predicted and noised blocks) live with the quiz format in
:data:`culture.quiz.STRUCTURES` / :data:`culture.quiz.EVAL_STRUCTURES`; the
task generators in :mod:`culture.world`.
"""

from __future__ import annotations

#: Prompt noise p of the published run: in a structure's noised block each cell
#: is, with probability p, replaced by a uniformly random colour.
PROMPT_NOISE = 0.05

#: The eight world tasks the published models learned
#: (``culture.world.DEFAULT_TASKS`` is this tuple).
DEFAULT_TASKS: tuple[str, ...] = (
    "replace_color",
    "translate",
    "grow",
    "half_fill",
    "frame",
    "detect",
    "corners",
    "contact",
)

#: Number (1..5 of REFERENCE.md section 1) of the canonical structure
#: (A, f_A, B, f_B): the default for one-structure analyses (probes, generate).
CANONICAL_STRUCTURE = 1

#: Numbers of the four deterministic structures the test protocol draws from
#: (``culture.quiz.EVAL_STRUCTURES`` are these).
EVAL_STRUCTURE_NUMBERS: tuple[int, ...] = (1, 2, 3, 4)

#: Quizzes in the reference test set.
TEST_SAMPLES = 2000

__all__ = ["PROMPT_NOISE", "DEFAULT_TASKS", "CANONICAL_STRUCTURE", "EVAL_STRUCTURE_NUMBERS", "TEST_SAMPLES"]
