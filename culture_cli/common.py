"""Helpers shared by the commands: console, errors, JSON output, progress,
tables, option checks and the options several commands declare alike."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from culture.errors import CultureError

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Abort the command with one line on stderr and exit code 2."""
    raise CultureError(message)


def plain_output() -> bool:
    """True when stdout is not a terminal or NO_COLOR is set: no colours then."""
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


def write_json(path, obj) -> None:
    from culture.io import atomic_write_json

    atomic_write_json(path, obj)
    err_console.print(f"wrote {path}")


def write_json_or_fail(path, obj) -> None:
    """:func:`write_json`; an OSError becomes one error line (exit code 2)."""
    try:
        write_json(path, obj)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def progress() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for tables)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def parse_ids(values: list[str] | None, what: str = "--models") -> list[int] | None:
    """Non-negative integer ids from ``--models 0 1,2`` style values (order
    kept, duplicates dropped); None when none were given."""
    if not values:
        return None
    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                k = int(part)
            except ValueError:
                fail(f"{what}: not an integer: {part!r}")
            if k < 0:
                fail(f"{what}: must be >= 0, got {k}")
            out.append(k)
    return list(dict.fromkeys(out))


def command_group(name: str, help: str) -> typer.Typer:
    """A command with subcommands (``culture-interp NAME SUBCOMMAND``)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


# ------------------------------------------------------------------ tables


def pct(x, digits: int = 1) -> str:
    """A share as a percentage ("-" for None)."""
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def print_table(table) -> None:
    """Print a table; in a pipe, as wide as it needs (no cropped cells)."""
    if plain_output():
        width = console.measure(table, options=console.options.update_width(100_000)).maximum
        Console(file=sys.stdout, width=max(console.width, width), no_color=True, highlight=False).print(
            table, crop=False)
    else:
        console.print(table)


# ------------------------------------------------------------------ option checks


def check_noise(noise: float) -> None:
    """--noise must be a probability."""
    if not (math.isfinite(noise) and 0.0 <= noise <= 1.0):
        fail(f"--noise must be a probability in [0, 1], got {noise}")


def check_test_set_options(num_samples: int, batch_size: int, seed: int, noise: float) -> None:
    """--num-samples, --batch-size, --seed and --noise of the commands that build a test set."""
    if num_samples < 1:
        fail(f"--num-samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    check_noise(noise)


# ------------------------------------------------------------------ options
# Shared option declarations (``param: DeviceOption = "cpu"``); typer copies
# the OptionInfo for every parameter, so one can serve several commands.

#: the arguments of the command being run (set by culture_cli.main.main; None: sys.argv)
_INVOCATION: list[str] | None = None


def invocation() -> str:
    """The command line being run, as a shell would take it (for records such
    as train_config.json) -- also when main() is called with a list."""
    import shlex

    args = sys.argv[1:] if _INVOCATION is None else _INVOCATION
    return shlex.join(["culture-interp", *args])


MODEL_SOURCE_HELP = ("Where the model is: a Hugging Face repo id, a directory, or 'bundled' "
                     "(default: the published models).")

ModelSourceOption = Annotated[Optional[str], typer.Option("--source", help=MODEL_SOURCE_HELP, show_default=False)]
ModelsSourceOption = Annotated[Optional[str], typer.Option(
    "--source", help="Where the models are: a Hugging Face repo id, a directory, or 'bundled' "
    "(default: the published models).", show_default=False)]
TasksOption = Annotated[Optional[list[str]], typer.Option(
    "--tasks", "--task", help="World tasks (default: the source's training tasks when it records them, "
        "else the 8 of the published models).", show_default=False)]
CQuizzesOption = Annotated[bool, typer.Option("--c-quizzes/--no-c-quizzes",
                                              help="Mix in the source's test c-quizzes (at most half).")]
NoiseOption = Annotated[float, typer.Option("--noise", help="Prompt noise (structures 1 and 2).")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Quizzes per forward pass.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")]
JsonOption = Annotated[Optional[Path], typer.Option("--json", help="Write the numbers to this JSON file.",
                                                    show_default=False)]
QuizKindsOption = Annotated[str, typer.Option(
    "--quizzes", help="Which quizzes: world, culture (the source's test c-quizzes) or both (the reference mix).")]


def phase_progress(bar: Progress):
    """A ``(phase, done, total)`` callback for the library's progress hooks:
    one bar per phase on ``bar`` (a :func:`progress` display)."""
    ids: dict[str, int] = {}

    def report(phase: str, done: int, total: int) -> None:
        if phase not in ids:
            ids[phase] = bar.add_task(phase, total=total)
        bar.update(ids[phase], completed=done, total=total)

    return report
