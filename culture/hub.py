"""Hugging Face Hub helpers shared by what reads from the Hub
(:mod:`culture.sources`) and what pushes to it (the tokenizer, datasets,
SAEs): offline mode, repo ids, one-line push errors. huggingface_hub is
imported inside the functions only."""

from __future__ import annotations

import os
import sys

from culture.errors import CultureError

_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) read now, with huggingface_hub's
    rule; when neither is set, ``huggingface_hub.constants.HF_HUB_OFFLINE`` if
    that module is loaded (it reads the environment once, at import time)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None and value.strip():
        return value.strip().lower() in _TRUE
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``namespace/name`` (or ``name``) hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise CultureError(f"invalid hub repo id {repo_id!r} (expected NAME or NAMESPACE/NAME)") from None
    return repo_id


def check_online(what: str, repo_id: str, error: type[CultureError] = CultureError) -> None:
    """Raise ``error`` (one line) when offline mode is on: nothing can be pushed."""
    if hub_offline():
        raise error(f"cannot push {what} to {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE)")


def check_push(what: str, repo_id: str, error: type[CultureError] = CultureError) -> str:
    """``repo_id`` when ``what`` can be pushed there: a valid repo id
    (:func:`check_repo_id`) and the Hub not offline (:func:`check_online`)."""
    check_repo_id(repo_id)
    check_online(what, repo_id, error)
    return repo_id


def push_error(what: str, repo_id: str, exc: BaseException) -> CultureError:
    """A one-line user error for a failed push (offline, refused, ...)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return CultureError(f"cannot push {what} to {repo_id}: {type(exc).__name__}: {reason}")
