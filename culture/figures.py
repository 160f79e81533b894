"""matplotlib figures for the analyses' PNGs, off-screen (Agg) and written atomically.

One place for what every plotting module needs: :func:`new_figure` (no pyplot,
no global state) and :func:`save_png` (temp file + rename, via
:func:`culture.io.atomic_path`). matplotlib is imported inside.
"""

from __future__ import annotations

import os
from pathlib import Path


def new_figure(width: float, height: float, *, constrained: bool = False):
    """A matplotlib Figure of ``width`` x ``height`` inches at 100 dpi on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike, *, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` as PNG (tight bounding box), atomically; returns the Path."""
    from culture.io import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", **({} if dpi is None else {"dpi": dpi}))
    return path
