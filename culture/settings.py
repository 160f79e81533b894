"""Settings dataclasses: each default and each bound written once.

A setting is a dataclass field made with :func:`setting`: its default, and
its bounds in the field's metadata. :func:`check_settings` enforces the
bounds (library users and the CLI call the same ``check()``); the CLI takes
its option defaults from the dataclass (:func:`default_of`) under the same
names, and a test compares them. Torch-free, so the CLI can import it at
start-up.

Here: the shared :class:`SettingsError` and the settings of evaluation test
sets (:class:`TestSetSettings`); the culture run's are
:class:`culture.train_config.TrainConfig`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from culture.defaults import PROMPT_NOISE, TEST_SAMPLES
from culture.errors import CultureError


class SettingsError(CultureError, ValueError):
    """A setting out of its bounds: ``field`` names it (the CLI shows its option), ``detail`` says why."""

    def __init__(self, field_name: str, detail: str):
        self.field = field_name
        self.detail = detail
        super().__init__(f"{field_name}: {detail}")


def setting(default: Any, *, min: float | None = None, max: float | None = None, above: float | None = None,
            choices: tuple | None = None, factory=None):
    """A dataclass field with its bounds: ``min`` <= value <= ``max``,
    value > ``above``, value in ``choices``; None (when the default is None)
    and every item of a tuple are checked the same way."""
    meta = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("choices", choices)) if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _bound_error(value, meta) -> str | None:
    if "choices" in meta:
        return None if value in meta["choices"] else f"must be one of {', '.join(map(str, meta['choices']))}, " \
                                                      f"got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    if above is not None and not value > above:
        return f"must be > {above:g}, got {value:g}"
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"must be in [{lo:g}, {hi:g}], got {value:g}"
    if lo is not None and not value >= lo:
        return f"must be >= {lo:g}, got {value:g}"
    if hi is not None and not value <= hi:
        return f"must be <= {hi:g}, got {value:g}"
    return None


def check_settings(obj, error: type[SettingsError] = SettingsError) -> None:
    """Raise ``error(field, detail)`` for the first field of dataclass ``obj``
    outside the bounds of its :func:`setting`."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or not f.metadata:
            continue
        for item in (value if isinstance(value, (tuple, list)) else (value,)):
            detail = _bound_error(item, f.metadata)
            if detail is not None:
                raise error(f.name, detail)


def check_integers(obj, names, error: type[SettingsError] = SettingsError, *, none_ok: bool = True) -> None:
    """Raise ``error(field, "must be an integer, got ...")`` for the first of
    ``names`` whose value is not an int (bool is not one; None passes when
    ``none_ok``)."""
    for name in names:
        value = getattr(obj, name)
        if not (value is None and none_ok) and (isinstance(value, bool) or not isinstance(value, int)):
            raise error(name, f"must be an integer, got {value!r}")


def settings_dict(obj) -> dict:
    """A settings dataclass as a JSON-ready dict: its fields, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items()}


def settings_of(cls, settings, options: dict, aliases: dict[str, str], error: type[SettingsError]):
    """``settings`` (default: ``cls()``) with ``options`` replacing fields by
    name or by an earlier name (``aliases``: earlier name -> field), checked
    (``settings.check()``); a setting out of bounds raises ``error`` naming
    the option as it was given, an unknown option TypeError."""
    given = {aliases.get(key, key): (key, value) for key, value in options.items()}
    names = {f.name for f in fields(cls)}
    unknown = sorted(key for name, (key, _) in given.items() if name not in names)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    out = replace(settings if settings is not None else cls(), **{name: v for name, (_, v) in given.items()})
    try:
        return out.check()
    except error as exc:
        as_given = given.get(exc.field, (exc.field, None))[0]
        if as_given == exc.field:
            raise
        raise error(as_given, exc.detail) from None


def default_of(cls, name: str):
    """The default of field ``name`` of dataclass ``cls`` (what the CLI option defaults to)."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


#: what ``quizzes`` selects: world quizzes, culture quizzes, or the reference mix of both
QUIZ_KINDS = ("world", "culture", "both")


@dataclass
class TestSetSettings:
    """How a test set is drawn (REFERENCE.md section 5; see
    :func:`culture.evaluation.make_test_set`): ``num_samples`` quizzes of the
    world ``tasks`` (None: the source's training tasks, else the eight),
    mixed with the source's test c-quizzes when ``c_quizzes`` (at most half),
    ``quizzes`` world / culture / both, structures drawn with ``seed``,
    prompt ``noise``. The CLI's ``--num-samples``, ``--tasks``,
    ``--c-quizzes``, ``--quizzes``, ``--seed`` and ``--noise`` default to these."""

    __test__ = False  # not a pytest test class

    num_samples: int = setting(TEST_SAMPLES, min=1)
    tasks: tuple[str, ...] | None = None
    c_quizzes: bool = True
    quizzes: str = setting("both", choices=QUIZ_KINDS)
    seed: int = setting(0, min=0)
    noise: float = setting(PROMPT_NOISE, min=0.0, max=1.0)

    def check(self) -> "TestSetSettings":
        check_settings(self)
        return self

    def build(self, source):
        """The test set of model source ``source`` (:func:`culture.evaluation.source_test_set`)."""
        from culture.evaluation import source_test_set

        self.check()
        return source_test_set(source, self.num_samples, self.tasks, c_quizzes=self.c_quizzes, seed=self.seed,
                               noise=self.noise, quizzes=self.quizzes)


__all__ = ["SettingsError", "setting", "check_settings", "check_integers", "default_of", "TestSetSettings", "QUIZ_KINDS"]
