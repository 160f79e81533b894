"""User-facing errors: the CLI prints their message as one line and exits 2."""

from __future__ import annotations

import re


class CultureError(Exception):
    """Bad input that the user can fix (unknown id, missing file, offline miss...)."""


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")


def first_sentence(exc: BaseException | str) -> str:
    """The reason of an exception (or a text) on one line: its first sentence,
    whole -- never cut in the middle of a word. A first line that ends with
    ':' announces the reason, so the next line is kept with it."""
    text = exc if isinstance(exc, str) else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "" if isinstance(exc, str) else type(exc).__name__
    line, i = lines[0], 1
    while line.endswith(":") and i < len(lines):
        line, i = f"{line} {lines[i]}", i + 1
    line = " ".join(line.split())
    m = _SENTENCE_END.search(line)
    if m is not None and m.start() >= 20:
        line = line[:m.start()]
    return line
