"""PNG figures of a :class:`~culture.universality.compare.UniversalityReport`.

matplotlib (Agg backend) is imported inside :func:`plot_report`; every file is
written atomically (temporary file + rename).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np


#: layers per row in the per-layer figures
MAX_COLUMNS = 6


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "x"


def _save(fig, path: Path) -> Path:
    from culture.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _heatmap(ax, mat: np.ndarray, xlabels, ylabels, title: str, annotate: bool = True, vmin=0.0, vmax=1.0):
    im = ax.imshow(mat, vmin=vmin, vmax=vmax, cmap="viridis", origin="upper")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, fontsize=7, rotation=90 if len(xlabels) > 8 else 0)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=7)
    ax.set_title(title, fontsize=8)
    if annotate and mat.size <= 64:
        for (r, c), v in np.ndenumerate(mat):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < (vmin + vmax) / 2 else "black")
    return im


def plot_report(report, out_dir: str | os.PathLike) -> list[Path]:
    """Write the figures of ``report`` into ``out_dir``; returns their paths.

    * ``neurons_summary.png`` - per layer: share universal and mean
      max-correlation, trained vs random baseline;
    * ``neurons_share_universal.png`` - per layer, model x model share of
      neurons whose max correlation in the other model exceeds the threshold
      (trained row, baseline row);
    * ``neurons_max_corr_hist.png`` - per layer, histogram of the neurons' mean
      max-correlation, trained vs baseline, threshold marked;
    * ``cka_<a>_<b>.png`` - per model pair, layer x layer linear CKA (and baseline);
    * ``sae_matched_corr.png`` - per SAE pair, histogram of matched correlations.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names = report.names
    thr = report.threshold
    layers = report.neurons

    try:
        # ------------------------------------------------------ summary lines
        if layers:
            rows = report.summary_rows()
            xs = [r["layer"] for r in rows]
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            axes[0].plot(xs, [r["share_universal"] for r in rows], "o-", label="trained")
            axes[1].plot(xs, [r["mean_max_corr"] for r in rows], "o-", label="trained")
            if rows[0]["baseline_share_universal"] is not None:
                axes[0].plot(xs, [r["baseline_share_universal"] for r in rows], "s--", color="gray",
                             label="random baseline")
                axes[1].plot(xs, [r["baseline_mean_max_corr"] for r in rows], "s--", color="gray",
                             label="random baseline")
            axes[0].set_title(f"share of universal neurons (mean max-corr > {thr:g})", fontsize=9)
            axes[1].set_title("mean max-correlation", fontsize=9)
            for ax in axes:
                ax.set_xlabel("layer")
                ax.set_ylim(-0.02, 1.02)
                ax.set_xticks(xs)
                ax.legend(fontsize=7)
            written.append(_save(fig, out / "neurons_summary.png"))
            plt.close(fig)

            # -------------------------------------------- model x model share
            per = 2 if layers[0].baseline is not None else 1  # panels per layer (trained, random)
            cols = min(len(layers), MAX_COLUMNS)
            grid_rows = math.ceil(len(layers) / cols)
            fig, axes = plt.subplots(per * grid_rows, cols, figsize=(2.3 * cols + 1, 2.4 * per * grid_rows + 0.4),
                                     squeeze=False)
            im = None
            for k, nl in enumerate(layers):
                r, c = per * (k // cols), k % cols
                im = _heatmap(axes[r, c], nl.pair_share(), names, names, f"layer {nl.layer}")
                if per > 1:
                    _heatmap(axes[r + 1, c], nl.baseline.pair_share(), names, names, f"layer {nl.layer} (random)")
            for k in range(len(layers), grid_rows * cols):
                for d in range(per):
                    axes[per * (k // cols) + d, k % cols].axis("off")
            axes[0, 0].set_ylabel("neurons of model", fontsize=8)
            fig.suptitle(f"share of neurons with max-corr > {thr:g} in the other model", fontsize=9)
            fig.colorbar(im, ax=axes, shrink=0.8)
            written.append(_save(fig, out / "neurons_share_universal.png"))
            plt.close(fig)

            # ---------------------------------------------------- histograms
            fig, axes = plt.subplots(grid_rows, cols, figsize=(2.6 * cols + 0.5, 2.6 * grid_rows), squeeze=False)
            bins = np.linspace(-0.2, 1.0, 49)
            for k, nl in enumerate(layers):
                ax = axes[k // cols, k % cols]
                vals = np.concatenate([nl.mean_max(i)[nl.alive(i)] for i in range(nl.n_models)])
                ax.hist(vals, bins=bins, alpha=0.7, label="trained", density=True)
                if nl.baseline is not None:
                    b = nl.baseline
                    bv = np.concatenate([b.mean_max(i)[b.alive(i)] for i in range(b.n_models)])
                    ax.hist(bv, bins=bins, histtype="step", color="black", label="random", density=True)
                ax.axvline(thr, color="red", lw=0.8, ls=":")
                ax.set_title(f"layer {nl.layer}", fontsize=8)
                ax.set_xlabel("mean max-corr", fontsize=7)
                ax.tick_params(labelsize=6)
            for k in range(len(layers), grid_rows * cols):
                axes[k // cols, k % cols].axis("off")
            axes[0, 0].legend(fontsize=6)
            written.append(_save(fig, out / "neurons_max_corr_hist.png"))
            plt.close(fig)

        # ---------------------------------------------------------------- CKA
        if report.cka is not None:
            cka = report.cka
            for (i, j), mat in cka.pairs.items():
                n_cols = 2 if cka.baseline is not None else 1
                fig, axes = plt.subplots(1, n_cols, figsize=(3.8 * n_cols + 0.8, 3.4), squeeze=False,
                                         gridspec_kw={"wspace": 0.45})
                im = _heatmap(axes[0, 0], mat, cka.labels[j], cka.labels[i],
                              f"CKA model {names[i]} x model {names[j]}")
                axes[0, 0].set_ylabel(f"model {names[i]} residual", fontsize=7)
                axes[0, 0].set_xlabel(f"model {names[j]} residual", fontsize=7)
                if n_cols > 1:
                    _heatmap(axes[0, 1], cka.baseline[(i, j)], cka.labels[j], cka.labels[i], "random baseline")
                fig.colorbar(im, ax=axes, shrink=0.8)
                written.append(_save(fig, out / f"cka_{_safe(names[i])}_{_safe(names[j])}.png"))
                plt.close(fig)

        # ---------------------------------------------------------------- SAE
        if report.sae is not None and report.sae.pairs:
            pairs = list(report.sae.pairs.items())
            cols = min(len(pairs), MAX_COLUMNS)
            grid_rows = math.ceil(len(pairs) / cols)
            fig, axes = plt.subplots(grid_rows, cols, figsize=(2.8 * cols + 0.5, 2.6 * grid_rows), squeeze=False)
            for k in range(len(pairs), grid_rows * cols):
                axes[k // cols, k % cols].axis("off")
            for c, ((i, j), p) in enumerate(pairs):
                ax = axes[c // cols, c % cols]
                ax.hist(p.matching.corr, bins=np.linspace(-0.2, 1.0, 49), alpha=0.8)
                ax.axvline(thr, color="red", lw=0.8, ls=":")
                ax.set_title(f"SAE {names[i]} x {names[j]}: {len(p.matching)} matched", fontsize=8)
                ax.set_xlabel("matched feature correlation", fontsize=7)
                ax.tick_params(labelsize=6)
            written.append(_save(fig, out / "sae_matched_corr.png"))
            plt.close(fig)
    finally:
        plt.close("all")
    return written


__all__ = ["plot_report"]
