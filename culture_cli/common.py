"""Helpers shared by the commands: console, errors, JSON output, progress."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

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
