"""culture-interp: open Fleuret's culture GPTs with the standard tools of the field.

The package root stays light (no torch/TransformerLens import until needed);
the main entry points are loaded on first use:

    import culture
    models = culture.load_culture([0, 1], source="bundled")
    hooked = culture.load_hooked(0, source="bundled")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "load_culture": "culture.sources",
    "load_hooked": "culture.hooked",
    "generate": "culture.generation",
    "evaluate": "culture.evaluation",
    "generate_quizzes": "culture.world",
    "load_mygpt": "culture.mygpt",
    "MyGPT": "culture.mygpt",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'culture' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
