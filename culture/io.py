"""File helpers: outputs checked before the work, written whole, and one
convention for temporary files.

* :func:`check_output` -- refuse (one-line :class:`OutputError`) an output path
  that cannot be written: its parent is a file, a file is expected where a
  directory is (or the reverse), the folder is not writable, a folder to be
  replaced is not empty without ``overwrite``. Commands run it before any model
  is loaded (``culture_cli.main`` does it for every command's output options).
* :func:`atomic_path` / :func:`atomic_write_json` / :func:`atomic_torch_save` --
  one file written to a temporary name next to it and renamed into place.
* :func:`atomic_dir` -- a folder built in a staging folder next to it and
  renamed into place (:func:`replace_dir`).
* :class:`OutputSet` -- several outputs (files and folders) of one command,
  all staged, renamed into place only when every one was written: a command
  that fails half-way leaves none of them (nor the parent folders it made).

Temporary files and folders: every one is named
``.culture-tmp.<host>.<pid>.<start>.<random>.<name>`` and lives in the folder
of the output it becomes (a rename is atomic only within one file system). A
run killed with SIGKILL (or a power cut) cannot remove its own; any later run
on the same machine that writes into the same folder removes those whose
process is gone (:func:`clean_stale`: the pid is not running, or runs a newer
process).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from culture.errors import CultureError

#: prefix of every temporary file or folder culture-interp makes
TMP_PREFIX = ".culture-tmp."


class OutputError(CultureError):
    """An output path cannot be written (one-line message)."""


# ------------------------------------------------------------------ temporary names


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or
    "0" where /proc is not available: with the pid, it names a process
    uniquely, so a recycled pid is not mistaken for the run that made a file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return "0"


_SELF_START: dict[int, str] = {}


def host_tag() -> str:
    """8 hex digits naming this machine (container): a folder shared between
    machines only has its own machine's leftovers removed."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _own_tag() -> str:
    pid = os.getpid()
    if pid not in _SELF_START:  # after a fork the pid changes
        _SELF_START[pid] = _process_start(pid)
    return f"{host_tag()}.{pid}.{_SELF_START[pid]}"


def temp_name(name: str) -> str:
    """A fresh temporary name for an output called ``name`` (its first 100
    characters: the temporary name must fit where the real one fits)."""
    return f"{TMP_PREFIX}{_own_tag()}.{secrets.token_hex(4)}.{name[:100]}"


def _owner_alive(entry: str) -> bool:
    """Whether the process that made temporary entry ``entry`` still runs."""
    parts = entry[len(TMP_PREFIX):].split(".", 4)
    try:
        host, pid, start = parts[0], int(parts[1]), parts[2]
    except (IndexError, ValueError):
        return True  # not ours after all: leave it
    if host != host_tag():
        return True  # another machine's: its runs cannot be seen from here
    if pid == os.getpid():
        return start == _own_tag().split(".")[2]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # runs, as another user
    except OSError:
        return True
    return start == "0" or _process_start(pid) in (start, "0")


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` left by runs that
    no longer exist (killed, crashed); returns what was removed."""
    removed = []
    try:
        entries = [e for e in os.listdir(folder) if e.startswith(TMP_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        if _owner_alive(entry):
            continue
        path = Path(folder) / entry
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists."""
    p = Path(path).expanduser()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def make_parents(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; the folders it made, outermost first."""
    made = []
    p = folder
    while not p.exists():
        made.append(p)
        if p.parent == p:
            break
        p = p.parent
    made.reverse()
    for d in made:
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except NotADirectoryError:
            raise OutputError(f"cannot write into {folder}: {d.parent} is a file, not a directory") from None
    return made


def remove_empty(made: list[Path]) -> None:
    """Remove the folders ``make_parents`` made, innermost first, those still empty."""
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when still empty


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ checks


FILE, DIR, MERGE = "file", "dir", "merge"


def _writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else why not (tried for
    real: as root, permission bits say nothing about read-only mounts or /proc)."""
    probe = folder / temp_name("probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def check_output(path: str | os.PathLike, kind: str = FILE, *, overwrite: bool | None = None,
                 what: str | None = None) -> Path:
    """Raise :class:`OutputError` (one line, nothing written) when ``path``
    cannot receive the output; returns it as a Path.

    ``kind``: ``"file"`` (written whole), ``"dir"`` (a folder written whole:
    when it exists and is not empty it is replaced only with ``overwrite``;
    ``overwrite=None`` leaves that rule to the caller) or ``"merge"`` (a folder
    the files are added to). ``what`` names the output in messages (an option
    such as ``--json``)."""
    label = f"{what} {path}" if what else str(path)
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputError(f"{what or 'output path'}: empty path")
    p = Path(text).expanduser()
    if len(p.name.encode()) > 255:
        raise OutputError(f"{label}: file name longer than 255 bytes")
    if p.exists() or p.is_symlink():
        if kind == FILE:
            if p.is_dir():
                raise OutputError(f"{label} is a directory; give a file name")
            if not p.is_file():
                raise OutputError(f"{label} exists and is not a regular file")
        else:
            if not p.is_dir():
                raise OutputError(f"{label} exists and is not a directory")
            if kind == DIR and overwrite is False and any(p.iterdir()):
                raise OutputError(f"{label} exists and is not empty (use --overwrite to replace it)")
            if kind == DIR and overwrite is True and any(p.iterdir()):
                real = p.resolve()
                if real == Path(real.anchor) or real == Path.home().resolve() or Path.cwd().resolve().is_relative_to(real):
                    raise OutputError(f"{label} would be replaced whole, and it holds the current directory, the "
                                      "home directory or the whole file system: give a folder of its own")
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():
            raise OutputError(f"cannot write {label}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {label}: {parent} is a file, not a directory")
    why = _writable(parent)
    if why is not None:
        raise OutputError(f"cannot write {label}: cannot create files in {parent} ({why})")
    return p


# ------------------------------------------------------------------ single outputs


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the
    block succeeds, delete it when it fails (with the parent folders it had to
    make). A reader never sees half a file."""
    path = Path(path)
    made = make_parents(path.parent)
    clean_stale(path.parent)
    tmp = path.parent / temp_name(path.name + suffix)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        remove_empty(made)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj) -> str:
    """``obj`` as the JSON text culture-interp writes (strict: NaN as null)."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=False, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json_text(obj))


def _json_default(value):
    """numpy / torch scalars and paths in JSON output."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_safe(obj):
    """``obj`` with NaN / inf floats as None (strict JSON has no NaN)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def check_out_dir(out: Path, overwrite: bool, error: type[Exception]) -> None:
    """Raise ``error`` (one line) when ``out`` cannot receive a new folder:
    it is a file, or a non-empty directory and ``overwrite`` is off."""
    try:
        check_output(out, DIR, overwrite=overwrite)
    except OutputError as exc:
        raise error(str(exc)) from None


def _set_modes(root: Path) -> None:
    """The usual modes (mkdtemp makes 0700; some writers make 0600 files)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~mask)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the finished folder ``src`` onto ``dst`` (replacing an old one:
    moved aside under a temporary name, then removed)."""
    _set_modes(src)
    if dst.exists() or dst.is_symlink():
        old = dst.parent / temp_name(dst.name + ".old")
        os.replace(dst, old)
        os.replace(src, dst)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                old.unlink()
    else:
        os.replace(src, dst)


def _merge_dir(src: Path, dst: Path) -> None:
    """Move every entry of ``src`` into ``dst`` (same names replaced), then remove ``src``."""
    _set_modes(src)
    dst.mkdir(exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            replace_dir(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    shutil.rmtree(src, ignore_errors=True)


def _new_staging_dir(dst: Path) -> tuple[Path, list[Path]]:
    made = make_parents(dst.parent)
    clean_stale(dst.parent)
    tmp = dst.parent / temp_name(dst.name)
    try:
        tmp.mkdir()
    except BaseException:
        remove_empty(made)
        raise
    return tmp, made


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, merge: bool = False):
    """Yield a staging folder next to ``path``; when the block succeeds it
    becomes ``path`` (``merge``: its entries are moved into ``path``, others
    there kept), when it fails it is removed."""
    with OutputSet() as outputs:
        yield outputs.dir(path, merge=merge)


class OutputSet:
    """The outputs of one command, all-or-nothing::

        with OutputSet() as outputs:
            write_json(outputs.file("results.json"), data)
            draw(outputs.dir("figures/", merge=True))
        # here every output is in place -- or, after an exception, none is

    ``file(path)`` and ``dir(path)`` return staging paths next to the real
    ones; leaving the block renames them all into place (after the last one
    was written) or removes them all, with the parent folders they needed."""

    def __init__(self):
        self._staged: list[tuple[Path, Path, str]] = []  # (staging path, final path, file | dir | merge)
        self._made: list[Path] = []
        self.committed: list[Path] = []

    def file(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        self._made += make_parents(path.parent)
        clean_stale(path.parent)
        tmp = path.parent / temp_name(path.name)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        os.close(fd)
        self._staged.append((tmp, path, FILE))
        return tmp

    def dir(self, path: str | os.PathLike, *, merge: bool = False) -> Path:
        path = Path(path)
        tmp, made = _new_staging_dir(path)
        self._made += made
        self._staged.append((tmp, path, MERGE if merge else DIR))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, final, kind in self._staged:
            if kind == FILE:
                os.replace(tmp, final)
            elif kind == MERGE:
                _merge_dir(tmp, final)
            else:
                replace_dir(tmp, final)
            self.committed.append(final)
        self._staged = []
        return self.committed

    def rollback(self) -> None:
        for tmp, _final, _kind in self._staged:
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
        self._staged = []
        remove_empty(self._made)
        self._made = []

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.rollback()
                raise
        else:
            self.rollback()



# ------------------------------------------------------------------ tensor files


def load_tensors(path: str | os.PathLike, error: type[Exception] = CultureError, what: str = "tensor file"):
    """``torch.load(path, weights_only=True)`` with one-line errors (``error``):
    a missing or empty file, a folder, a plain pickle, a file holding code or
    objects beyond tensors (refused, never run), a corrupt archive. torch's
    warnings about the file are silenced (the error says what matters)."""
    import warnings

    import torch

    from culture.errors import first_sentence

    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a directory, not a {what}")
    if path.exists() and not path.is_file():
        raise error(f"{path} is not a regular file, not a {what}")
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file, not a {what}")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text or "Unsupported class" in text:
            raise error(f"{path}: refused, the file holds code or objects beyond tensors "
                        "(loaded with weights_only=True)") from None
        if head != b"PK\x03\x04":
            raise error(f"{path}: not a readable {what}: not written by torch.save (a plain pickle or another "
                        "format; only torch.save files of tensors are read)") from None
        detail = text.split("WeightsUnpickler error:")[-1]
        raise error(f"{path}: not a readable {what} ({first_sentence(detail)})") from None


def check_finite(tensors, where: str, error: type[Exception] = CultureError) -> None:
    """Refuse (``error``, one line naming the tensor) NaN or infinite values in
    the floating-point tensors of ``tensors`` ({name: tensor})."""
    import torch

    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise error(f"{where}: tensor {name} holds {bad:,} NaN or infinite value(s) of {value.numel():,}; "
                        "refusing broken weights")


# ------------------------------------------------------------------ the run's temporary folder


@contextlib.contextmanager
def run_temp_dir():
    """A temporary folder of this run for the block: ``tempfile`` (and so
    multiprocessing's ``pymp-*`` folders, SAELens's temporary folders) and
    child processes (``TMPDIR``) use it; it is removed at the end. It lives in
    ``<system temp>/culture-interp/`` under a :func:`temp_name`, so a run
    killed with SIGKILL leaves it to the next run, which removes the folders of
    runs that are gone (:func:`clean_stale`), as with the staging folders."""
    import tempfile

    previous_tempdir, previous_env = tempfile.tempdir, os.environ.get("TMPDIR")
    try:
        base = Path(tempfile.gettempdir()) / "culture-interp"
        base.mkdir(mode=0o700, exist_ok=True)
        clean_stale(base)
        folder = base / temp_name("run")
        folder.mkdir(mode=0o700)
    except OSError:  # no writable temp folder: leave tempfile as it is
        yield None
        return
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous_tempdir
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env
        if not _multiprocessing_uses(folder):
            shutil.rmtree(folder, ignore_errors=True)
        # else a process pool's server (forkserver) keeps its socket there for the
        # life of this process: multiprocessing removes its pymp-* folder at exit,
        # the next run removes the rest


def _multiprocessing_uses(folder: Path) -> bool:
    """Whether multiprocessing keeps its temporary folder (``pymp-*``) in ``folder``."""
    import sys

    if "multiprocessing" not in sys.modules:
        return False
    from multiprocessing import process

    cached = process.current_process()._config.get("tempdir")
    return cached is not None and Path(cached).is_relative_to(folder)
