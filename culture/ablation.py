"""Ablations of a culture GPT's components, per task, and attention patterns.

:func:`run_ablations` replaces, one at a time, the output of every attention
layer (``blocks.L.hook_attn_out``), every MLP layer (``blocks.L.hook_mlp_out``)
and, with ``heads``, every attention head (its slice of ``blocks.L.attn.hook_z``)
by zero ("zero" ablation) or by its mean ("mean" ablation: the mean over the
test quizzes at the same position -- quizzes have a fixed layout, so each
position keeps its own mean), and scores the test set teacher-forced
(:func:`culture.evaluation.score_quizzes`) with the model in TransformerLens
form. Numbers per task (and over all quizzes):

* ``loss``: mean cross-entropy over the predicted cells (the answer grid,
  teacher-forced) -- the earlier toolkit's loss when it reported that
  zero-ablating attention layer 0 multiplies the loss ~1000x;
* ``ce_all``: mean cross-entropy over all 404 positions (as in perplexity);
* ``greedy_accuracy``: argmax right at every predicted cell.

:func:`attention_pattern` / :func:`save_attention_png` draw one head's
attention over one quiz with the block boundaries marked;
:func:`dominant_offset` says at which distance it looks most often (the
earlier toolkit's head 0.0 copies the previous grid: offset 101).

Heavy imports (transformer_lens, matplotlib) happen inside the functions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from culture.errors import CultureError
from culture.evaluation import source_test_set  # noqa: F401 - re-exported (ablation API)
from culture.quiz import BLOCK_LEN, MARKER_LABELS, N_BLOCKS, QUIZ_LEN, ar_mask, block_markers

__all__ = [
    "AblationError",
    "Component",
    "AblationResults",
    "list_components",
    "parse_head",
    "test_sequences",
    "source_test_set",
    "task_metrics",
    "component_hook",
    "position_means",
    "run_ablations",
    "save_ablation_heatmap",
    "attention_pattern",
    "save_attention_png",
    "dominant_offset",
]

MODES = ("zero", "mean")
ALL = "all"

Progress = Callable[[str, int, int], None]


class AblationError(CultureError, ValueError):
    """Bad ablation arguments (head spec, layer out of range, mode...)."""


# ------------------------------------------------------------------ components


@dataclass(frozen=True)
class Component:
    """An attention layer, an MLP layer or one attention head."""

    kind: str  # "attn" | "mlp" | "head"
    layer: int
    head: int | None = None

    @property
    def name(self) -> str:
        return f"head {self.layer}.{self.head}" if self.kind == "head" else f"{self.kind} {self.layer}"

    @property
    def hook_name(self) -> str:
        if self.kind == "attn":
            return f"blocks.{self.layer}.hook_attn_out"
        if self.kind == "mlp":
            return f"blocks.{self.layer}.hook_mlp_out"
        return f"blocks.{self.layer}.attn.hook_z"


def list_components(n_layers: int, n_heads: int, heads: bool = False) -> list[Component]:
    """attn 0, mlp 0, attn 1, mlp 1, ... then (with ``heads``) head 0.0, 0.1, ..."""
    out = []
    for layer in range(n_layers):
        out += [Component("attn", layer), Component("mlp", layer)]
    if heads:
        out += [Component("head", layer, h) for layer in range(n_layers) for h in range(n_heads)]
    return out


def parse_head(spec: str, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """``"L.H"`` (or ``"L,H"`` / ``"L:H"``) -> (layer, head), checked against the model."""
    text = str(spec).strip().replace(",", ".").replace(":", ".")
    parts = text.split(".")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise AblationError(f"head must be LAYER.HEAD (e.g. 0.0), got {spec!r}")
    layer, head = int(parts[0]), int(parts[1])
    if n_layers is not None and layer >= n_layers:
        raise AblationError(f"layer {layer} out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
    if n_heads is not None and head >= n_heads:
        raise AblationError(f"head {head} out of range: the model has {n_heads} heads per layer (0..{n_heads - 1})")
    return layer, head


# ------------------------------------------------------------------ scoring


def test_sequences(test_set) -> torch.Tensor:
    """The teacher-forced sequences of a TestSet: its quizzes with the
    predicted cells taken from the targets (what score_quizzes scores)."""
    q, t = test_set.quizzes, test_set.targets
    return torch.where(ar_mask(q), t, q)


def task_metrics(scores: dict, labels: Sequence[str], names: Sequence[str], n_predicted: torch.Tensor) -> dict:
    """{group: {n, loss, ce_all, greedy_accuracy}} for each label in ``names``
    and ``"all"``, from the per-quiz scores of score_quizzes. ``n_predicted``:
    (n,) predicted cells per quiz."""
    loss = -scores["log_prob"].double() / n_predicted.clamp_min(1).double()
    det = scores["deterministic"]
    lab = list(labels)

    def summary(mask: torch.Tensor) -> dict:
        n = int(mask.sum())
        d = mask & det
        return {
            "n": n,
            "loss": float(loss[mask].mean()) if n else None,
            "ce_all": float(scores["ce"][mask].double().mean()) if n else None,
            "greedy_accuracy": float(scores["greedy_correct"][d].float().mean()) if int(d.sum()) else None,
        }

    out = {}
    for name in names:
        out[name] = summary(torch.tensor([x == name for x in lab], dtype=torch.bool))
    out[ALL] = summary(torch.ones(len(lab), dtype=torch.bool))
    return out


def _score(hooked, test_set, batch_size: int, device, fwd_hooks=()) -> dict:
    from culture.evaluation import score_quizzes

    if fwd_hooks:
        with hooked.hooks(fwd_hooks=list(fwd_hooks)):
            return score_quizzes(hooked, test_set, batch_size=batch_size, device=device)
    return score_quizzes(hooked, test_set, batch_size=batch_size, device=device)


# ------------------------------------------------------------------ hooks


def component_hook(component: Component, mode: str = "zero", mean: torch.Tensor | None = None):
    """(hook name, hook function) replacing the component's output by zero or
    by ``mean`` (per position: (404, d) for layers, (404, d_head) for a head)."""
    if mode not in MODES:
        raise AblationError(f"ablation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "mean" and mean is None:
        raise AblationError(f"mean ablation of {component.name} needs its mean activation")
    h = component.head

    if component.kind == "head":
        def fn(act, hook):
            act = act.clone()
            if mode == "zero":
                act[:, :, h, :] = 0
            else:
                act[:, :, h, :] = mean[: act.shape[1]].to(act)
            return act
    else:
        def fn(act, hook):
            if mode == "zero":
                return torch.zeros_like(act)
            return mean[: act.shape[1]].to(act).expand_as(act).clone()

    return component.hook_name, fn


def position_means(hooked, test_set, components: Sequence[Component], batch_size: int = 50,
                   device=None) -> dict[Component, torch.Tensor]:
    """Mean activation per position over the test quizzes, for each component."""
    from culture.hooked import to_hooked_tokens

    device = torch.device(device) if device is not None else torch.device(hooked.cfg.device)
    hooks = sorted({c.hook_name for c in components})
    sums: dict[str, torch.Tensor] = {}

    def accumulate(act, hook):
        s = act.detach().double().sum(0)
        sums[hook.name] = s if hook.name not in sums else sums[hook.name] + s

    seq = test_sequences(test_set)
    with torch.inference_mode(), hooked.hooks(fwd_hooks=[(name, accumulate) for name in hooks]):
        for x in seq.split(batch_size):
            tokens = to_hooked_tokens(x).to(device)
            hooked(tokens, return_type=None, attention_mask=torch.ones_like(tokens))
    n = seq.shape[0]
    out = {}
    for c in components:
        m = (sums[c.hook_name] / n).float()
        out[c] = m[:, c.head, :] if c.kind == "head" else m
    return out


# ------------------------------------------------------------------ results


@dataclass
class AblationResults:
    """``clean``: {group: metrics} without ablation; ``rows``: one per
    (component, mode) with the same metrics; ``groups``: task labels then "all"."""

    groups: list[str]
    clean: dict
    rows: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "groups": self.groups, "clean": self.clean, "ablations": self.rows}

    def modes(self) -> list[str]:
        return list(dict.fromkeys(r["mode"] for r in self.rows))


def run_ablations(
    hooked,
    test_set,
    *,
    heads: bool = False,
    modes: Sequence[str] = ("zero",),
    components: Sequence[Component] | None = None,
    batch_size: int = 50,
    device=None,
    progress: Progress | None = None,
) -> AblationResults:
    """Ablate each component (zero and/or mean) and score the test set; see the
    module docstring for the metrics. ``hooked``: a TransformerLens model from
    :mod:`culture.hooked`."""
    modes = list(dict.fromkeys(modes))
    for m in modes:
        if m not in MODES:
            raise AblationError(f"ablation mode must be one of {', '.join(MODES)}, got {m!r}")
    if batch_size < 1:
        raise AblationError(f"batch size must be >= 1, got {batch_size}")
    cfg = hooked.cfg
    comps = list(components) if components is not None else list_components(cfg.n_layers, cfg.n_heads, heads)
    names = test_set.label_names
    n_pred = ar_mask(test_set.targets).sum(1)
    hooked.eval()
    total = 1 + len(comps) * len(modes) + (1 if "mean" in modes else 0)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress("ablations", done, total)

    clean = task_metrics(_score(hooked, test_set, batch_size, device), test_set.labels, names, n_pred)
    tick()
    means = position_means(hooked, test_set, comps, batch_size, device) if "mean" in modes else {}
    if "mean" in modes:
        tick()
    rows = []
    for comp in comps:
        for mode in modes:
            hook = component_hook(comp, mode, means.get(comp))
            metrics = task_metrics(_score(hooked, test_set, batch_size, device, [hook]), test_set.labels, names,
                                   n_pred)
            rows.append({"component": comp.name, "kind": comp.kind, "layer": comp.layer, "head": comp.head,
                         "hook": comp.hook_name, "mode": mode, "metrics": metrics})
            tick()
    settings = {"components": len(comps), "modes": modes, "heads": bool(heads),
                "mean_ablation": "per-position mean over the test quizzes" if "mean" in modes else None,
                "loss": "mean cross-entropy over the predicted cells (teacher-forced)",
                "ce_all": "mean cross-entropy over all 404 positions"}
    return AblationResults(groups=[*names, ALL], clean=clean, rows=rows, settings=settings)


# ------------------------------------------------------------------ pictures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path) -> Path:
    from culture.io import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def save_ablation_heatmap(results: AblationResults, path: str | os.PathLike) -> Path:
    """A PNG heatmap, components x tasks: for each mode, the greedy accuracy
    with the component ablated, and log10(loss ablated / loss clean); the
    clean model is the first row."""
    import numpy as np

    groups = results.groups
    modes = results.modes() or ["zero"]
    comps = list(dict.fromkeys(r["component"] for r in results.rows))
    rows = ["clean", *comps]
    by = {(r["component"], r["mode"]): r["metrics"] for r in results.rows}

    def matrix(mode: str, key: str):
        m = np.full((len(rows), len(groups)), np.nan)
        for j, g in enumerate(groups):
            base = results.clean[g]
            for i, name in enumerate(rows):
                met = base if name == "clean" else by.get((name, mode), {}).get(g)
                if not met or met.get(key) is None:
                    continue
                if key == "loss":
                    b = base.get("loss")
                    if b is None or met["loss"] is None:
                        continue
                    m[i, j] = math.log10(max(met["loss"], 1e-12) / max(b, 1e-12))
                else:
                    m[i, j] = met[key]
        return m

    panels = []
    for mode in modes:
        panels.append((f"greedy accuracy ({mode}-ablated)", matrix(mode, "greedy_accuracy"), "RdYlGn", 0.0, 1.0))
        lr = matrix(mode, "loss")
        top = float(np.nanmax(np.abs(lr))) if np.isfinite(lr).any() else 1.0
        top = max(top, 0.1)
        panels.append((f"log10 loss ratio ({mode}-ablated / clean)", lr, "RdBu_r", -top, top))
    cell_h = 0.28 if len(rows) <= 60 else 0.18
    fig = _figure(max(4.0, 0.55 * len(groups) + 1.8) * len(panels), max(3.0, cell_h * len(rows) + 1.8))
    annotate = len(rows) * len(groups) <= 600
    for k, (title, m, cmap, vmin, vmax) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        im = ax.imshow(m, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows if k == 0 else [""] * len(rows), fontsize=7)
        ax.axhline(0.5, color="black", linewidth=1.0)
        if annotate:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    if np.isfinite(m[i, j]):
                        v = m[i, j]
                        txt = f"{100 * v:.0f}" if "accuracy" in title else (f"{v:.2f}" if abs(v) < 1 else f"{v:.1f}")
                        t = (v - vmin) / (vmax - vmin + 1e-12)
                        dark = (t < 0.2 or t > 0.8) if cmap == "RdBu_r" else t < 0.25
                        colour = "white" if dark else "black"
                        ax.text(j, i, txt, ha="center", va="center", fontsize=6, color=colour)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("Ablations per task (accuracy in %, loss on predicted cells)", fontsize=10, y=1.02)
    return _save_figure(fig, path)


def attention_pattern(hooked, quiz: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """(404, 404) attention of head ``layer.head`` over ``quiz`` (404 tokens),
    query x key, in hooked positions: position p reads quiz token p-1 (BOS at 0)."""
    from culture.hooked import to_hooked_tokens

    parse_head(f"{layer}.{head}", hooked.cfg.n_layers, hooked.cfg.n_heads)
    tokens = to_hooked_tokens(torch.as_tensor(quiz).reshape(1, -1)).to(hooked.cfg.device)
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.inference_mode():
        _, cache = hooked.run_with_cache(tokens, names_filter=[name], stop_at_layer=layer + 1,
                                         attention_mask=torch.ones_like(tokens))
    return cache[name][0, head].float().cpu()


def dominant_offset(pattern: torch.Tensor, min_query: int = BLOCK_LEN + 1) -> tuple[int, float]:
    """(offset, fraction): the most common distance query - argmax key over the
    queries from ``min_query`` on, and the fraction of those queries using it."""
    p = pattern[min_query:]
    if p.numel() == 0:
        return 0, 0.0
    q = torch.arange(min_query, pattern.shape[0])
    off = q - p.argmax(-1)
    values, counts = torch.unique(off, return_counts=True)
    k = int(counts.argmax())
    return int(values[k]), float(counts[k]) / float(off.numel())


def save_attention_png(pattern: torch.Tensor, quiz: torch.Tensor, path: str | os.PathLike,
                       title: str | None = None) -> Path:
    """Draw an attention pattern (404 x 404, hooked positions) with the block
    boundaries (white lines) and the blocks' labels on both axes."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    q = torch.as_tensor(quiz).reshape(1, -1)
    markers = block_markers(q)[0].tolist() if q.shape[1] == QUIZ_LEN else [11, 12, 13, 14]
    fig = _figure(7.5, 7.0)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.asarray(pattern), cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
                   interpolation="nearest")
    # position p reads quiz token p-1: block b's marker is read at p = 101 b + 1
    for b in range(1, N_BLOCKS):
        edge = BLOCK_LEN * b + 0.5
        ax.axhline(edge, color="white", linewidth=0.8)
        ax.axvline(edge, color="white", linewidth=0.8)
    centres = [BLOCK_LEN * b + 1 + BLOCK_LEN / 2 for b in range(N_BLOCKS)]
    labels = [MARKER_LABELS.get(m, str(m)) for m in markers]
    ax.set_xticks(centres)
    ax.set_xticklabels(labels)
    ax.set_yticks(centres)
    ax.set_yticklabels(labels)
    ax.set_xlabel("key (token read)")
    ax.set_ylabel("query (token read)")
    ax.set_title(title or "attention pattern", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save_figure(fig, path)
