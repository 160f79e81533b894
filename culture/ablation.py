"""Ablations of a culture GPT's components, per task, and attention patterns.

:func:`run_ablations` replaces, one at a time, the output of every attention
layer (``blocks.L.hook_attn_out``), every MLP layer (``blocks.L.hook_mlp_out``)
and, with ``heads``, every attention head (its slice of ``blocks.L.attn.hook_z``)
by a null value, and scores the test set teacher-forced
(:func:`culture.evaluation.score_quizzes`) with the model in TransformerLens
form. The nulls (``modes``):

* ``zero``: 0 -- a value the model never sees; the earlier toolkit's ablation;
* ``mean``: the mean over the test quizzes *of the same structure* at the same
  position -- the four structures put different blocks at a position, so one
  mean per (structure, position) keeps each position's role;
* ``pooled_mean``: the mean over all test quizzes at the same position
  (mixes the structures' block roles; kept to show why it misleads);
* ``resample``: the activation of another test quiz of the same structure
  and task (a random derangement within each group): the component keeps a
  realistic value but loses the information specific to this quiz.

Metrics per task (and over all quizzes): :func:`culture.evaluation.cell_metrics`
on all predicted cells and on the transform cells (cross-entropy per cell,
per-cell and whole-grid accuracy, 95% intervals), and the change against the
clean model with paired intervals; ``loss`` (cross-entropy per predicted
cell -- the earlier toolkit's loss when it reported that zero-ablating
attention layer 0 multiplies the loss ~1000x), ``ce_all`` (over all 404
positions) and ``greedy_accuracy`` as plain numbers.

:func:`attention_statistics` averages one head's attention over the test set:
by (query block, key block), by look-back offset, and the mean pattern per
structure (:func:`save_mean_attention_png`); :func:`attention_pattern` /
:func:`save_attention_png` draw one quiz's pattern.

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
from culture.evaluation import group_metrics, source_test_set, teacher_forced  # noqa: F401 - source_test_set re-exported (ablation API)
from culture.figures import new_figure, save_png
from culture.hooks import act_name
from culture.quiz import (
    BLOCK_LEN,
    MARKER_LABELS,
    N_BLOCKS,
    QUIZ_LEN,
    STRUCTURES,
    ar_mask,
    block_markers,
    transform_mask,
)

__all__ = [
    "AblationError",
    "Component",
    "AblationResults",
    "list_components",
    "parse_head",
    "source_test_set",
    "component_hook",
    "position_means",
    "structure_position_means",
    "resample_donors",
    "component_activations",
    "MODES",
    "run_ablations",
    "save_ablation_heatmap",
    "attention_pattern",
    "attention_statistics",
    "AttentionStatistics",
    "save_mean_attention_png",
    "save_attention_png",
    "dominant_offset",
]

MODES = ("zero", "mean", "resample", "pooled_mean")
#: what each null replaces a component's output with (settings of the results)
MODE_MEANINGS = {
    "zero": "0",
    "mean": "mean over the test quizzes of the same structure, per position",
    "pooled_mean": "mean over all test quizzes, per position (structures pooled)",
    "resample": "the activation of another test quiz of the same structure and task",
}
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
        return act_name({"attn": "attn_out", "mlp": "mlp_out"}.get(self.kind, "z"), self.layer)


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


def _score(hooked, test_set, batch_size: int, device, fwd_hooks=(), batch_hooks=None) -> dict:
    from culture.evaluation import score_quizzes

    if fwd_hooks:
        with hooked.hooks(fwd_hooks=list(fwd_hooks)):
            return score_quizzes(hooked, test_set, batch_size=batch_size, device=device, batch_hooks=batch_hooks)
    return score_quizzes(hooked, test_set, batch_size=batch_size, device=device, batch_hooks=batch_hooks)


# ------------------------------------------------------------------ hooks


def component_hook(component: Component, mode: str = "zero", replacement: torch.Tensor | None = None):
    """(hook name, hook function) replacing the component's output by zero
    (``mode="zero"``) or by ``replacement``: per position ((404, d) for a
    layer, (404, d_head) for a head) or per quiz of the batch ((b, 404, d))."""
    if mode not in MODES:
        raise AblationError(f"ablation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "zero" and replacement is None:
        raise AblationError(f"{mode} ablation of {component.name} needs its replacement activation")
    h = component.head

    def value(act: torch.Tensor) -> torch.Tensor:
        shape = (act.shape[0], act.shape[1], act.shape[-1])
        if mode == "zero":
            return torch.zeros(shape, dtype=act.dtype, device=act.device)
        r = replacement[..., : act.shape[1], :] if replacement.dim() == 3 else replacement[: act.shape[1]]
        return r.to(act).expand(shape)

    if component.kind == "head":
        def fn(act, hook):
            act = act.clone()
            act[:, :, h, :] = value(act)
            return act
    else:
        def fn(act, hook):
            return value(act).clone()

    return component.hook_name, fn


def _accumulate(hooked, test_set, hook_names: Sequence[str], batch_size: int, device, keep) -> None:
    """Run the test sequences (clean) and call ``keep(hook_name, rows, act)``
    with each batch's activation at each hook."""
    from culture.hooked import to_hooked_tokens

    device = torch.device(device) if device is not None else torch.device(hooked.cfg.device)
    seq = teacher_forced(test_set)
    # no need to run the blocks after the last hook's
    last = max(int(name.split(".")[1]) if name.startswith("blocks.") else hooked.cfg.n_layers - 1
               for name in hook_names)
    stop = last + 1 if last + 1 < hooked.cfg.n_layers else None
    done = 0
    for x in seq.split(batch_size):
        rows = torch.arange(done, done + x.shape[0])

        def fn(act, hook, rows=rows):
            keep(hook.name, rows, act.detach())

        tokens = to_hooked_tokens(x).to(device)
        with torch.inference_mode(), hooked.hooks(fwd_hooks=[(name, fn) for name in hook_names]):
            hooked(tokens, return_type=None, attention_mask=torch.ones_like(tokens), stop_at_layer=stop)
        done += x.shape[0]


def _component_slice(component: Component, act: torch.Tensor) -> torch.Tensor:
    return act[..., component.head, :] if component.kind == "head" else act


def position_means(hooked, test_set, components: Sequence[Component], batch_size: int = 50,
                   device=None) -> dict[Component, torch.Tensor]:
    """Mean activation per position over all the test quizzes (structures
    pooled), for each component: (404, d)."""
    hooks = sorted({c.hook_name for c in components})
    sums: dict[str, torch.Tensor] = {}

    def keep(name, rows, act):
        s = act.double().sum(0).cpu()
        sums[name] = s if name not in sums else sums[name] + s

    _accumulate(hooked, test_set, hooks, batch_size, device, keep)
    n = len(test_set)
    return {c: _component_slice(c, sums[c.hook_name] / n).float() for c in components}


def structure_position_means(hooked, test_set, components: Sequence[Component], batch_size: int = 50,
                             device=None) -> dict[Component, torch.Tensor]:
    """Mean activation per (structure, position) over the test quizzes of
    each structure, for each component: (len(STRUCTURES), 404, d), indexed
    by the test set's ``structures`` (rows of structures absent from the test
    set are 0 and never used)."""
    hooks = sorted({c.hook_name for c in components})
    structures = test_set.structures.long()
    if (structures < 0).any():
        raise AblationError("mean ablation per structure needs every quiz in one of the five structures")
    S = len(STRUCTURES)
    sums: dict[str, torch.Tensor] = {}

    def keep(name, rows, act):
        a = act.double().cpu()
        if name not in sums:
            sums[name] = torch.zeros(S, *a.shape[1:], dtype=torch.float64)
        sums[name].index_add_(0, structures[rows], a)

    _accumulate(hooked, test_set, hooks, batch_size, device, keep)
    counts = torch.bincount(structures, minlength=S).double().clamp_min(1)

    def mean(total: torch.Tensor) -> torch.Tensor:
        return total / counts.reshape((S,) + (1,) * (total.dim() - 1))

    return {c: _component_slice(c, mean(sums[c.hook_name])).float() for c in components}


def resample_donors(test_set, seed: int = 0) -> torch.Tensor:
    """(n,) for each test quiz, the index of the quiz whose activation
    replaces its own in resample ablation: another quiz of the same
    structure and label (task, or culture), a random derangement within each
    group (every quiz donates once; a quiz alone in its group keeps itself)."""
    g = torch.Generator().manual_seed(int(seed))
    groups: dict[tuple, list[int]] = {}
    for i, (label, st) in enumerate(zip(test_set.labels, test_set.structures.tolist())):
        groups.setdefault((label, st), []).append(i)
    donors = torch.arange(len(test_set))
    for members in groups.values():
        if len(members) < 2:
            continue
        order = torch.tensor(members)[torch.randperm(len(members), generator=g)]
        donors[order] = order.roll(1)  # each quiz takes the previous one's activation in a random cycle
    return donors


def component_activations(hooked, test_set, hook_name: str, batch_size: int = 50, device=None) -> torch.Tensor:
    """The clean activation at ``hook_name`` of every test quiz (CPU float32,
    (n, 404, ...)): what resample ablation draws from."""
    parts: list[torch.Tensor] = []
    _accumulate(hooked, test_set, [hook_name], batch_size, device, lambda name, rows, act: parts.append(
        act.float().cpu()))
    return torch.cat(parts)


def _batch_ablation(component: Component, mode: str, table: torch.Tensor, index: torch.Tensor):
    """batch_hooks for score_quizzes: rows of the batch -> the component's
    hook with each quiz's replacement ``table[index[row]]``."""
    def hooks(rows: torch.Tensor):
        return [component_hook(component, mode, table[index[rows]])]
    return hooks


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
    seed: int = 0,
) -> AblationResults:
    """Ablate each component with each of ``modes`` (:data:`MODES`) and score
    the test set; see the module docstring for the nulls and the metrics.
    ``hooked``: a TransformerLens model from :mod:`culture.hooked`;
    ``seed``: of the resample donors."""
    modes = list(dict.fromkeys(modes))
    for m in modes:
        if m not in MODES:
            raise AblationError(f"ablation mode must be one of {', '.join(MODES)}, got {m!r}")
    if batch_size < 1:
        raise AblationError(f"batch size must be >= 1, got {batch_size}")
    cfg = hooked.cfg
    comps = list(components) if components is not None else list_components(cfg.n_layers, cfg.n_heads, heads)
    names = test_set.label_names
    hooked.eval()
    prep = [m for m in ("mean", "pooled_mean") if m in modes]
    total = 1 + len(comps) * len(modes) + len(prep)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress("ablations", done, total)

    resamplers: dict = {}
    clean_scores = _score(hooked, test_set, batch_size, device)
    clean = group_metrics(clean_scores, test_set.labels, names, resamplers=resamplers)
    tick()
    tables: dict[str, dict] = {}
    if "mean" in modes:
        tables["mean"] = structure_position_means(hooked, test_set, comps, batch_size, device)
        tick()
    if "pooled_mean" in modes:
        tables["pooled_mean"] = position_means(hooked, test_set, comps, batch_size, device)
        tick()
    donors = resample_donors(test_set, seed) if "resample" in modes else None
    structures = test_set.structures.long()
    rows, resampled = [], None
    for comp in comps:
        if "resample" in modes and (resampled is None or resampled[0] != comp.hook_name):
            resampled = (comp.hook_name, component_activations(hooked, test_set, comp.hook_name, batch_size, device))
        for mode in modes:
            if mode == "zero":
                scores = _score(hooked, test_set, batch_size, device, [component_hook(comp)])
            elif mode == "pooled_mean":
                scores = _score(hooked, test_set, batch_size, device,
                                [component_hook(comp, mode, tables[mode][comp])])
            elif mode == "mean":
                scores = _score(hooked, test_set, batch_size, device,
                                batch_hooks=_batch_ablation(comp, mode, tables[mode][comp], structures))
            else:
                acts = _component_slice(comp, resampled[1])
                scores = _score(hooked, test_set, batch_size, device,
                                batch_hooks=_batch_ablation(comp, mode, acts, donors))
            metrics = group_metrics(scores, test_set.labels, names, baseline=clean_scores, resamplers=resamplers)
            rows.append({"component": comp.name, "kind": comp.kind, "layer": comp.layer, "head": comp.head,
                         "hook": comp.hook_name, "mode": mode, "metrics": metrics})
            tick()
    settings = {"components": len(comps), "modes": modes, "heads": bool(heads),
                "nulls": {m: MODE_MEANINGS[m] for m in modes},
                "resample_seed": int(seed) if "resample" in modes else None,
                "resample_self_donors": int((donors == torch.arange(len(donors))).sum()) if donors is not None
                else None,
                "loss": "cross-entropy per predicted cell (teacher-forced), pooled over the group's cells",
                "ce_all": "mean cross-entropy over all 404 positions",
                "transform_cells": "predicted cells that differ from the paired grid of the clean quiz",
                "change": "ablated minus clean on the same quizzes, paired bootstrap interval",
                "intervals": "95%: Wilson for whole-grid accuracy, bootstrap over quizzes otherwise"}
    return AblationResults(groups=[*names, ALL], clean=clean, rows=rows, settings=settings)


# ------------------------------------------------------------------ pictures


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
    fig = new_figure(max(4.0, 0.55 * len(groups) + 1.8) * len(panels), max(3.0, cell_h * len(rows) + 1.8))
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
    return save_png(fig, path)


def attention_pattern(hooked, quiz: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """(404, 404) attention of head ``layer.head`` over ``quiz`` (404 tokens),
    query x key, in hooked positions: position p reads quiz token p-1 (BOS at 0)."""
    from culture.hooked import to_hooked_tokens

    parse_head(f"{layer}.{head}", hooked.cfg.n_layers, hooked.cfg.n_heads)
    tokens = to_hooked_tokens(torch.as_tensor(quiz).reshape(1, -1)).to(hooked.cfg.device)
    name = act_name("pattern", layer)
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


def _block_axes(ax, markers) -> None:
    """Block boundaries (white lines) and role labels on a 404 x 404 pattern."""
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


def save_attention_png(pattern: torch.Tensor, quiz: torch.Tensor, path: str | os.PathLike,
                       title: str | None = None) -> Path:
    """Draw an attention pattern (404 x 404, hooked positions) with the block
    boundaries (white lines) and the blocks' labels on both axes."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    q = torch.as_tensor(quiz).reshape(1, -1)
    markers = block_markers(q)[0].tolist() if q.shape[1] == QUIZ_LEN else [11, 12, 13, 14]
    fig = new_figure(7.5, 7.0)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.asarray(pattern), cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
                   interpolation="nearest")
    _block_axes(ax, markers)
    ax.set_title(title or "attention pattern", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_png(fig, path)


# ------------------------------------------------------------------ attention over many quizzes

#: key groups of :func:`attention_statistics`, relative to the query's grid:
#: for a query in f(B), "paired grid" is B, "other pair, same side" f(A)
#: (outputs A -> f(A) and B -> f(B) are one side, inputs the other), "other
#: pair, other side" A
KEY_GROUPS = ("BOS", "same grid", "paired grid", "other pair, same side", "other pair, other side")


@dataclass
class AttentionStatistics:
    """One head's attention averaged over test quizzes (see
    :func:`attention_statistics`); ``to_dict()`` is JSON-ready."""

    layer: int
    head: int
    n: int
    by_block: dict  # query group -> key group (KEY_GROUPS) -> {"value", "ci95"}
    offsets: list  # [{"offset", "reads", "mass", "argmax_share"}], by mass
    mean_patterns: dict = field(default_factory=dict, repr=False)  # structure number -> (404, 404)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "head": self.head, "n": self.n, "by_block": self.by_block,
                "offsets": self.offsets, "settings": self.settings}


def describe_offset(d: int) -> str:
    """Which cell the key at look-back offset ``d`` reads, relative to the
    cell the query predicts (quiz token t; the key reads token t-(d+1)):
    e.g. 9 -> "same grid, 1 row up" (the cell above), 100 -> "1 grid back, 1
    column right". The nearest reading: a fixed offset reaches the previous
    grid from a grid's top rows and the same grid below them."""
    back = d + 1
    if back == 1:
        return "the token just read (1 column left)"
    grids = round(back / BLOCK_LEN)
    delta = BLOCK_LEN * grids - back  # > 0: a later cell of that grid than the predicted one
    rows = round(delta / 10)
    cols = delta - 10 * rows
    where = "same grid" if grids == 0 else f"{grids} grid{'s' if grids > 1 else ''} back"
    parts = [f"{abs(rows)} row{'s' if abs(rows) > 1 else ''} {'down' if rows > 0 else 'up'}"] if rows else []
    parts += [f"{abs(cols)} column{'s' if abs(cols) > 1 else ''} {'right' if cols > 0 else 'left'}"] if cols else []
    return f"{where}, {', '.join(parts)}" if parts else f"{where}, same cell"


def attention_statistics(hooked, test_set, layer: int, head: int, *, batch_size: int = 25, device=None,
                         top_offsets: int = 8, progress: Progress | None = None) -> AttentionStatistics:
    """Head ``layer.head``'s attention over every quiz of ``test_set``.

    Positions are TransformerLens's: query position p predicts quiz token p
    (it reads token p-1); key position k reads token k-1 (k = 0: BOS). Query
    groups: the queries predicting the cells of each grid (by role A, f(A),
    B, f(B)), of the answer grid (the predicted block of the structure), and
    of its transform / copy cells. For each query group and key group
    (:data:`KEY_GROUPS`, relative to the query's grid: same grid, paired
    grid...): the attention mass the group's queries put on those keys,
    averaged per quiz, then over quizzes (95% bootstrap interval over
    quizzes). Look-back offsets d = p - k over the answer cells'
    queries: the mean attention weight at each offset and the share of
    queries whose maximum is at that offset (both with intervals over
    quizzes), the ``top_offsets`` largest by mass. ``mean_patterns``: the
    404 x 404 pattern averaged over the quizzes of each structure.
    """
    from culture.hooked import to_hooked_tokens
    from culture.intervals import Resampler

    parse_head(f"{layer}.{head}", hooked.cfg.n_layers, hooked.cfg.n_heads)
    dev = torch.device(device) if device is not None else torch.device(hooked.cfg.device)
    seq = teacher_forced(test_set)
    n, T = seq.shape
    markers = block_markers(test_set.targets)  # (n, 4)
    role_of_marker = {m: i for i, m in enumerate(sorted(MARKER_LABELS))}  # A, f_A, B, f_B -> 0..3
    roles = torch.tensor([[role_of_marker[int(m)] for m in row] for row in markers.tolist()])  # (n, 4)
    # role (0..3 = A, f_A, B, f_B) of the grid each key reads (-1: BOS) and each query predicts
    key_block = torch.cat([torch.full((1,), -1), torch.arange(T - 1) // BLOCK_LEN])  # (T,)
    key_role = torch.where(key_block < 0, -1, roles.gather(1, key_block.clamp_min(0).expand(n, T)))
    query_role = roles.gather(1, (torch.arange(T) // BLOCK_LEN).expand(n, T))  # (n, T)
    # query groups per (quiz, query position): the cells each query predicts
    cell = torch.zeros(T, dtype=torch.bool)
    cell.reshape(N_BLOCKS, BLOCK_LEN)[:, 1:] = True
    answer = ar_mask(seq)
    change = transform_mask(seq, paired=test_set.targets)
    groups = {MARKER_LABELS[m]: (query_role == role_of_marker[m]) & cell for m in sorted(MARKER_LABELS)}
    groups = {"answer": answer, "answer: transform cells": change, "answer: copy cells": answer & ~change, **groups}

    name = act_name("pattern", layer)
    offs = torch.arange(T)
    look = (offs.unsqueeze(1) - offs.unsqueeze(0))  # (query, offset) -> key index p - d
    valid = look >= 0
    look = look.clamp_min(0)
    n_roles = len(KEY_GROUPS)
    mass = {g: torch.zeros(n, n_roles, dtype=torch.float64) for g in groups}
    off_mass = torch.zeros(n, T, dtype=torch.float64)
    off_max = torch.zeros(n, T, dtype=torch.float64)
    sums = torch.zeros(len(STRUCTURES), T, T, dtype=torch.float64)
    counts = torch.zeros(len(STRUCTURES), dtype=torch.float64)
    structures = test_set.structures.long()
    done = 0
    with torch.inference_mode():
        for x in seq.split(batch_size):
            rows = torch.arange(done, done + x.shape[0])
            tokens = to_hooked_tokens(x).to(dev)
            _, cache = hooked.run_with_cache(tokens, names_filter=[name], stop_at_layer=layer + 1,
                                             attention_mask=torch.ones_like(tokens))
            pat = cache[name][:, head].double().cpu()  # (b, query, key)
            b = pat.shape[0]
            # relation of key to query grid: same role 1, partner (xor 1) 2, other pair same side (xor 2) 3,
            # other pair other side (xor 3) 4; BOS 0
            kr, qr = key_role[rows].unsqueeze(1), query_role[rows].unsqueeze(2)
            relation = torch.where(kr < 0, 0, 1 + (kr.clamp_min(0) ^ qr))  # (b, query, key)
            per_query = torch.stack([(pat * (relation == j)).sum(-1) for j in range(n_roles)], -1)
            for g, qmask in groups.items():
                m = qmask[rows].double()
                mass[g][rows] = (per_query * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
            a = answer[rows].double()  # (b, query)
            by_offset = pat.gather(2, look.expand(b, T, T)) * valid  # (b, query, offset)
            off_mass[rows] = (by_offset * a.unsqueeze(-1)).sum(1) / a.sum(1, keepdim=True).clamp_min(1)
            top = (offs.unsqueeze(0) - pat.argmax(-1))  # (b, query): offset of the maximum
            hits = torch.nn.functional.one_hot(top, T).double() * a.unsqueeze(-1)
            off_max[rows] = hits.sum(1) / a.sum(1, keepdim=True).clamp_min(1)
            sums.index_add_(0, structures[rows], pat)
            counts += torch.bincount(structures[rows], minlength=len(STRUCTURES)).double()
            done += b
            if progress is not None:
                progress("attention", done, n)

    R = Resampler(n)
    by_block = {}
    for g in groups:
        has = groups[g].any(1).numpy().astype(float)  # quizzes with queries in the group
        by_block[g] = {key: R.ratio(mass[g][:, j].numpy() * has, has) for j, key in enumerate(KEY_GROUPS)}
    mean_mass = off_mass.mean(0)
    order = torch.argsort(mean_mass, descending=True)[:top_offsets].tolist()
    offsets = [{"offset": d, "reads": describe_offset(d), "mass": R.mean(off_mass[:, d].numpy()),
                "argmax_share": R.mean(off_max[:, d].numpy())} for d in order]
    mean_patterns = {str(k + 1): (sums[k] / counts[k]).float() for k in range(len(STRUCTURES)) if counts[k] > 0}
    settings = {
        "positions": "TransformerLens positions: query p predicts quiz token p, key k reads quiz token k-1 "
                     "(k = 0: BOS)",
        "by_block": "attention mass of a query group's queries on each key group (relative to the query's "
                    "grid), mean per quiz, then over quizzes",
        "offsets": "look-back offset d = query - key over the answer cells' queries: mean attention weight "
                   "and share of queries whose maximum is at d; mean over quizzes",
        "intervals": "95% bootstrap over quizzes",
    }
    return AttentionStatistics(layer, head, n, by_block, offsets, mean_patterns, settings)


def save_mean_attention_png(stats: AttentionStatistics, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the head's mean pattern per structure (one panel each), block
    boundaries and block roles marked."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    panels = list(stats.mean_patterns.items())
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = new_figure(6.0 * cols, 5.6 * rows)
    for i, (k, pattern) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        im = ax.imshow(np.asarray(pattern), cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
                       interpolation="nearest")
        _block_axes(ax, STRUCTURES[int(k) - 1].markers)
        ax.set_title(f"structure {k} {STRUCTURES[int(k) - 1].name}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.subplots_adjust(wspace=0.35, hspace=0.3)
    fig.suptitle(title or f"head {stats.layer}.{stats.head}: attention averaged over {stats.n} quizzes",
                 fontsize=10)
    return save_png(fig, path)
