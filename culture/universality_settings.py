"""The settings of a universality comparison, each default and bound once.

Torch-free: ``culture-interp universality compare`` takes its option
defaults from :class:`UniversalitySettings` (same names) and the library
(:func:`culture.universality.compare_models`) checks them once.
"""

from __future__ import annotations

from culture.errors import CultureError

#: The fewest quizzes a comparison accepts. Its intervals resample quizzes and
#: its held-out replication splits them into even- and odd-index halves: with
#: 8, each half has 4 quizzes, the fewest for which a bootstrap over them has
#: more than a handful of distinct resamples (C(7, 4) = 35). With fewer, the
#: intervals collapse and a neuron silent on one quiz reads as "dead".
MIN_QUIZZES = 8


class QuizCountError(CultureError, ValueError):
    """Too few quizzes for the statistics a comparison prints (one line)."""


def check_quiz_count(n_quizzes: int, positions_per_quiz: int, error: type[Exception] = QuizCountError) -> None:
    """Raise ``error`` when ``n_quizzes`` < :data:`MIN_QUIZZES`, saying why and
    how many tokens that takes at ``positions_per_quiz`` positions per quiz."""
    if n_quizzes < MIN_QUIZZES:
        raise error(f"universality needs at least {MIN_QUIZZES} quizzes ({MIN_QUIZZES * positions_per_quiz:,} "
                    f"tokens at {positions_per_quiz} positions per quiz), got {n_quizzes}: its intervals resample "
                    f"quizzes and its held-out half is the odd-index quizzes, so with fewer the intervals collapse "
                    f"and a neuron silent on so few tokens would read as dead")


__all__ = ["MIN_QUIZZES", "check_quiz_count", "QuizCountError"]
