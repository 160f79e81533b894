"""The picture of a :class:`culture.circuits.compare.CircuitComparison`: per
model, every head's role similarity to the reference head of model 0
(layers x heads, the matched head boxed, its recovery written in), and the
cross-model faithfulness matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["comparison_figure", "save_comparison_png"]


def comparison_figure(cmp, title: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    M, L, H = len(cmp.names), cmp.n_layers, cmp.n_heads
    layer, head = cmp.reference
    ref = layer * H + head
    fig, axes = plt.subplots(1, M + 1, figsize=(2.6 * M + 3.6, 3.4), squeeze=False)
    axes = axes[0]
    rows = cmp.reference_rows()
    for m in range(M):
        ax = axes[m]
        sim = np.ones(L * H) if m == 0 else cmp.matchings[(0, m)].similarity[ref]
        if m == 0:
            sim = np.array([1.0 if i == ref else np.nan for i in range(L * H)])
        ax.imshow(sim.reshape(L, H), vmin=-1, vmax=1, cmap="RdBu_r")
        matched = rows[m]["matched"]
        ml, mh = (int(x) for x in matched.split("."))
        ax.add_patch(Rectangle((mh - 0.5, ml - 0.5), 1, 1, fill=False, lw=2.5, color="black"))
        rec = cmp.recovery[m]["value"].reshape(L, H)
        for i in range(L):
            for j in range(H):
                ax.text(j, i, f"{rec[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"model {cmp.names[m]}: {matched}\n(stability {100 * rows[m]['stability']:.0f}%)", fontsize=9)
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.set_xlabel("head")
        if m == 0:
            ax.set_ylabel("layer")
    ax = axes[M]
    F = np.array([[cmp.faithfulness[j][k]["value"] for k in range(M)] for j in range(M)])
    im = ax.imshow(F, vmin=0, vmax=max(1.0, float(np.nanmax(F))), cmap="viridis")
    for j in range(M):
        for k in range(M):
            ax.text(k, j, f"{F[j, k]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if F[j, k] < 0.5 else "black")
    ax.set_xticks(range(M), cmp.names)
    ax.set_yticks(range(M), cmp.names)
    ax.set_xlabel("patched in model")
    ax.set_ylabel("circuit of model")
    ax.set_title("cross-model faithfulness", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title or f"role of head {layer}.{head} of model {cmp.names[0]} (colour: role similarity; "
                 f"text: head recovery)", fontsize=9)
    fig.tight_layout()
    return fig


def save_comparison_png(cmp, path, title: str | None = None) -> Path:
    """Write :func:`comparison_figure` as PNG (atomically)."""
    import matplotlib.pyplot as plt

    from culture.io import atomic_path

    fig = comparison_figure(cmp, title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
