"""Loading SAEs (SAELens format: ``cfg.json`` + ``sae_weights.safetensors``).

    >>> sae = load_sae("runs/sae-gpt0")                                   # a directory
    >>> sae = load_sae("tommyp111/culture-sae", "gpt-0/blocks_8_mlp_out")  # a hub repo
    >>> sae = load_sae("tommyp111/culture-sae/gpt-0/blocks_8_mlp_out")     # the same
    >>> sae = load_sae("bundled", "gpt-1")                                # model 1's bundled SAE

The bundled zoo's SAEs live in ``culture/zoo/sae/gpt-K/<hook>/`` (model K)
and ``culture/zoo/sae/gpt-K-seedS/<hook>/`` (a further SAE of model K trained
with seed S): :func:`bundled_saes` lists them.

Hub repos go through :func:`culture.sources.resolve_source`, like the models:
the files are fetched with huggingface_hub into its cache (offline: only what
is cached), and every failure is one readable :class:`CultureError` line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from culture.errors import first_sentence
from culture.hooks import sae_hook_name
from culture.sae.common import (
    BUNDLED_SAE_FOLDER,
    CFG_FILE,
    DEFAULT_SAE_REPO,
    DEFAULT_SAE_SUBFOLDER,
    WEIGHTS_FILE,
    SAEError,
    activation_size,
    check_hook,
)


def _sae_dirs_under(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(CFG_FILE) if (p.parent / WEIGHTS_FILE).is_file())


def _local_dir(path: Path, subfolder: str | None) -> Path:
    if path.is_file():
        if path.name not in (CFG_FILE, WEIGHTS_FILE):
            raise SAEError(f"{path} is not an SAE directory (expected a folder with {CFG_FILE} and {WEIGHTS_FILE})")
        path = path.parent
    d = path / subfolder if subfolder else path
    if not d.is_dir():
        raise SAEError(f"SAE directory not found: {d}")
    if (d / CFG_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
        return d
    found = _sae_dirs_under(d)
    if len(found) == 1:
        return found[0]
    if not found:
        missing = [f for f in (CFG_FILE, WEIGHTS_FILE) if not (d / f).is_file()]
        raise SAEError(f"{d} is not an SAE directory ({' and '.join(missing)} missing)")
    names = ", ".join(p.relative_to(d).as_posix() for p in found[:5])
    raise SAEError(f"{d} holds several SAEs ({names}{', ...' if len(found) > 5 else ''}): choose one "
                   "with a subfolder")


def _split_repo(spec: str, subfolder: str | None) -> tuple[str, str | None]:
    parts = [p for p in spec.strip().split("/") if p]
    if len(parts) < 2:
        raise SAEError(f"SAE not found: {spec!r} is neither a directory nor a hub repo id (owner/name)")
    repo = "/".join(parts[:2])
    rest = "/".join(parts[2:]) or None
    if rest and subfolder:
        rest = f"{rest}/{subfolder}"
    return repo, rest or subfolder


def _source_folder(repo: str, subfolder: str | None) -> Path:
    """The local folder (hub cache snapshot) holding cfg.json and the weights."""
    from culture.sources import SourceError

    try:
        return _source_folder_unchecked(repo, subfolder)
    except SourceError as exc:
        text = str(exc)
        if "not in the Hugging Face cache" not in text:
            raise
        why = "HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE is set" in text else "the Hub cannot be reached"
        what = f"{repo}/{subfolder}" if subfolder else repo
        raise SAEError(f"SAE {what} is not in the Hugging Face cache and {why}: give a local SAE directory "
                       "(cfg.json + sae_weights.safetensors), or connect to the network") from None


def _source_folder_unchecked(repo: str, subfolder: str | None) -> Path:
    from culture.sources import resolve_source

    src = resolve_source(repo)
    if subfolder is None:
        if src.has_file(CFG_FILE):
            subfolder = ""
        elif repo == DEFAULT_SAE_REPO:
            subfolder = DEFAULT_SAE_SUBFOLDER
        else:
            listing = getattr(src, "_list_files", None)
            names = [n for n in (listing() if listing else []) if PurePosixPath(n).name == CFG_FILE]
            if len(names) != 1:
                what = ", ".join(str(PurePosixPath(n).parent) for n in names[:5]) or "none"
                raise SAEError(f"{repo}: give the SAE's folder (SAE folders there: {what})")
            subfolder = str(PurePosixPath(names[0]).parent)
    sub = subfolder.strip("/")
    prefix = f"{sub}/" if sub else ""
    cfg = src.file(prefix + CFG_FILE)
    weights = src.file(prefix + WEIGHTS_FILE)
    if cfg.parent.resolve() != weights.parent.resolve():  # pragma: no cover - sources keep folders
        raise SAEError(f"{repo}: {CFG_FILE} and {WEIGHTS_FILE} of {sub or '.'} are not in one folder")
    return cfg.parent


def load_sae(path_or_repo: str | os.PathLike = DEFAULT_SAE_REPO, subfolder: str | None = None,
             device: str = "cpu", dtype: str | None = None):
    """A SAELens ``SAE`` (eval mode) from a directory or a hub repo.

    ``path_or_repo``: ``"bundled"`` (the SAEs shipped in the bundled zoo's
    ``sae/`` folder), a directory with ``cfg.json`` + ``sae_weights.safetensors``
    (or a folder holding exactly one such directory), or a hub repo id
    ``owner/name`` optionally followed by the SAE's folder
    (``owner/name/gpt-0/blocks_8_mlp_out``). ``subfolder``: the SAE's folder
    inside the directory or repo; for :data:`DEFAULT_SAE_REPO` it defaults to
    ``gpt-0/blocks_8_mlp_out``. The path it came from is kept as
    ``sae.culture_path``; load warnings as ``sae.culture_warnings``.
    """
    from sae_lens import SAE

    spec = os.fspath(path_or_repo)
    local = Path(spec).expanduser()
    if spec == "bundled":  # the SAEs shipped with the bundled zoo
        from culture.sources import ZOO_DIR

        local = ZOO_DIR / BUNDLED_SAE_FOLDER
        if not local.is_dir():
            raise SAEError("the bundled zoo ships no SAE")
    if local.exists():
        folder = _local_dir(local, subfolder)
    elif (spec.startswith((".", "/", "~")) or os.path.isabs(spec) or "\\" in spec
          or Path(spec.split("/")[0]).expanduser().is_dir()):
        raise SAEError(f"SAE directory not found: {spec}")
    else:
        repo, sub = _split_repo(spec, subfolder)
        folder = _source_folder(repo, sub)

    warnings_out: list[str] = []
    try:
        raw = json.loads((folder / CFG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise SAEError(f"{folder / CFG_FILE}: not readable JSON ({exc})") from None
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-empty model_from_pretrained_kwargs"
            sae = SAE.load_from_disk(str(folder), device=str(device), dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - SAELens raises many kinds; one line
        line = first_sentence(exc)
        raise SAEError(f"cannot load the SAE in {folder}: {type(exc).__name__}: {line}") from None
    from culture.io import check_finite

    check_finite(dict(sae.state_dict()), str(folder / WEIGHTS_FILE), SAEError)
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm == "expected_average_only_in":
        factor = raw.get("norm_scaling_factor") or (raw.get("metadata") or {}).get("norm_scaling_factor")
        if factor:
            sae.fold_activation_norm_scaling_factor(float(factor))
        else:
            warnings_out.append("cfg.json says normalize_activations=expected_average_only_in but gives no "
                                "norm_scaling_factor: activations are fed unscaled")
    sae.eval()
    sae.culture_path = str(folder)
    sae.culture_warnings = warnings_out
    return sae


_BUNDLED_RE = re.compile(r"^gpt-(\d+)(?:-seed(\d+))?$")


@dataclass(frozen=True)
class BundledSAE:
    """One SAE shipped in the bundled zoo: ``sae/gpt-K/<hook>/`` for model K,
    ``sae/gpt-K-seedS/<hook>/`` for a further SAE of model K trained with seed S
    (the ceiling of feature universality: two SAEs of the same model)."""

    model: int
    seed: int | None  # None: the model's main SAE
    hook_folder: str  # e.g. blocks_2_mlp_out
    path: Path

    @property
    def folder(self) -> str:
        """The subfolder to give ``load_sae("bundled", folder)``."""
        return self.path.parent.name + "/" + self.hook_folder


def bundled_saes(root: Path | None = None) -> list[BundledSAE]:
    """Every SAE of the bundled zoo (``culture/zoo/sae``), main SAEs first, by model."""
    if root is None:
        from culture.sources import ZOO_DIR

        root = ZOO_DIR / BUNDLED_SAE_FOLDER
    out = []
    if not root.is_dir():
        return out
    for model_dir in root.iterdir():
        m = _BUNDLED_RE.match(model_dir.name)
        if not m or not model_dir.is_dir():
            continue
        for d in _sae_dirs_under(model_dir):
            rel = d.relative_to(model_dir).as_posix()
            out.append(BundledSAE(int(m.group(1)), None if m.group(2) is None else int(m.group(2)), rel, d))
    out.sort(key=lambda b: (b.seed is not None, b.model, b.seed or 0, b.hook_folder))
    return out


def bundled_sae_folder(model: int, *, extra: bool = False, hook_folder: str | None = None) -> str:
    """The bundled subfolder of model ``model``'s main SAE (``extra``: of its
    further SAE, another seed), for ``load_sae("bundled", ...)``; one SAEError
    line naming what the zoo has when there is none."""
    found = [b for b in bundled_saes() if b.model == model and (b.seed is not None) == extra
             and (hook_folder is None or b.hook_folder == hook_folder)]
    if not found:
        have = ", ".join(b.folder for b in bundled_saes()) or "none"
        what = "second SAE (another seed)" if extra else "SAE"
        raise SAEError(f"the bundled zoo ships no {what} of model {model} (bundled SAEs: {have})")
    return found[0].folder


def check_sae_for_model(sae, hooked) -> str:
    """The SAE's hook name after checking that the model has that hook point and
    that its width matches the SAE's d_in (one-line SAEError otherwise)."""
    name = sae_hook_name(sae)
    if name is None:
        raise SAEError("the SAE's cfg.json names no hook point (metadata.hook_name)")
    hook = check_hook(hooked, name)
    head = getattr(sae.cfg.metadata, "hook_head_index", None)
    width = activation_size(hooked, hook, head)
    if width != sae.cfg.d_in:
        raise SAEError(f"the SAE reads {sae.cfg.d_in} values at {hook} but the model has {width} there "
                       "(an SAE of another model?)")
    return hook
