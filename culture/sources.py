"""Where models come from: a Hugging Face repo, a local result directory, or the
package's bundled zoo.

A *source* holds reference checkpoints ``gpt_000.pth``, ``gpt_001.pth``... (each
``torch.save((state_dict, accuracy))``), optionally ``c_quizzes.pth``, and any
other file (SAEs: ``gpt-0/blocks_8_mlp_out/cfg.json``...). Three kinds:

* ``"hub"``: a Hugging Face repo id ``owner/name`` (optionally ``owner/name@revision``),
  default :data:`DEFAULT_SOURCE`. Files go through huggingface_hub and its cache;
  with ``HF_HUB_OFFLINE=1`` only what is cached is used.
* ``"local"``: a directory (a culture result directory, or a copy of the repo).
* ``"bundled"``: the small models shipped in ``culture/zoo/``.

    >>> src = resolve_source("bundled")
    >>> src.model_ids()
    [0, 1, 2, 3]
    >>> models = load_culture([0, 1], source=src)

Every failure (unknown id, missing directory, offline cache miss, network down,
private repo...) raises :class:`SourceError`, a :class:`CultureError` whose
message is one readable line. huggingface_hub is imported only for hub sources.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from culture.errors import CultureError
from culture.hub import hub_offline

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from culture.mygpt import MyGPT

#: The published models (four 37M GPTs and their c-quizzes).
DEFAULT_SOURCE = "tommyp111/culture-gpt"

#: Folder of the bundled models (read at call time, so tests can monkeypatch it).
ZOO_DIR = Path(__file__).resolve().parent / "zoo"

BUNDLED = "bundled"
C_QUIZZES_FILE = "c_quizzes.pth"
_CHECKPOINT_RE = re.compile(r"^gpt_(\d{3,})\.pth$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_ALTERNATIVES = ("use --source bundled (the small models shipped with the package), "
                 "or --source DIR (a local directory with gpt_000.pth...)")


class SourceError(CultureError):
    """A model source cannot provide what was asked (one-line message)."""


def checkpoint_name(k: int) -> str:
    """File name of model ``k`` in a source: ``gpt_000.pth``."""
    return f"gpt_{int(k):03d}.pth"


def _ids_from_names(names) -> list[int]:
    ids = set()
    for name in names:
        m = _CHECKPOINT_RE.match(str(name))  # top-level files only ("a/gpt_000.pth" does not match)
        if m:
            ids.add(int(m.group(1)))
    return sorted(ids)


def _check_relative(name: str) -> str:
    """A file name inside a source: relative, no '..'."""
    p = PurePosixPath(str(name).replace(os.sep, "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise SourceError(f"invalid file name {name!r} in a model source (relative path without '..' expected)")
    return p.as_posix()


# ------------------------------------------------------------------ the sources


class ModelSource:
    """Base class: a place holding ``gpt_XXX.pth`` checkpoints and other files."""

    kind: str = ""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # subclasses implement these two
    def _list_files(self) -> list[str]:
        raise NotImplementedError

    def file(self, name: str) -> Path:
        """Local path of file ``name`` (relative, '/'-separated) of this source;
        downloads it for a hub source. Missing -> SourceError."""
        raise NotImplementedError

    def has_file(self, name: str) -> bool:
        return _check_relative(name) in set(self._list_files())

    def model_ids(self) -> list[int]:
        """Sorted ids k of the checkpoints gpt_{k:03d}.pth the source holds."""
        return _ids_from_names(self._list_files())

    def _describe_ids(self) -> str:
        ids = self.model_ids()
        return ", ".join(map(str, ids)) if ids else "none"

    def check_model_id(self, k) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise SourceError(f"model id must be an integer, got {k!r}") from None
        ids = self.model_ids()
        if k not in ids:
            raise SourceError(f"model {k} is not in source {self.name} (models there: {self._describe_ids()})")
        return k

    def checkpoint_path(self, k: int) -> Path:
        """Local path of gpt_{k:03d}.pth; unknown id -> SourceError listing the ids."""
        k = self.check_model_id(k)
        return self.file(checkpoint_name(k))

    def c_quizzes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(train, test) c-quizzes (k, 404), or None when the source has none."""
        if not self.has_file(C_QUIZZES_FILE):
            return None
        from culture.quizfile import load_c_quizzes

        return load_c_quizzes(self.file(C_QUIZZES_FILE))

    def default_tasks(self) -> list[str] | None:
        """The world tasks the source's models were trained on, when it says
        (``zoo.json`` of the bundled zoo, ``train_config.json`` of a
        ``culture-interp train`` run); None for the published models."""
        import json

        for name, path in (("zoo.json", ("run_config", "tasks")), ("train_config.json", ("tasks",))):
            if not self.has_file(name):
                continue
            try:
                value = json.loads(self.file(name).read_text())
                for key in path:
                    value = value[key]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if value:
                return list(value)
        return None

    def load_model(self, k: int, device="cpu") -> tuple[MyGPT, float | None]:
        """(MyGPT in eval mode, main_test_accuracy) for model k."""
        from culture.mygpt import load_mygpt

        return load_mygpt(self.checkpoint_path(k), device=device)


class LocalSource(ModelSource):
    """A directory with gpt_XXX.pth files (a culture result directory)."""

    kind = "local"

    def __init__(self, root: str | os.PathLike, name: str | None = None):
        self.root = Path(root).expanduser()
        super().__init__(name or str(root))

    def _list_files(self) -> list[str]:
        if not self.root.is_dir():
            raise SourceError(f"model directory not found: {self.root}")
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            for f in files:
                out.append((rel / f).as_posix())
        return sorted(out)

    def model_ids(self) -> list[int]:
        if not self.root.is_dir():
            raise SourceError(f"model directory not found: {self.root}")
        return _ids_from_names(p.name for p in self.root.iterdir() if p.is_file())

    def has_file(self, name: str) -> bool:
        return (self.root / _check_relative(name)).is_file()

    def file(self, name: str) -> Path:
        path = self.root / _check_relative(name)
        if not path.is_file():
            if not self.root.is_dir():
                raise SourceError(f"model directory not found: {self.root}")
            raise SourceError(f"{name} not found in {self.name}")
        return path


class BundledSource(LocalSource):
    """The small models shipped with the package in culture/zoo/."""

    kind = "bundled"

    def __init__(self, root: str | os.PathLike | None = None):
        super().__init__(ZOO_DIR if root is None else root, name=BUNDLED)

    def model_ids(self) -> list[int]:
        ids = _ids_from_names(p.name for p in self.root.iterdir() if p.is_file()) if self.root.is_dir() else []
        if not ids:
            raise SourceError(
                f"the bundled model zoo is empty ({self.root} has no gpt_000.pth...): "
                f"use --source {DEFAULT_SOURCE} (Hugging Face) or --source DIR (a local directory)"
            )
        return ids

    def _list_files(self) -> list[str]:
        return super()._list_files() if self.root.is_dir() else []

    def file(self, name: str) -> Path:
        path = self.root / _check_relative(name)
        if not path.is_file():
            raise SourceError(f"{name} not found in the bundled zoo ({self.root})")
        return path

    @property
    def model_card(self) -> Path | None:
        p = self.root / "MODEL_CARD.md"
        return p if p.is_file() else None


def hub_cache_dir() -> Path:
    """The hub cache folder, from the environment read now: HF_HUB_CACHE,
    HUGGINGFACE_HUB_CACHE, HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"]))) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _first_line(exc: BaseException) -> str:
    from culture.errors import first_sentence

    return first_sentence(exc)


def _is_network_error(exc: BaseException) -> bool:
    """True for connection problems (DNS, refused, timeout, offline mode)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError",
                         "TransportError", "ProxyError", "ReadTimeout", "OfflineModeIsEnabled",
                         "ConnectionError", "RequestError"})


class HubSource(ModelSource):
    """A Hugging Face model repo, through huggingface_hub and its cache.

    Online: the repo's file list comes from the Hub and files are downloaded
    into the cache. Offline (HF_HUB_OFFLINE=1, read when the source is made) or
    when the Hub cannot be reached: the cached snapshot is used; a file that
    is not cached raises one SourceError naming the alternatives.
    """

    kind = "hub"

    def __init__(self, repo_id: str, revision: str | None = None, *,
                 cache_dir: str | os.PathLike | None = None, offline: bool | None = None):
        super().__init__(repo_id if revision is None else f"{repo_id}@{revision}")
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
        self.offline = hub_offline() if offline is None else bool(offline)
        self._unreachable: str | None = None  # why the Hub could not be reached
        self._files: list[str] | None = None

    # ------------------------------------------------------------ cache layout

    @property
    def repo_cache(self) -> Path:
        return self.cache_dir / ("models--" + self.repo_id.replace("/", "--"))

    def _cached_snapshot(self) -> Path | None:
        """The cached snapshot folder of the revision (refs/<rev> -> sha), if any."""
        snaps = self.repo_cache / "snapshots"
        if not snaps.is_dir():
            return None
        rev = self.revision or "main"
        ref = self.repo_cache / "refs" / rev
        if ref.is_file():
            sha = ref.read_text().strip()
            if (snaps / sha).is_dir():
                return snaps / sha
        if (snaps / rev).is_dir():  # revision given as a commit hash
            return snaps / rev
        if self.revision is None:  # no ref recorded: the newest snapshot
            dirs = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            if dirs:
                return dirs[-1]
        return None

    def _cached_files(self) -> list[str]:
        snap = self._cached_snapshot()
        if snap is None:
            return []
        out = []
        for dirpath, _dirs, files in os.walk(snap):
            rel = Path(dirpath).relative_to(snap)
            for f in files:
                if (Path(dirpath) / f).exists():  # skip dangling symlinks
                    out.append((rel / f).as_posix())
        return sorted(out)

    def check_model_id(self, k) -> int:
        try:
            return super().check_model_id(k)
        except SourceError:
            if not self._local_only():
                raise
            raise SourceError(self._not_cached(f"model {k} of {self.name} (cached models: "
                                               f"{self._describe_ids()})")) from None

    def _local_only(self) -> bool:
        return self.offline or self._unreachable is not None

    def _not_cached(self, subject: str) -> str:
        """One line: ``subject`` is not cached, why the Hub was not asked, what to do."""
        if self.offline:
            why, fix = "HF_HUB_OFFLINE is set", "or unset HF_HUB_OFFLINE and connect to the network"
        else:
            why, fix = f"the Hub cannot be reached ({self._unreachable})", "or connect to the network"
        return f"{subject} is not in the Hugging Face cache ({self.cache_dir}) and {why}: {_ALTERNATIVES}, {fix}"

    # ------------------------------------------------------------- hub access

    def _list_files(self) -> list[str]:
        if self._files is not None:
            return self._files
        if not self._local_only():
            try:
                self._files = sorted(self._remote_files())
                return self._files
            except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
                if not _is_network_error(exc):
                    raise self._hub_error(exc, what="list files") from None
                self._unreachable = _first_line(exc)
        files = self._cached_files()
        if not files:
            raise SourceError(self._not_cached(f"model source {self.name}"))
        self._files = files
        return files

    def _remote_files(self) -> list[str]:
        """The repo's file list from the Hub. ``model_info`` is one request that
        fails at once when the network is down (``list_repo_files`` retries
        for ~25 s, logging each retry)."""
        import huggingface_hub
        from huggingface_hub import constants

        # a timeout, so that a network that drops packets fails in seconds, not never
        info = huggingface_hub.model_info(self.repo_id, revision=self.revision,
                                          timeout=max(float(constants.HF_HUB_ETAG_TIMEOUT), 10.0))
        siblings = getattr(info, "siblings", None)
        if siblings is None:
            return list(huggingface_hub.list_repo_files(self.repo_id, revision=self.revision))
        return [s.rfilename for s in siblings]

    def _hub_error(self, exc: BaseException, what: str, filename: str | None = None) -> SourceError:
        names = {c.__name__ for c in type(exc).__mro__}
        target = f"{filename} from {self.name}" if filename else self.name
        if "GatedRepoError" in names:
            return SourceError(f"cannot {what} {target}: the repo is gated; accept its terms on the Hub "
                               "and log in (hf auth login or HF_TOKEN)")
        if "RepositoryNotFoundError" in names:
            return SourceError(f"cannot {what} {target}: repository {self.repo_id} not found on the Hugging Face "
                               "Hub (or private: log in with hf auth login or set HF_TOKEN); "
                               f"a local directory of that name does not exist either")
        if "RevisionNotFoundError" in names:
            return SourceError(f"cannot {what} {target}: revision {self.revision!r} not found")
        if "LocalEntryNotFoundError" in names or _is_network_error(exc):
            if not self.offline and self._unreachable is None:
                self._unreachable = "network error"
            return SourceError(self._not_cached(target))
        if "EntryNotFoundError" in names:
            return SourceError(f"cannot {what} {target}: no such file in the repository")
        return SourceError(f"cannot {what} {target}: {type(exc).__name__}: {_first_line(exc)}")

    def file(self, name: str) -> Path:
        name = _check_relative(name)
        if self._local_only():
            snap = self._cached_snapshot()
            if snap is not None and (snap / name).exists():
                return snap / name
            raise SourceError(self._not_cached(f"{name} of {self.name}"))
        try:
            import huggingface_hub

            return Path(huggingface_hub.hf_hub_download(self.repo_id, name, revision=self.revision,
                                                        cache_dir=str(self.cache_dir)))
        except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
            raise self._hub_error(exc, what="download", filename=name) from None


# ----------------------------------------------------------------- resolution


def resolve_source(source: str | os.PathLike | ModelSource = DEFAULT_SOURCE) -> ModelSource:
    """A :class:`ModelSource` from ``"bundled"``, a directory, or a Hub repo id
    (``owner/name`` or ``owner/name@revision``; ``hf://owner/name`` also works).

    An existing directory always wins over a repo id of the same spelling.
    """
    if isinstance(source, ModelSource):
        return source
    if source is None:
        source = DEFAULT_SOURCE
    if isinstance(source, os.PathLike):
        path = Path(source)
        if not path.is_dir():
            raise SourceError(f"model directory not found: {path}")
        return LocalSource(path)
    text = str(source).strip()
    if not text:
        raise SourceError("empty model source (use bundled, a directory, or a Hugging Face repo id)")
    if text.lower() == BUNDLED:
        return BundledSource()
    if text.startswith("hf://"):
        text = text[len("hf://"):]
        repo, _, rev = text.partition("@")
        if not _REPO_ID_RE.match(repo):
            raise SourceError(f"not a Hugging Face repo id: {repo!r} (expected owner/name)")
        return HubSource(repo, rev or None)
    path = Path(text).expanduser()
    if path.is_dir():
        return LocalSource(path, name=text)
    if path.exists():
        raise SourceError(f"model source {text} is a file; give the directory that holds gpt_000.pth...")
    repo, _, rev = text.partition("@")
    if _REPO_ID_RE.match(repo) and not text.startswith((".", "/", "~")):
        return HubSource(repo, rev or None)
    raise SourceError(f"model source not found: {text} is neither a directory nor a Hugging Face repo id "
                      f"(owner/name); or use bundled")


# ----------------------------------------------------------------- loading


def as_model_ids(models) -> list[int]:
    """[k] for one id (int, numpy/torch integer scalar), the ids of a sequence,
    or those of a string "0 1,2"."""
    try:
        return [operator.index(models)]
    except TypeError:
        pass
    if isinstance(models, str):
        parts = [p for p in models.replace(",", " ").split() if p]
    else:
        try:
            parts = list(models)
        except TypeError:
            raise SourceError(f"models must be an id or a list of ids, got {models!r}") from None
    ids = []
    for p in parts:
        try:
            ids.append(int(p))
        except (TypeError, ValueError):
            raise SourceError(f"model id must be an integer, got {p!r}") from None
    if not ids:
        raise SourceError("no model id given")
    return ids


def load_model(k: int, source: str | os.PathLike | ModelSource = DEFAULT_SOURCE,
               device="cpu") -> tuple[MyGPT, float | None]:
    """(MyGPT in eval mode, the checkpoint's main_test_accuracy) for model ``k``."""
    return resolve_source(source).load_model(k, device=device)


def load_culture(models: int | Sequence[int] | None = None,
                 source: str | os.PathLike | ModelSource = DEFAULT_SOURCE,
                 device="cpu") -> list[MyGPT]:
    """The culture's models, always a list (one per id, in the order given), in
    eval mode. ``models=None`` loads every model of the source.

    ``load_culture(0)`` -> [model 0]; ``load_culture([0, 1], source="bundled")``.
    Each model's checkpoint accuracy is kept as ``model.accuracy`` and its id as
    ``model.model_id``.
    """
    src = resolve_source(source)
    ids = src.model_ids() if models is None else as_model_ids(models)
    for k in ids:  # every id checked before any loading
        src.check_model_id(k)
    out = []
    for k in ids:
        model, accuracy = src.load_model(k, device=device)
        model.accuracy = accuracy
        model.model_id = k
        out.append(model)
    return out


# ----------------------------------------------------------------- one analysis's start


@dataclass
class OpenSource:
    """The start every analysis shares, done once: ``device`` checked, the
    ``source`` resolved, the world ``tasks`` (given, else the ones the source's
    models were trained on, else the eight of the published models), and the
    model ``ids`` checked (every model of the source when none is given).
    Load with :meth:`load` (MyGPT) or :meth:`hooked` (TransformerLens)."""

    source: ModelSource
    device: "torch.device"
    tasks: tuple[str, ...]
    ids: list[int]

    def load(self, k: int) -> tuple[MyGPT, float | None]:
        """(MyGPT in eval mode on the device, its checkpoint accuracy)."""
        return self.source.load_model(k, device=self.device)

    def load_all(self) -> list[MyGPT]:
        """Every model of ``ids`` (:func:`load_culture`: ``.accuracy``, ``.model_id`` set)."""
        return load_culture(self.ids, self.source, device=self.device)

    def hooked(self, k: int, sae: bool = False):
        """Model ``k`` as a HookedTransformer (HookedSAETransformer with ``sae``) on the device."""
        from culture.hooked import load_hooked

        return load_hooked(k, self.source, sae=sae, device=str(self.device))


def open_source(source: str | os.PathLike | ModelSource | None = None, models=None, *, device="cpu",
                tasks=None, with_tasks: bool = True) -> OpenSource:
    """:class:`OpenSource` for ``source`` (None: :data:`DEFAULT_SOURCE`) and
    ``models`` (an id, ids, or None for all). Raises a one-line CultureError
    for a bad device, source, id or task before anything is loaded.
    ``with_tasks=False``: no world tasks are resolved (``tasks`` is empty), for
    analyses that choose their quizzes otherwise."""
    from culture.evaluation import check_device
    from culture.world import resolve_tasks

    dev = check_device(device)
    src = resolve_source(source)
    task_names = resolve_tasks(list(tasks) if tasks else src.default_tasks()) if with_tasks else ()
    ids = src.model_ids() if models is None else as_model_ids(models)
    for k in ids:  # every id checked before any loading
        src.check_model_id(k)
    return OpenSource(src, dev, tuple(task_names), ids)
