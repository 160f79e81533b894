"""mkdocs hook: the command-line reference, generated from the Typer app.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; at build
time it is replaced by one section per ``culture-interp`` command (its help
text and a table of its options: names, value, default, help), read from the
click command tree that ``culture-interp`` itself runs
(:func:`culture_cli.main.iter_commands`). Nothing in it is typed by hand, so a
new option or command appears in the site with the next build.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[2]


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _record(param, ctx) -> tuple[str, str]:
    """(names with their value, help with its default), as ``--help`` prints them."""
    record = param.get_help_record(ctx)
    if record is None:  # an argument: click gives none
        return f"{param.human_readable_name}", ""
    return record


def command_sections() -> str:
    """The markdown of every command, in the order ``culture-interp --help`` lists them."""
    import click

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from culture_cli.main import cli_command, iter_commands

    root = cli_command()
    out = []
    for path, command in iter_commands(root):
        name = "culture-interp " + " ".join(path)
        ctx = click.Context(command, info_name=name)
        out.append(f"## `{name}`\n")
        text = inspect.cleandoc(command.help or "")
        if text:
            out.append(text.replace("\b\n", "") + "\n")
        out.append(f"```text\n{name} {_cell(' '.join(command.collect_usage_pieces(ctx)))}\n```\n")
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            out.append("| option | meaning |\n|---|---|")
            for p in params:
                names, meaning = _record(p, ctx)
                out.append(f"| `{_cell(names)}` | {_cell(meaning)} |")
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):  # mkdocs hook
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, command_sections())
    return markdown
