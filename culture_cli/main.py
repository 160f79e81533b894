"""Entry point of the ``culture-interp`` executable.

Every command module registers itself (``register(app)``); :func:`cli_command`
builds the click command tree once and prepares every command alike:

* its output options are checked before its body runs -- none may touch an
  input (:func:`culture_cli.common.check_outputs`; see ``culture_cli.common``),
  numbers no option can mean (NaN, infinity, integers beyond 64 bits) are
  refused (:func:`culture_cli.common.check_numbers`), and so is a model named
  twice in ``--models``;
* it runs with its own temporary folder (``culture.io.run_temp_dir``), which
  the next run removes when a killed one left it;
* help shows no ``<bool>`` after flags and ``<int> ...`` after options that
  take several values.

:func:`main` turns every failure into one ``error:`` line on stderr and exit
code 2: :class:`culture.errors.CultureError` (bad input), click's usage errors
(a typo'd option, a bad value; with a hint to ``--help``), OSError (disk full,
permissions; also a failed write wrapped by torch or safetensors) and, as a last resort, any unexpected exception (its traceback
with ``CULTURE_DEBUG=1``). Ctrl-C and SIGTERM stop the command cleanly --
temporary files are removed, outputs are left as they were -- with exit codes
130 and 143.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
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
MULTI_VALUE_OPTIONS = ("--models", "--tasks", "--task", "--profile-tasks", "--layers", "--features", "--steer",
                       "--index", "--train-structures", "--hooks", "--sizes", "--controls")
#: of those, the ones that take integers (their help says ``<int> ...`` even when parsed as text)
INTEGER_LIST_OPTIONS = ("--models", "--layers", "--features", "--index", "--train-structures", "--sizes")


@app.callback()
def _root() -> None:
    """Interpretability toolkit for the culture GPTs (quizzes, models, TransformerLens, SAEs)."""


_registered = False
_COMMAND = None


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


class _Interrupted(Exception):
    """Ctrl-C in a command (typer would turn KeyboardInterrupt into a silent exit)."""


class _Terminated(BaseException):
    """SIGTERM: unwinds like Ctrl-C, so temporary files are removed."""


def _guarded(command):
    """The command's callback behind the output check. The body is looked up
    as ``command.culture_body`` at call time (tests replace it)."""
    from culture_cli.common import check_model_ids_once, check_numbers, check_outputs, json_to_stdout

    command.culture_body = command.callback

    def callback(**values):
        check_numbers(command, values)
        check_model_ids_once(command, values)
        check_outputs(command, values)
        try:
            with json_to_stdout(values):
                return command.culture_body(**values)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    callback.__wrapped__ = getattr(command.culture_body, "__wrapped__", command.culture_body)
    callback.__doc__ = command.culture_body.__doc__
    return callback


def _element_type(param) -> str:
    import typing

    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        args = typing.get_args(descriptor.annotation)
        elem = args[0] if args else descriptor.annotation
        return {int: "int", float: "float", str: "str"}.get(elem, getattr(elem, "__name__", "value").lower())
    return getattr(getattr(param, "type", None), "name", "value")  # pragma: no cover - older typer


def _fix_help(param) -> None:
    from culture_cli.common import is_option

    if not is_option(param) or param.metavar is not None:
        return
    if param.is_flag or param.count:
        param.metavar = ""  # typer would print <bool>
    elif param.multiple:
        elem = "int" if any(o in INTEGER_LIST_OPTIONS for o in param.opts) else _element_type(param)
        param.metavar = f"<{elem}> ..."


def _is_group(command) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _prepare(command) -> None:
    for param in command.params:
        _fix_help(param)
    if _is_group(command):
        for sub in command.commands.values():
            _prepare(sub)
    elif command.callback is not None:
        command.callback = _guarded(command)
    # the help option is made on demand: no <bool> after it either
    original = command.get_help_option

    def get_help_option(ctx):
        option = original(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option


def cli_command():
    """The click command tree of ``culture-interp`` (built once, prepared)."""
    global _COMMAND
    if _COMMAND is None:
        _register_commands()
        command = typer.main.get_command(app)
        _prepare(command)
        _COMMAND = command
    return _COMMAND


def iter_commands(command=None, path: tuple[str, ...] = ()):
    """(("sae", "train"), click command) for every runnable command."""
    command = cli_command() if command is None else command
    if _is_group(command):
        for name in sorted(command.commands):
            yield from iter_commands(command.commands[name], (*path, name))
    else:
        yield path, command


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _usage_error(exc) -> str:
    """click's usage error as one line, with the command's --help."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "culture-interp"
    return f"{_one_line(exc.format_message())} (see '{where} --help')"


#: what a failed write says in the exceptions of torch, safetensors and the OS, and what it means
_WRITE_FAILURES = (
    ("no space left on device", "no space left on the device"),
    ("storagefull", "no space left on the device"),
    ("disk quota exceeded", "disk quota exceeded"),
    ("file too large", "file too large (the process's file-size limit, ulimit -f)"),
    ("filetoolarge", "file too large (the process's file-size limit, ulimit -f)"),
    ("file write failed", "a file could not be written (disk full, or a file-size limit)"),
)


def _write_failure(exc: BaseException) -> str | None:
    """One line for an exception (or its cause) that is a failed write: disk
    full, quota, file-size limit (RLIMIT_FSIZE); None otherwise."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                      errno.EFBIG: "file too large (the process's file-size limit, ulimit -f)"}[exc.errno]
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            return f"cannot write{where}: {reason}"
        text = str(exc).lower().replace(" ", "") if not isinstance(exc, OSError) else ""
        for needle, reason in _WRITE_FAILURES:
            if needle.replace(" ", "") in text:
                return f"cannot write the output: {reason}"
        exc = exc.__cause__ or exc.__context__
    return None


def _unexpected(exc: BaseException) -> str:
    from culture.errors import first_sentence

    written = _write_failure(exc)
    if written is not None:
        return written
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower() \
            or "can't allocate memory" in str(exc).lower():
        return "out of memory (try a smaller --batch-size, fewer samples or tokens)"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or first_sentence(exc)}{where}"
    return (f"unexpected {type(exc).__name__}: {first_sentence(exc)} "
            "(rerun with CULTURE_DEBUG=1 for the traceback)")


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    from culture.errors import CultureError
    from culture.io import run_temp_dir
    from culture_cli import common

    click = common.click_module()

    command = cli_command()
    given = list(sys.argv[1:] if argv is None else argv)
    common._INVOCATION = given
    args = expand_multi_value_options(given)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread
        pass
    code = 0
    message = None
    try:
        with run_temp_dir():  # this run's temporary files; a killed run's are removed by the next
            result = command.main(args=args, prog_name="culture-interp", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer's answer to Ctrl-C while parsing
            print("interrupted", file=sys.stderr)
    except click.exceptions.NoArgsIsHelpError as exc:  # the help is printed when the error is made
        text = exc.format_message()
        if text.strip():
            print(text)
    except click.exceptions.ClickException as exc:
        message = _usage_error(exc) if isinstance(exc, click.exceptions.UsageError) else _one_line(exc.format_message())
    except CultureError as exc:
        message = _one_line(exc) or type(exc).__name__
    except (_Interrupted, KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        code = 130
    except _Terminated:
        print("terminated", file=sys.stderr)
        code = 143
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        if os.environ.get("CULTURE_DEBUG"):
            raise
        message = _unexpected(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
