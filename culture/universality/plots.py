"""PNG figures of a :class:`~culture.universality.report.UniversalityReport`.

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
    from culture.figures import save_png

    return save_png(fig, path, dpi=110)


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


def _errorbar(ax, xs, values, cis, **kw):
    vals = np.array([np.nan if v is None else v for v in values], dtype=float)
    lo = np.array([np.nan if not c else c[0] for c in cis], dtype=float)
    hi = np.array([np.nan if not c else c[1] for c in cis], dtype=float)
    err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
    err = np.nan_to_num(err)
    ax.errorbar(xs, vals, yerr=err, capsize=3, **kw)


def _grid(plt, n: int, w: float = 2.6, h: float = 2.6):
    cols = min(n, MAX_COLUMNS)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols + 0.5, h * rows), squeeze=False)
    for k in range(n, rows * cols):
        axes[k // cols, k % cols].axis("off")
    return fig, axes, cols


def plot_report(report, out_dir: str | os.PathLike) -> list[Path]:
    """Write the figures of ``report`` into ``out_dir``; returns their paths.

    * ``neurons_summary.png`` - per layer: share universal (95% interval) of
      the trained models, held out and of random-init models; max-corr,
      baseline max-corr and excess;
    * ``neurons_controls.png`` - share universal per layer under each control;
    * ``neurons_max_vs_baseline.png`` - per layer, each neuron's mean max-corr
      against its mean baseline max-corr (Gurnee et al.'s figure), the line
      excess = threshold marked;
    * ``neurons_excess_hist.png`` - per layer, histogram of the excess,
      trained vs random-init models;
    * ``neurons_partner_layers.png`` - where the best partners live (layer x layer);
    * ``cka_<a>_<b>.png`` - per model pair, layer x layer linear CKA (and the
      random models), debiased CKA;
    * ``sae_matched_corr.png`` - per SAE pair, histogram of the one-to-one
      matched correlations beside the shuffled-quiz floor.
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
        if layers:
            rows = report.summary_rows()
            xs = [r["layer"] for r in rows]
            fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
            _errorbar(axes[0], xs, [r["share_universal"] for r in rows], [r["share_universal_ci"] for r in rows],
                      fmt="o-", label="trained")
            if rows[0]["held_share_universal"] is not None:
                _errorbar(axes[0], np.array(xs) + 0.08, [r["held_share_universal"] for r in rows],
                          [r["held_share_universal_ci"] for r in rows], fmt="^--", label="trained, held out")
            if rows[0]["random_share_universal"] is not None:
                _errorbar(axes[0], np.array(xs) - 0.08, [r["random_share_universal"] for r in rows],
                          [r["random_share_universal_ci"] for r in rows], fmt="s:", color="gray",
                          label="random-init models")
            axes[0].set_title(f"share universal (excess > {thr:g}; control {report.primary})", fontsize=9)
            axes[0].set_ylim(-0.02, 1.02)
            axes[1].plot(xs, [r["mean_max_corr"] for r in rows], "o-", label="max-corr")
            axes[1].plot(xs, [r["mean_baseline"] for r in rows], "s--", label=f"{layers[0].baseline_kind} baseline")
            axes[1].plot(xs, [r["mean_excess"] for r in rows], "^-", label="excess")
            if rows[0]["random_mean_excess"] is not None:
                axes[1].plot(xs, [r["random_mean_excess"] for r in rows], "^:", color="gray",
                             label="excess, random-init")
            axes[1].set_title("mean over neurons", fontsize=9)
            for ax in axes:
                ax.set_xlabel("layer")
                ax.set_xticks(xs)
                ax.legend(fontsize=7)
            written.append(_save(fig, out / "neurons_summary.png"))
            plt.close(fig)

            if len(report.controls) > 1:
                fig, ax = plt.subplots(figsize=(5.5, 3.3))
                for k, (c, ls) in enumerate(report.controls.items()):
                    _errorbar(ax, np.array([nl.layer for nl in ls]) + 0.06 * k, [nl.share_universal() for nl in ls],
                              [nl.interval("share") for nl in ls], fmt="o-", label=c)
                ax.set_xlabel("layer")
                ax.set_xticks(xs)
                ax.set_ylim(-0.02, 1.02)
                ax.set_title(f"share universal under each control (excess > {thr:g})", fontsize=9)
                ax.legend(fontsize=7)
                written.append(_save(fig, out / "neurons_controls.png"))
                plt.close(fig)

            fig, axes, cols = _grid(plt, len(layers))
            for k, nl in enumerate(layers):
                ax = axes[k // cols, k % cols]
                bx = np.concatenate([nl.mean_baseline(i)[nl.alive(i)] for i in range(nl.n_models)])
                mx = np.concatenate([nl.mean_max(i)[nl.alive(i)] for i in range(nl.n_models)])
                ax.scatter(bx, mx, s=2, alpha=0.3)
                ax.plot([0, 1], [0, 1], ls="--", c="red", lw=0.6)
                ax.plot([0, 1 - thr], [thr, 1], ls=":", c="black", lw=0.8)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.set_title(f"layer {nl.layer}", fontsize=8)
                ax.set_xlabel("baseline max-corr", fontsize=7)
                ax.set_ylabel("max-corr", fontsize=7)
                ax.tick_params(labelsize=6)
            written.append(_save(fig, out / "neurons_max_vs_baseline.png"))
            plt.close(fig)

            fig, axes, cols = _grid(plt, len(layers))
            bins = np.linspace(-0.4, 1.0, 57)
            for k, nl in enumerate(layers):
                ax = axes[k // cols, k % cols]
                ax.hist(np.concatenate([nl.excess(i)[nl.alive(i)] for i in range(nl.n_models)]), bins=bins,
                        alpha=0.7, density=True, label="trained")
                if nl.random is not None:
                    r = nl.random
                    ax.hist(np.concatenate([r.excess(i)[r.alive(i)] for i in range(r.n_models)]), bins=bins,
                            histtype="step", color="black", density=True, label="random-init")
                ax.axvline(thr, color="red", lw=0.8, ls=":")
                ax.set_title(f"layer {nl.layer}", fontsize=8)
                ax.set_xlabel("excess correlation", fontsize=7)
                ax.tick_params(labelsize=6)
            axes[0, 0].legend(fontsize=6)
            written.append(_save(fig, out / "neurons_excess_hist.png"))
            plt.close(fig)

            mat = np.array([[nl.partner_layers().get(L, 0.0) for L in nl.layers] for nl in layers])
            fig, ax = plt.subplots(figsize=(3.6, 3.2))
            im = _heatmap(ax, mat, [str(v) for v in layers[0].layers], [str(nl.layer) for nl in layers],
                          "layer of the best partner (share)")
            ax.set_xlabel("partner's layer (other model)", fontsize=7)
            ax.set_ylabel("neuron's layer", fontsize=7)
            fig.colorbar(im, ax=ax, shrink=0.8)
            written.append(_save(fig, out / "neurons_partner_layers.png"))
            plt.close(fig)

        if report.cka is not None:
            cka = report.cka
            for (i, j), mat in cka.pairs.items():
                panels = [(mat, f"linear CKA {names[i]} x {names[j]}")]
                if cka.baseline is not None:
                    panels.append((cka.baseline[(i, j)], "random-init models"))
                if cka.primary in cka.debiased:
                    panels.append((cka.debiased[cka.primary][(i, j)], "debiased CKA"))
                fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels) + 0.8, 3.4), squeeze=False,
                                         gridspec_kw={"wspace": 0.45})
                im = None
                for k, (m, title) in enumerate(panels):
                    im = _heatmap(axes[0, k], m, cka.labels[j], cka.labels[i], title)
                axes[0, 0].set_ylabel(f"model {names[i]} residual", fontsize=7)
                axes[0, 0].set_xlabel(f"model {names[j]} residual", fontsize=7)
                fig.colorbar(im, ax=axes, shrink=0.8)
                written.append(_save(fig, out / f"cka_{_safe(names[i])}_{_safe(names[j])}.png"))
                plt.close(fig)

        if report.sae is not None and report.sae.pairs:
            s = report.sae
            pairs = list(s.pairs.items())
            fig, axes, cols = _grid(plt, len(pairs), 2.8)
            for c, ((a, b), p) in enumerate(pairs):
                ax = axes[c // cols, c % cols]
                bins = np.linspace(-0.2, 1.0, 49)
                ax.hist(p.matching.corr, bins=bins, alpha=0.8, label="matched")
                if p.null_matching is not None:
                    ax.hist(p.null_matching.corr, bins=bins, histtype="step", color="black", label="floor")
                ax.axvline(thr, color="red", lw=0.8, ls=":")
                kind = " (ceiling)" if p.same_model else ""
                ax.set_title(f"SAE {s.labels[a]} x {s.labels[b]}{kind}", fontsize=8)
                ax.set_xlabel("matched feature correlation", fontsize=7)
                ax.tick_params(labelsize=6)
            axes[0, 0].legend(fontsize=6)
            written.append(_save(fig, out / "sae_matched_corr.png"))
            plt.close(fig)
    finally:
        plt.close("all")
    return written


__all__ = ["plot_report"]
