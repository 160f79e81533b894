"""Pictures of the circuits analyses (matplotlib, Agg; written atomically):

* :func:`save_patch_png` -- a patching table as heatmaps, one panel per
  method, the control pairs' panel beside each, attribution vs activation
  scatter; a ``cells`` table is drawn on the 10x10 grid, one grid per layer,
  beside the block of one clean quiz;
* :func:`save_logit_lens_png` -- accuracy by layer per task, beside the
  random-init model;
* :func:`save_circuit_png` -- the circuit as a graph (nodes embed, heads,
  MLPs, readout; edge width = score) with its faithfulness in the title,
  beside the faithfulness-vs-size curve and random circuits of the same sizes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from culture.figures import new_figure, save_png
from culture.quiz import BLOCK_LEN, COLOR_RGB, GRID

__all__ = ["save_patch_png", "save_logit_lens_png", "save_circuit_png"]

def _heat(ax, m, rows, cols, title, vmax, annotate=True, fig=None):
    im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, fontsize=7, rotation=0 if len(cols) <= 6 else 60)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=7)
    if annotate and m.size <= 120:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    v = m[i, j]
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v) > 0.6 * vmax else "black")
    if fig is not None:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


def _panels(report):
    """[(title, values per site)] for each method and its control."""
    out = []
    for m in report.methods:
        out.append((f"{m} patching: recovery", report.recovery(m)))
        c = report.control_effect(m)
        if c is not None:
            out.append((f"{m}: control pairs (example)", c["value"]))
    return out


def _title(report, extra: str | None) -> str:
    b, s = report.baseline, report.settings
    head = " ".join(x for x in (extra, f"task {s.get('task')}" if s.get("task") else None,
                                f"vary {s.get('vary')}" if s.get("vary") else None) if x)
    acc = f"clean run gives the clean answer on {100 * b.clean_correct.mean():.1f}% of pairs"
    return (f"{head}\n{report.direction}, {s.get('n_pairs')} pairs ({acc}); recovery 0 = corrupted run, "
            f"1 = clean run; control: margin change / real gap").strip()


def _grid_image(quiz, block: int):
    cells = np.asarray(quiz[BLOCK_LEN * block + 1: BLOCK_LEN * (block + 1)]).reshape(GRID, GRID)
    return np.asarray(COLOR_RGB, dtype=np.uint8)[cells]


def save_patch_png(report, path: str | os.PathLike, title: str | None = None, quiz=None) -> Path:
    """Draw a :class:`~culture.circuits.patching.PatchReport`. ``quiz``: a
    clean quiz (404,) whose block is drawn beside a ``cells`` table."""
    panels = _panels(report)
    t = report.table
    finite = np.concatenate([np.abs(v[np.isfinite(v)]) for _, v in panels] + [np.array([1.0])])
    # one cell carries a small share of the effect: a cells table gets its own scale
    top = float(np.quantile(finite[:-1], 0.99)) if len(finite) > 1 else 1.0
    vmax = max(top, 1e-6) if t.what == "cells" else max(1.0, top)
    both = report.agreement()
    if t.what == "cells":
        rows = len(t.rows)
        ncols = len(panels) + (1 if quiz is not None else 0)
        fig = new_figure(2.6 * ncols + 0.8, 2.5 * rows + 1.0, constrained=True)
        for r in range(rows):
            for k, (name, values) in enumerate(panels):
                ax = fig.add_subplot(rows, ncols, r * ncols + k + 1)
                grid = t.grid(values)[r].reshape(GRID, GRID)
                im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(name, fontsize=8)
                if k == 0:
                    ax.set_ylabel(t.rows[r], fontsize=8)
            if quiz is not None and r == 0:
                ax = fig.add_subplot(rows, ncols, ncols)
                ax.imshow(_grid_image(quiz, t.block), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title("block of clean pair 0", fontsize=8)
        fig.colorbar(im, ax=fig.axes, fraction=0.02, pad=0.02)
    else:
        methods = list(report.methods)
        per = 2 if report.control is not None else 1  # recovery, control
        ncols = per + (1 if both else 0)
        h = max(2.4, 0.3 * len(t.rows) + 1.3)
        w = max(2.6, 0.62 * len(t.cols) + 1.4)
        fig = new_figure(w * per + (3.4 if both else 0) + 0.6, h * len(methods) + 0.9, constrained=True)
        grid = fig.add_gridspec(len(methods), ncols, width_ratios=[w] * per + ([3.4] if both else []))
        im = None
        for r, m in enumerate(methods):
            im = _heat(fig.add_subplot(grid[r, 0]), t.grid(report.recovery(m)), t.rows, t.cols,
                       f"{m} patching: recovery", vmax)
            if per == 2:
                _heat(fig.add_subplot(grid[r, 1]), t.grid(report.control_effect(m)["value"]), t.rows, t.cols,
                      f"{m}: control pairs (example)", vmax)
        fig.colorbar(im, ax=fig.axes, fraction=0.03, pad=0.01)
        if both:
            ax = fig.add_subplot(grid[:, per])
            a, b = report.recovery("activation"), report.recovery("attribution")
            ax.scatter(a, b, s=12, color="#3b2db3")
            lim = [min(a.min(), b.min(), 0) - 0.05, max(a.max(), b.max(), 1) + 0.05]
            ax.plot(lim, lim, color="gray", linewidth=0.8, linestyle="--")
            ax.set_aspect("equal")
            ax.set_xlabel("activation patching", fontsize=8)
            ax.set_ylabel("attribution patching", fontsize=8)
            r = both["pearson_r"]
            ax.set_title(f"attribution vs activation: r = {r:.2f}" if r is not None else "agreement", fontsize=9)
    fig.suptitle(_title(report, title), fontsize=9)
    return save_png(fig, path)


def save_logit_lens_png(report, path: str | os.PathLike, title: str | None = None) -> Path:
    """Whole-grid and transform-cell accuracy of the logit lens, layer by
    layer, one line per task, dashed: the random-init model."""
    fig = new_figure(10, 3.6, constrained=True)
    layers = report.layer_labels
    x = np.arange(len(layers))
    for k, (key, name) in enumerate((("grid_accuracy", "whole-grid accuracy"),
                                      ("cell_accuracy", "cell accuracy (all predicted cells)"),
                                      ("transform_accuracy", "cell accuracy (transform cells)"))):
        ax = fig.add_subplot(1, 3, k + 1)
        for j, group in enumerate(report.groups):
            colour = f"C{j}"
            v = [report.accuracy[group][L][key]["value"] for L in range(len(layers))]
            lo = [report.accuracy[group][L][key]["ci95"][0] for L in range(len(layers))]
            hi = [report.accuracy[group][L][key]["ci95"][1] for L in range(len(layers))]
            ax.plot(x, v, marker="o", color=colour, label=group)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
            if report.baseline is not None:
                ax.plot(x, [report.baseline[group][L][key]["value"] for L in range(len(layers))],
                        linestyle="--", color=colour, linewidth=0.9)
        if key != "grid_accuracy" and report.copy_baseline:
            ax.axhline(report.copy_baseline["all"][key], color="gray", linestyle=":", linewidth=1.0,
                       label="copy B")
        ax.set_xticks(x)
        ax.set_xticklabels(layers, fontsize=7, rotation=30)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=9)
        if k < 2:
            ax.legend(fontsize=7)
    fig.suptitle(title or "logit lens: decoding the residual stream with the unembedding (dashed: random-init model)",
                 fontsize=9)
    return save_png(fig, path)


def _node_xy(name: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    if name == "embed":
        return (n_heads - 1) / 2, 0.0
    if name == "readout":
        return (n_heads - 1) / 2, 2.0 * n_layers + 1.0
    kind, rest = name.split(" ")
    if kind == "mlp":
        return n_heads - 0.2, 2.0 * int(rest) + 2.0
    layer, head = (int(v) for v in rest.split("."))
    return float(head), 2.0 * layer + 1.0


#: circle of a circuit node (scatter size, points^2: about 19.5 points across) and the widest label it holds
NODE_SIZE = 380
_NODE_TEXT_PT = 15.0
_SHORT = {"embed": "emb", "readout": "out"}


def node_label(node: str) -> str:
    """The text in a node's circle: ``3.1`` (head 1 of layer 3), ``m3`` (MLP 3), ``emb``, ``out``."""
    return _SHORT.get(node, node.replace("head ", "").replace("mlp ", "m"))


def node_fontsize(label: str) -> float:
    """A font size (points) at which ``label`` fits its circle (a character
    is about 0.6 of the size wide)."""
    return min(7.0, _NODE_TEXT_PT / (0.6 * max(1, len(label))))


def save_circuit_png(circuit, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw a :class:`~culture.circuits.discovery.CircuitReport`: the chosen
    circuit's graph (edge width = |score|, red positive, blue negative) and
    the faithfulness-vs-size curve with random circuits of the same sizes."""
    fig = new_figure(12, 6.0, constrained=True)
    ax = fig.add_subplot(1, 2, 1)
    n_layers, n_heads = circuit.n_layers, circuit.n_heads
    edges = circuit.chosen_edges()
    top = max([abs(e["score"]) for e in edges] + [1e-12])
    used = {e["src"] for e in edges} | {e["dst"] for e in edges}
    for node in circuit.nodes:
        x, y = _node_xy(node, n_layers, n_heads)
        on = node in used
        ax.scatter([x], [y], s=NODE_SIZE, color="#f2c14e" if on else "#e6e6e6", edgecolors="black" if on else "#bbbbbb",
                   zorder=3)
        label = node_label(node)
        ax.text(x, y, label, ha="center", va="center", fontsize=node_fontsize(label), zorder=4,
                color="black" if on else "#999999")
    for e in edges:
        (x0, y0), (x1, y1) = _node_xy(e["src"], n_layers, n_heads), _node_xy(e["dst"], n_layers, n_heads)
        bend = (0.6 if x1 >= x0 else -0.6) if abs(y1 - y0) > 1.5 else 0.0
        xs = np.linspace(x0, x1, 20)
        ys = np.linspace(y0, y1, 20)
        xs = xs + bend * np.sin(np.linspace(0, np.pi, 20))
        ax.plot(xs, ys, color="#c0392b" if e["score"] > 0 else "#2e6da4", alpha=0.75,
                linewidth=0.6 + 4.5 * abs(e["score"]) / top, zorder=2)
    ax.set_xlim(-0.8, n_heads + 0.4)
    ax.set_ylim(-0.8, 2 * n_layers + 1.8)
    ax.set_xticks([])
    ax.set_yticks([])
    f = circuit.chosen_faithfulness()
    ax.set_title(f"circuit: {len(edges)} of {len(circuit.edges)} edges, faithfulness "
                 f"{100 * f['value']:.0f}% [{100 * f['ci95'][0]:.0f}, {100 * f['ci95'][1]:.0f}]", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    sizes = [p["size"] for p in circuit.curve]
    v = [p["faithfulness"]["value"] for p in circuit.curve]
    lo = [p["faithfulness"]["ci95"][0] for p in circuit.curve]
    hi = [p["faithfulness"]["ci95"][1] for p in circuit.curve]
    ax.plot(sizes, v, marker="o", color="#c0392b", label="top edges by |score|")
    ax.fill_between(sizes, lo, hi, color="#c0392b", alpha=0.15)
    if circuit.random_curve:
        rs = [p["size"] for p in circuit.random_curve]
        ax.plot(rs, [p["faithfulness"]["value"] for p in circuit.random_curve], marker="s", color="gray",
                linestyle="--", label=f"random edges (mean of {circuit.settings.get('random_circuits')})")
        ax.fill_between(rs, [p["faithfulness"]["ci95"][0] for p in circuit.random_curve],
                        [p["faithfulness"]["ci95"][1] for p in circuit.random_curve], color="gray", alpha=0.12)
    ax.axhline(circuit.threshold, color="black", linestyle=":", linewidth=1.0, label=f"{100 * circuit.threshold:.0f}%")
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (edges)")
    ax.set_ylabel("faithfulness (recovery of the logit difference)")
    ax.legend(fontsize=7)
    ax.set_title("faithfulness vs size", fontsize=9)
    fig.suptitle(title or "", fontsize=9)
    return save_png(fig, path)
