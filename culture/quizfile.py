"""Reading and writing quiz tensor files safely.

Two formats are understood, both loaded with ``torch.load(weights_only=True)``:
- a tensor file: one LongTensor (n, 404) (or (404,)) saved with torch.save;
- ``c_quizzes.pth`` of the reference: ``(train_list, test_list)``, each a list of
  LongTensors (k, 404) in canonical structure.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from culture.errors import CultureError
from culture.io import atomic_torch_save
from culture.quiz import QUIZ_LEN, QuizFormatError, validate_quizzes

SPLITS = ("train", "test")


class QuizFileError(CultureError):
    """A quiz file is missing, unreadable or not made of quizzes."""


def _torch_load(path: Path):
    from culture.io import load_tensors

    if not path.exists():
        raise QuizFileError(f"file not found: {path}")
    return load_tensors(path, QuizFileError, "tensor file")


def _cat(parts, path: Path, what: str) -> torch.Tensor:
    if isinstance(parts, torch.Tensor):
        parts = [parts]
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in parts):
        raise QuizFileError(f"{path}: {what} is not a list of tensors")
    parts = [p.reshape(-1, QUIZ_LEN) if p.numel() % QUIZ_LEN == 0 and p.dim() == 1 else p for p in parts]
    if not parts:
        return torch.empty(0, QUIZ_LEN, dtype=torch.long)
    try:
        return validate_quizzes(torch.cat([p.long() for p in parts]) if len(parts) > 1 else parts[0],
                                what=f"{path.name} ({what})")
    except QuizFormatError as exc:
        raise QuizFileError(str(exc)) from None
    except RuntimeError:
        raise QuizFileError(f"{path}: {what} holds tensors of different shapes") from None


def load_c_quizzes(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) quizzes (k, 404) from a reference ``c_quizzes.pth``."""
    path = Path(path)
    obj = _torch_load(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise QuizFileError(f"{path}: expected (train_list, test_list) as in c_quizzes.pth")
    return _cat(obj[0], path, "train"), _cat(obj[1], path, "test")


def load_quizzes(path: str | os.PathLike, split: str | None = None) -> torch.Tensor:
    """Quizzes (n, 404) from a tensor file or, with ``split``, a c_quizzes file.

    A c_quizzes file without ``split`` gives train and test concatenated.
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, torch.Tensor):
        if split is not None:
            raise QuizFileError(f"{path}: a plain tensor file has no {split!r} split")
        try:
            return validate_quizzes(obj, what=path.name)
        except QuizFormatError as exc:
            raise QuizFileError(str(exc)) from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        train, test = _cat(obj[0], path, "train"), _cat(obj[1], path, "test")
        if split is None:
            return torch.cat([train, test])
        if split not in SPLITS:
            raise QuizFileError(f"unknown split {split!r} (choose train or test)")
        return train if split == "train" else test
    if isinstance(obj, dict) and "quizzes" in obj:
        return load_quizzes_from_obj(obj["quizzes"], path)
    raise QuizFileError(f"{path}: expected a (n, 404) tensor or (train_list, test_list)")


def load_quizzes_from_obj(obj, path: Path) -> torch.Tensor:
    return _cat(obj, path, "quizzes")


def save_c_quizzes(path: str | os.PathLike, train: list[torch.Tensor] | torch.Tensor,
                   test: list[torch.Tensor] | torch.Tensor) -> None:
    """Write (train_list, test_list) in the reference format, atomically."""
    as_list = lambda x: [x] if isinstance(x, torch.Tensor) else list(x)  # noqa: E731
    atomic_torch_save((as_list(train), as_list(test)), path)


def save_quizzes(path: str | os.PathLike, quizzes: torch.Tensor) -> None:
    atomic_torch_save(validate_quizzes(quizzes).cpu(), path)
