"""Fixtures that build fake model sources (for any test that needs models).

* :func:`make_local_source` - a culture result directory: gpt_000.pth... in the
  reference format (random weights, known accuracies) and c_quizzes.pth.
* :func:`make_offline_hub_cache` - a Hugging Face cache folder with the exact
  layout huggingface_hub writes (models--owner--name/{blobs,snapshots/<sha>,refs/main});
  returns the environment settings that point huggingface_hub at it, offline.
* :func:`use_hub_env` - applies those settings with a pytest monkeypatch, also
  to ``huggingface_hub.constants`` (which reads the environment at import time).
* :func:`make_zoo` - a bundled zoo folder (monkeypatch ``culture.sources.ZOO_DIR``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from tests.reference_forward import random_reference_state, write_reference_checkpoint

#: tiny shapes (dim_model, dim_keys, dim_hidden, nb_heads, nb_blocks)
TINY = (32, 32, 32, 2, 2)
TINY_4M_LIKE = (64, 8, 96, 4, 2)  # dim_keys != dim_model // nb_heads


def random_quizzes(n: int, seed: int = 0) -> torch.Tensor:
    """n valid quizzes (canonical structure, random cells)."""
    from culture.quiz import grids_to_quizzes

    g = torch.Generator().manual_seed(seed)
    return grids_to_quizzes(torch.randint(0, 11, (n, 4, 10, 10), generator=g))


def accuracy_of(k: int) -> float:
    """The accuracy :func:`make_local_source` writes into gpt_{k:03d}.pth."""
    return 0.5 + 0.125 * k


def make_local_source(tmp_path, shapes=TINY, n_models: int | None = None, with_c_quizzes: bool = True,
                      name: str = "result") -> Path:
    """A directory tmp_path/name with gpt_000.pth... (reference format).

    ``shapes`` is one shape tuple for every model (``n_models`` of them, default
    2) or a list of tuples, one per model. Model k has seed k and accuracy
    :func:`accuracy_of` (k). c_quizzes.pth holds (train [3 + 2 quizzes], test [2]).
    """
    root = Path(tmp_path) / name
    root.mkdir(parents=True, exist_ok=True)
    if shapes and isinstance(shapes[0], int):
        shapes = [tuple(shapes)] * (2 if n_models is None else n_models)
    elif n_models is not None:
        shapes = list(shapes)[:n_models]
    for k, shape in enumerate(shapes):
        write_reference_checkpoint(root / f"gpt_{k:03d}.pth", random_reference_state(*shape, seed=k),
                                   accuracy=accuracy_of(k))
    if with_c_quizzes:
        q = random_quizzes(7, seed=123)
        torch.save(([q[:3], q[3:5]], [q[5:]]), root / "c_quizzes.pth")
    return root


def make_zoo(tmp_path, shapes=TINY, n_models: int = 2, with_c_quizzes: bool = False) -> Path:
    """A bundled-zoo folder (with a MODEL_CARD.md)."""
    root = make_local_source(tmp_path, shapes, n_models, with_c_quizzes, name="zoo")
    (root / "MODEL_CARD.md").write_text("# test zoo\n")
    return root


def make_offline_hub_cache(tmp_path, repo_id: str, files: dict, commit: str | None = None,
                           symlinks: bool = True) -> dict[str, str]:
    """Build a huggingface_hub cache under tmp_path/hf_home/hub holding ``files``
    ({name in repo: source path or bytes}) for ``repo_id`` at branch main.

    Layout (as huggingface_hub writes it): ``models--owner--name/blobs/<hash>``,
    ``snapshots/<commit>/<name>`` (relative symlink to the blob, or a copy when
    ``symlinks`` is False, as on Windows), ``refs/main`` = commit. Returns the
    environment: HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE=1.
    """
    home = Path(tmp_path) / "hf_home"
    cache = home / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / digest
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if symlinks:
            os.symlink(os.path.relpath(blob, target.parent), target)
        else:
            shutil.copyfile(blob, target)
    (repo / "refs" / "main").write_text(commit)
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def use_hub_env(monkeypatch, env: dict[str, str]) -> None:
    """Apply hub settings to os.environ and to huggingface_hub.constants."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    try:
        import huggingface_hub.constants as constants
    except ImportError:  # pragma: no cover
        return
    if "HF_HUB_CACHE" in env:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    if "HF_HOME" in env:
        monkeypatch.setattr(constants, "HF_HOME", env["HF_HOME"])
    if "HF_HUB_OFFLINE" in env:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", env["HF_HUB_OFFLINE"].lower() in {"1", "true", "yes", "on"})


def hub_files_from_dir(root: Path) -> dict[str, Path]:
    """{relative name: path} of every file under root (to mirror a local source into a hub cache)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
