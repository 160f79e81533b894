"""Entry point of the ``culture-interp`` executable."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from culture_cli import commands

app = typer.Typer(
    name="culture-interp",
    help="Interpretability toolkit for the culture GPTs (quizzes, models, TransformerLens, SAEs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: options that take several values after one flag: ``--models 0 1 2 3``
MULTI_VALUE_OPTIONS = ("--models", "--tasks", "--task", "--layers", "--features", "--steer", "--index",
                       "--train-structures", "--controls")


@app.callback()
def _root() -> None:
    """Interpretability toolkit for the culture GPTs (quizzes, models, TransformerLens, SAEs)."""


_registered = False


def _register_commands() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """Rewrite ``--models 0 1 2`` (and ``--models 0,1,2``) as
    ``--models 0 --models 1 --models 2``, which click understands."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in MULTI_VALUE_OPTIONS:
            values = [value] if eq else []
            i += 1
            if not eq:
                while i < len(argv) and not (argv[i].startswith("-") and not _is_number(argv[i])):
                    values.append(argv[i])
                    i += 1
            parts = [p for v in values for p in v.split(",") if p != ""]
            if not parts:
                out.append(name)  # let click report the missing value
            for p in parts:
                out += [name, p]
            continue
        if arg == "--":
            out += argv[i:]
            break
        out.append(arg)
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    from culture.errors import CultureError

    from culture_cli import common

    _register_commands()
    given = list(sys.argv[1:] if argv is None else argv)
    common._INVOCATION = given
    args = expand_multi_value_options(given)
    try:
        app(args=args, prog_name="culture-interp")
    except CultureError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
