"""Helpers shared by the commands: console, errors, JSON output, progress,
tables, option checks and the options several commands declare alike.

Outputs -- how every command gets its output paths checked before any work
--------------------------------------------------------------------------
``culture_cli.main`` wraps every registered command: before the command's
body runs (so before any model is loaded), each of its *output options* is
checked with :func:`culture.io.check_output`, and a path that cannot be
written -- its parent is a file, a file is expected where a directory is (or
the reverse), the folder is not writable, two outputs are the same path, an
output is, contains or lies inside one of the command's inputs
(:func:`command_inputs`: checkpoints, source folders, the installed zoo, SAE
folders, quiz files, a resume's checkpoints; links resolved), a folder to be
replaced is not empty without ``--overwrite`` -- gives one ``error:`` line and
exit code 2. ``--json -`` writes the JSON to stdout (the tables then go to
stderr); no other output takes ``-``.

An output option is a ``Path`` option that is

* declared with a marker: ``Annotated[OptionalOutputFile, typer.Option("--json", ...)]``
  (a file written whole), :data:`OutputDir` / :data:`OptionalOutputDir` (a
  folder written whole; refused when it exists and is not empty unless the
  command's ``--overwrite`` is on, when it has one), :data:`OutputFolder` /
  :data:`OptionalOutputFolder` (a folder files are added to); or
* unmarked but named ``--json`` or ``--png`` (a file) or ``--out`` / ``-o`` /
  ``--output`` / ``--dest`` (a folder written whole) -- mark it when it is
  something else.

A command writing several outputs writes them through one
:class:`culture.io.OutputSet` (all staged, renamed into place only when all
succeeded), so a failure half-way leaves none of them. Temporary files are
``.culture-tmp.*`` entries next to the output; later runs remove stale ones.
"""

from __future__ import annotations

import contextlib
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


#: ``--json -``: the JSON goes to standard output (tables and messages then go to stderr)
STDOUT = "-"


def is_stdout(path) -> bool:
    """Whether an output option was given as ``-`` (standard output)."""
    return path is not None and not isinstance(path, bool) and os.fspath(path) == STDOUT


def write_json(path, obj, announce: bool = True) -> None:
    """``obj`` as JSON to ``path`` (atomically), or to stdout for ``-``."""
    from culture.io import atomic_write_json, json_text

    if is_stdout(path):
        sys.stdout.write(json_text(obj))
        sys.stdout.flush()
        return
    atomic_write_json(path, obj)
    if announce:
        err_console.print(f"wrote {path}", highlight=False)


@contextlib.contextmanager
def json_to_stdout(values: dict):
    """While a command runs with ``--json -``: what it prints for people
    (tables, messages on :data:`console`) goes to stderr, so stdout holds the
    JSON alone."""
    taken = any(is_stdout(values.get(name)) for name in ("json_path", "json"))
    if not taken:
        yield
        return
    previous = console._file  # None: follow sys.stdout (rich's ``file`` property would pin today's stream)
    console.file = sys.stderr
    try:
        yield
    finally:
        console._file = previous


def stdout_taken() -> bool:
    """True while a ``--json -`` command runs (see :func:`json_to_stdout`)."""
    return console.file is sys.stderr


def write_json_or_fail(path, obj) -> None:
    """:func:`write_json`; an OSError becomes one error line (exit code 2)."""
    try:
        write_json(path, obj)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


class _StdoutAware:
    """An OutputSet whose ``file("-")`` is standard output: written to a
    temporary file, copied to stdout once every output is in place."""

    def __init__(self, staged):
        self._staged = staged
        self._stdout: list[Path] = []

    def file(self, path) -> Path:
        if not is_stdout(path):
            return self._staged.file(path)
        import tempfile

        fd, name = tempfile.mkstemp(prefix="culture-stdout.")
        os.close(fd)
        self._stdout.append(Path(name))
        return Path(name)

    def __getattr__(self, name):
        return getattr(self._staged, name)

    def flush(self) -> None:
        for p in self._stdout:
            sys.stdout.write(p.read_text())
        sys.stdout.flush()
        self.discard()

    def discard(self) -> None:
        for p in self._stdout:
            with contextlib.suppress(OSError):
                p.unlink()
        self._stdout = []


@contextlib.contextmanager
def outputs(announce: bool = True):
    """A :class:`culture.io.OutputSet` for a command's outputs: write each
    one to the staging path ``outputs.file(path)`` / ``outputs.dir(path)``
    gives; all are renamed into place when the block ends without error, none
    otherwise. An OSError becomes one error line; ``announce`` prints
    "wrote PATH" for each output once it is in place."""
    from culture.io import OutputSet

    staged = OutputSet()
    front = _StdoutAware(staged)
    try:
        with staged:
            yield front
    except OSError as exc:
        front.discard()
        where = str(getattr(exc, "filename", None) or "")
        where = f" {where}" if where and ".culture-tmp." not in where else " the outputs"
        fail(f"cannot write{where}: {exc.strerror or exc} (no output written)")
    except BaseException:
        front.discard()
        raise
    front.flush()
    if announce:
        for path in staged.committed:
            err_console.print(f"wrote {path}", highlight=False)


class _Progress(Progress):
    """A Progress that leaves nothing behind when it showed no bar (an error
    before the first one): no blank line before the ``error:`` line."""

    def stop(self) -> None:
        if self.tasks:
            super().stop()
            return
        self.live.transient = True
        self.live.stop()  # without the newline Progress.stop prints off a terminal


def progress() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for tables)."""
    return _Progress(
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
    kept; an id given twice is refused); None when none were given."""
    if not values:
        return None
    out = []
    for part in id_parts(values):
        try:
            k = int(part)
        except ValueError:
            fail(f"{what}: not an integer: {part!r}")
        if k < 0:
            fail(f"{what}: must be >= 0, got {k}")
        out.append(k)
    refuse_repeats(what, out)
    return out


def id_parts(values) -> list[str]:
    """The single ids of ``--models 0 1,2`` style values, as given."""
    return [part for value in values or () for part in str(value).replace(",", " ").split()]


def refuse_repeats(what: str, ids) -> None:
    """One error line (exit 2) for the first id of a list named twice."""
    seen = set()
    for k in ids:
        if k in seen:
            fail(f"{what}: {k} is given twice; name each once")
        seen.add(k)


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


def pct_ci(entry, digits: int = 1) -> str:
    """A share with its 95% interval, ``"91.8% [89.1, 93.9]"``, from a
    ``{"value", "ci95"}`` dict (``culture.intervals``); "-" when missing."""
    from culture.intervals import format_interval

    if not entry or entry.get("value") is None:
        return "-"
    return format_interval(entry["value"], *entry["ci95"], digits=digits)


def num_ci(entry, digits: int = 3) -> str:
    """A number with its 95% interval, ``"0.00284 [0.00214, 0.00361]"``
    (``digits`` significant digits); "-" when missing."""
    from culture.intervals import format_interval

    if not entry or entry.get("value") is None:
        return "-"
    return format_interval(entry["value"], *entry["ci95"], percent=False, digits=digits)


def points_ci(entry) -> str:
    """A change of a share (a ``{"value", "ci95"}`` dict, e.g. ablated minus
    clean) in percentage points with its interval, ``"-4.5 [-7.0, -2.0]"``."""
    if not entry or entry.get("value") is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{100 * entry['value']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def write_outputs(png=None, draw=None, json_path=None, data=None) -> None:
    """The optional files of an analysis, all or nothing: ``draw(path)``
    writes the picture, ``data`` goes to ``json_path`` ("wrote PATH" on stderr
    for each once both are in place)."""
    with outputs() as staged:
        if png is not None:
            draw(staged.file(png))
        if json_path is not None:
            write_json(staged.file(json_path), data, announce=False)


def print_table(table) -> None:
    """Print a table; in a pipe, as wide as it needs (no cropped cells)."""
    if plain_output() or stdout_taken():
        width = console.measure(table, options=console.options.update_width(100_000)).maximum
        Console(file=console.file, width=max(console.width, width), no_color=True, highlight=False).print(
            table, crop=False)
    else:
        console.print(table)


# ------------------------------------------------------------------ option checks


def check_min(option: str, value, minimum: int) -> None:
    """A lower bound of an integer option (None: not given, nothing to check):
    ``--top must be at least 1, got 0``, or ``... must be >= 0`` for a bound of 0."""
    if value is not None and value < minimum:
        bound = ">= 0" if minimum == 0 else f"at least {minimum}"
        fail(f"{option} must be {bound}, got {value}")


def check_noise(noise: float) -> None:
    """--noise must be a probability (the bound :class:`culture.settings.TestSetSettings` declares)."""
    from culture.settings import SettingsError, TestSetSettings

    try:
        TestSetSettings(noise=noise).check()
    except SettingsError as exc:
        fail(f"--noise: {exc.detail}")


def check_test_set_options(num_samples: int, batch_size: int, seed: int, noise: float) -> None:
    """--num-samples, --seed and --noise of the commands that build a test set,
    by the bounds :class:`culture.settings.TestSetSettings` declares (one
    source), and --batch-size."""
    from culture.settings import SettingsError, TestSetSettings

    try:
        TestSetSettings(num_samples=num_samples, seed=seed, noise=noise).check()
    except SettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")
    check_min("--batch-size", batch_size, 1)


def given_options() -> set[str]:
    """Names of the parameters of the running command that the user gave
    (on the command line or through the environment), not left at their default."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer
        get_current_context = click_module().get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return set()
    out = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            out.add(name)
    return out


def option_flag(name: str) -> str:
    """The option of the running command for parameter ``name`` (``--max-rounds``)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer
        get_current_context = click_module().get_current_context
    ctx = get_current_context(silent=True)
    for param in (ctx.command.params if ctx is not None else []):
        if param.name == name and getattr(param, "opts", None):
            return max(param.opts, key=len)
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------ output markers


class OutputKind:
    """Marks an option as an output (see the module docstring): put it in the
    ``Annotated[...]`` of the parameter; :data:`OutputFile` & co. do."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"OutputKind({self.kind!r})"


OUTPUT_FILE = OutputKind("file")
OUTPUT_DIR = OutputKind("dir")
OUTPUT_FOLDER = OutputKind("merge")

OutputFile = Annotated[Path, OUTPUT_FILE]
OptionalOutputFile = Annotated[Optional[Path], OUTPUT_FILE]
OutputDir = Annotated[Path, OUTPUT_DIR]
OptionalOutputDir = Annotated[Optional[Path], OUTPUT_DIR]
OutputFolder = Annotated[Path, OUTPUT_FOLDER]
OptionalOutputFolder = Annotated[Optional[Path], OUTPUT_FOLDER]

#: option names that are outputs when not marked otherwise: file or folder written whole
OUTPUT_FILE_NAMES = ("--json", "--png")
OUTPUT_DIR_NAMES = ("--out", "-o", "--output", "--dest")


def _marker(annotation) -> OutputKind | None:
    import typing

    for arg in getattr(annotation, "__metadata__", ()):
        if isinstance(arg, OutputKind):
            return arg
    for arg in typing.get_args(annotation):
        found = _marker(arg)
        if found is not None:
            return found
    return None


def click_module():
    """The click that typer runs on: its own copy (``typer._click``, typer >=
    0.22) or the click package (older typer)."""
    try:
        from typer import _click as clicklib
    except ImportError:  # pragma: no cover - older typer
        import click as clicklib
    return clicklib


def is_option(param) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def is_path_param(param) -> bool:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return bool(descriptor.is_path)
    return getattr(getattr(param, "type", None), "name", "") == "path"  # pragma: no cover - older typer


def output_options(command) -> list[tuple[str, str, str]]:
    """(parameter name, option name, kind) of the output options of a click
    command built by typer from a command function (see the module docstring);
    kind is "file", "dir" or "merge"."""
    import typing

    function = getattr(command.callback, "__wrapped__", None)
    try:
        hints = typing.get_type_hints(function, include_extras=True) if function is not None else {}
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to names
        hints = {}
    out = []
    for param in command.params:
        if not is_option(param):
            continue
        marker = _marker(hints.get(param.name))
        flag = max(param.opts, key=len)
        if marker is not None:
            out.append((param.name, flag, marker.kind))
        elif is_path_param(param):
            if any(o in OUTPUT_FILE_NAMES for o in param.opts):
                out.append((param.name, flag, "file"))
            elif any(o in OUTPUT_DIR_NAMES for o in param.opts):
                out.append((param.name, flag, "dir"))
    return out


def _paths_in(value) -> list[Path]:
    """The existing paths among an option's value(s)."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths_in(v)]
    if isinstance(value, (str, os.PathLike)) and str(value).strip() and str(value) != STDOUT:
        try:
            p = Path(value).expanduser()
            return [p] if p.exists() else []
        except (OSError, ValueError):
            return []
    return []


def _real(path) -> Path:
    """``path`` with links resolved (also below a part that does not exist yet)."""
    return Path(os.path.realpath(Path(path).expanduser()))


#: options naming a model source or an SAE, whose words ("bundled", a hub repo id) are inputs too
_SOURCE_OPTIONS = ("source", "sae", "ceiling_sae", "run", "init_from")


def _named_inputs(name: str, value) -> list[Path]:
    """What a --source / --sae word names on this machine: ``bundled`` the
    package's zoo, a hub repo id (default: the published models) its cache."""
    from culture import sources

    if name == "source" and value is None:
        value = sources.DEFAULT_SOURCE
    if not isinstance(value, str) or not value.strip() or Path(value).expanduser().exists():
        return []
    word = value.strip()
    if word == sources.BUNDLED:
        return [sources.ZOO_DIR]
    repo = word.split("@", 1)[0].strip("/").split("/")
    if len(repo) >= 2 and all(repo[:2]):
        return [sources.hub_cache_dir() / ("models--" + "--".join(repo[:2]))]
    return []


def command_inputs(command, values: dict) -> list[tuple[str, Path]]:
    """The inputs of a command about to run, as ``(option, resolved path)``:
    every existing path among its non-output options (checkpoints, source
    folders, SAE folders, quiz files, datasets, runs), what ``--source`` /
    ``--sae`` words name (the installed zoo for ``bundled``, the hub cache of
    a repo id), and what a command declares with :func:`declare_inputs`
    (the checkpoints of an interrupted ``sae train``)."""
    flags = {p.name: max(p.opts, key=len) for p in command.params if getattr(p, "opts", None)}
    output_names = {name for name, _, _ in output_options(command)}
    found: list[tuple[str, Path]] = []
    for name, value in values.items():
        if name in output_names:
            continue
        flag = flags.get(name, name)
        for p in _paths_in(value):
            found.append((f"{flag} {p}", _real(p)))
        if name in _SOURCE_OPTIONS:
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                for p in _named_inputs(name, v):
                    found.append((f"{flag} {v if v is not None else '(default)'} ({p})", _real(p)))
    body = getattr(command, "culture_body", None) or command.callback
    declared = getattr(getattr(body, "__wrapped__", body), "culture_inputs", None)
    if declared is not None:
        for label, p in declared(values):
            found.append((label, _real(p)))
    return found


def declare_inputs(function):
    """Decorator factory for a command function: ``function(values)`` returns
    more ``(label, path)`` inputs of the command (paths it reads or must not
    lose that no option names), checked like the others."""
    def mark(command_function):
        command_function.culture_inputs = function
        return command_function

    return mark


def check_apart(outputs: list[tuple[str, Path]], inputs: list[tuple[str, Path]]) -> None:
    """Refuse (one error line) an output that is, contains or lies inside an
    input -- both given as ``(label, path)``, paths with links resolved: a
    command never writes over, into or around what it reads."""
    for out_label, out in outputs:
        for in_label, src in inputs:
            if out == src:
                why = "would overwrite"
            elif src.is_relative_to(out):
                why = "contains"
            elif out.is_relative_to(src):
                why = "lies inside"
            else:
                continue
            fail(f"{out_label} {why} the input {in_label} (a command never writes over, into or around "
                 "what it reads); write the output elsewhere")


def _installed_package_dir() -> Path | None:
    """The site-packages folder the ``culture`` package is installed in (None
    for a source checkout, whose zoo a maintainer refreshes in place)."""
    import culture

    package = Path(culture.__file__).resolve().parent.parent
    return package if package.name in ("site-packages", "dist-packages") else None


#: the largest integer an option may take (torch and numpy take 64-bit integers)
MAX_INT = 2**63 - 1


def check_numbers(command, values: dict) -> None:
    """Refuse, for every command alike, numbers no option can mean: a float
    option that is NaN or infinite, an integer beyond 64 bits."""
    flags = {p.name: max(p.opts, key=len) for p in command.params if getattr(p, "opts", None)}
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                fail(f"{flags.get(name, name)} must be a finite number, got {v}")
            if isinstance(v, int) and abs(v) > MAX_INT:
                fail(f"{flags.get(name, name)}: {v} is too large (at most {MAX_INT:,})")


def check_model_ids_once(command, values: dict) -> None:
    """``--models 0 0``: refused for every command alike (a model is named once)."""
    for param in command.params:
        if "--models" not in (getattr(param, "opts", None) or ()):
            continue
        refuse_repeats("--models", id_parts(values.get(param.name)))


def check_outputs(command, values: dict) -> None:
    """Check the output options (:func:`output_options`) of a click command
    against the values it is called with: one error line (exit 2) for the
    first bad one -- a path that cannot be written, two outputs on one path,
    an output that is, contains or lies inside an input of the command
    (:func:`command_inputs`, :func:`check_apart`), ``-`` for anything but
    ``--json``. Run by ``culture_cli.main`` before every command."""
    from culture.io import check_output

    outputs = output_options(command)
    if not outputs:
        return
    overwrite = values.get("overwrite")
    overwrite = overwrite if isinstance(overwrite, bool) else None
    seen: dict[Path, str] = {}
    checked: list[tuple[str, Path]] = []
    for name, flag, kind in outputs:
        value = values.get(name)
        if value is None:
            continue
        if is_stdout(value):
            if flag != "--json":
                fail(f"{flag} -: '-' (standard output) is for --json only; give a "
                     f"{'file' if kind == 'file' else 'folder'} name")
            continue
        path = check_output(value, kind, overwrite=overwrite, what=flag)
        key = _real(path)
        package = _installed_package_dir()
        if package is not None and key.is_relative_to(package) and not values.get("force"):
            fail(f"{flag} {value} is inside {package}, where the culture-interp package is installed; "
                 "write elsewhere")
        if key in seen:
            fail(f"{flag} {value} and {seen[key]} are the same path; give each output its own")
        seen[key] = f"{flag} {value}"
        checked.append((f"{flag} {value}", key))
    if checked:
        check_apart(checked, command_inputs(command, values))


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
                                              help="Mix in the source's test c-quizzes (at most half); "
                                              "with --quizzes both only (world or culture decide alone).")]
NoiseOption = Annotated[float, typer.Option("--noise", help="Prompt noise (structures 1 and 2).")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Quizzes per forward pass.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")]
JsonOption = Annotated[OptionalOutputFile, typer.Option("--json", help="Write the numbers to this JSON file.",
                                                       show_default=False)]
def one_of(*values: str) -> str:
    """The help's placeholder of an option with a fixed set of values: ``[a|b|c]``."""
    return "[" + "|".join(values) + "]"


QuizKindsOption = Annotated[str, typer.Option(
    "--quizzes",  # the values are in the help: a [world|culture|both] placeholder would crop option names
    help="Which quizzes: world, culture (the source's test c-quizzes) or both (the reference mix). "
    "world and culture decide alone (--c-quizzes is then ignored); with both, --no-c-quizzes leaves world only.")]


def phase_progress(bar: Progress):
    """A ``(phase, done, total)`` callback for the library's progress hooks:
    one bar per phase on ``bar`` (a :func:`progress` display)."""
    ids: dict[str, int] = {}

    def report(phase: str, done: int, total: int) -> None:
        if phase not in ids:
            ids[phase] = bar.add_task(phase, total=total)
        bar.update(ids[phase], completed=done, total=total)

    return report
