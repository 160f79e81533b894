"""Universal neurons the way Gurnee et al. (2024) measure them, streamed.

For two models i, j (their repo wesg52/universal-neurons:
``correlations_fast.py``, ``analysis/correlations.py``, ``analysis/neuron_df.py``):

* a neuron's **max-corr** with model j: its highest Pearson correlation with
  any neuron of *any* layer of j (``blocks.L.mlp.hook_post``, same tokens);
  where that partner lives (its layer) is kept;
* its **baseline max-corr**: the same against a null version of j -
  ``rotation`` (default; j's activations of each layer times a random
  orthogonal matrix, which keeps their covariance but not their basis),
  ``permutation`` (j's activations of another quiz at the same position:
  :class:`QuizRoller`) or ``gaussian`` (independent
  standard normal units);
* **excess** = mean over j of max-corr - mean over j of baseline max-corr;
  a neuron is **universal** when its excess exceeds the threshold (0.5).

Everything is computed under each *control* (:mod:`~culture.universality.controls`)
from one set of moments: float64 co-moments per model pair, accumulated
separately on the quizzes of even and odd index (the two halves of the
**held-out replication**: best partners found on the even half, their
correlation measured on the odd half), per-group sums for every control, and
each layer's self co-moment for the rotation baseline (its rotated units'
variances, diag(R C R^T); the rest is exact algebra on the moments, no
second pass).
Memory: pairs x (neurons of all layers)^2 x 2 halves, never the tokens; the
analysis reads those co-moments a block of rows at a time
(:mod:`~culture.universality.memory`).

The **intervals** of the shares come from a second pass over the same
quizzes (:class:`NeuronBlockSums`): per block of quizzes, the sums that give
a neuron's correlation with its chosen partners, resampled over blocks
(bootstrap over quizzes; tokens within a quiz are not independent). The
partners stay those chosen on the data, so the in-sample interval is
conditional on the matching; the held-out figures have no selection in them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from culture.universality.controls import add_to_groups, n_groups
from culture.universality.stats import (
    Centered,
    CrossTiles,
    GroupSums,
    MergedGroupSums,
    StreamingCorrelation,
    block_weights,
    between_group_m2,
    corr_from_sums,
    percentile_interval,
    random_orthogonal,
    correlation_of,
    rotated_variances,
    scratch_buffer,
)
from culture.universality_settings import BASELINES

#: bootstrap replicates computed at once (memory: chunk x neurons x pairs)
_CHUNK = 100


class QuizRoller:
    """The shuffled-quiz null: activations (n, P, W) of quiz k-1 put at quiz
    k's slot (same positions, another quiz), across batches: the first quiz
    of a batch gets the previous batch's last one (the very first batch is
    rolled within itself). One roller per pass, fed the batches in order, so
    both passes pair the same quizzes."""

    def __init__(self):
        self.last: dict = {}

    def __call__(self, key, a: torch.Tensor) -> torch.Tensor:
        prev = self.last.get(key)
        out = torch.roll(a, 1, dims=0) if prev is None else torch.cat([prev, a[:-1]], 0)
        self.last[key] = a[-1:].clone()
        return out


def null_units(kind: str, key, a: torch.Tensor, roller: QuizRoller, generator: torch.Generator):
    """The null version of activations a (n, P, W) for a streamed baseline
    (``permutation``: shuffled quizzes; ``gaussian``: independent standard
    normals), None for ``rotation`` (exact from the moments)."""
    if kind == "permutation":
        return roller(key, a)
    if kind == "gaussian":
        return torch.randn(a.shape, generator=generator, dtype=torch.float32).to(a.device)
    return None


def rotations_for(layer_sizes: list[list[int]], seed: int) -> list[list[torch.Tensor]]:
    """The random orthogonal matrices of the rotation baseline: per model, per
    compared layer, (H, H) float64, from ``seed`` (what :class:`NeuronMoments` uses)."""
    g = torch.Generator().manual_seed(int(seed) * 7 + 11)
    return [[random_orthogonal(h, g) for h in sizes] for sizes in layer_sizes]


# ----------------------------------------------------------------- pass 1


class NeuronMoments:
    """Pass 1 for one group of models: co-moments per pair and half, group
    sums per control, self co-moments per layer (rotation) or null co-moments
    (permutation / gaussian)."""

    def __init__(self, layer_sizes: list[list[int]], controls, n_positions: int, baseline: str,
                 compute_dtype: torch.dtype, seed: int, heldout: bool = True):
        self.layer_sizes = layer_sizes  # per model: neurons of each chosen layer
        self.widths = [int(sum(s)) for s in layer_sizes]
        self.offsets = [np.concatenate([[0], np.cumsum(s)]).astype(int) for s in layer_sizes]
        self.controls = list(controls)
        self.n_positions = n_positions
        self.baseline = baseline
        self.compute_dtype = compute_dtype
        m = len(layer_sizes)
        self.m = m
        self.pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        self.heldout = heldout
        self.tile_rows = None  # rows of the co-moments analysed at once (None: all; see memory_plan)
        self.row_blocks = None  # pass 1 in row blocks spilled to disk (None: one sweep, in memory)
        self.groups_on_disk = False  # in row blocks: the group sums and layer co-moments too
        self.sweep = 0
        self._spilled: dict = {}
        h = 2 if heldout else 1  # accumulators per pair: even / odd quizzes, or all
        self.n_halves = h

        def acc():
            return StreamingCorrelation(compute_dtype=compute_dtype)

        self._acc = acc
        self.cross = {p: [acc() for _ in range(h)] for p in self.pairs}
        self.groups = {c: [[GroupSums(n_groups(c, n_positions)) for _ in range(h)] for _ in range(m)]
                       for c in self.controls if c != "none"}
        self.rotations = None
        self.layer_comoments = None
        self._rotated_m2_cache = {}  # a rotation's m2 per (split, model, layer), shared by the controls
        self._draw_views = None  # control -> _ControlViews, kept from one rotation draw to the next
        self.null = None
        self.null_groups = None
        if baseline == "rotation":
            self.rotation_seed = seed
            self.own_rotation = True  # False while the rotations are a further draw (:meth:`use_rotations`)
            # the rotated units' m2 under any rotation R, diag(R C R^T), from each layer's self co-moment C
            # (H x H per model, layer and half); pass 1 needs no rotation, the analysis makes them
            self.layer_comoments = [[[acc() for _ in range(h)] for _ in sizes] for sizes in layer_sizes]
        else:
            self.ordered = [(i, j) for i in range(m) for j in range(m) if i != j]
            self.null = {p: [acc() for _ in range(h)] for p in self.ordered}
            self.null_groups = {c: {p: [GroupSums(n_groups(c, n_positions)) for _ in range(h)]
                                    for p in self.ordered} for c in self.controls if c != "none"}

    # ------------------------------------------------------ row blocks

    def use_row_blocks(self, row_blocks, groups_on_disk: bool = True) -> None:
        """Accumulate pass 1's cross co-moments a :class:`~culture.universality.spill.RowBlocks`
        block of rows per sweep over the quizzes (:meth:`begin_sweep` /
        :meth:`end_sweep`), each finished block written to disk, and with
        ``groups_on_disk`` the group sums and self co-moments of that block's
        layers likewise; everything else is accumulated in the first sweep.
        None: one sweep, in memory."""
        self.row_blocks = row_blocks
        self.groups_on_disk = row_blocks is not None and groups_on_disk

    @property
    def n_sweeps(self) -> int:
        return 1 if self.row_blocks is None else len(self.row_blocks.blocks)

    def _block_rows(self, i: int) -> tuple[int, int]:
        """Model i's rows accumulated in this sweep."""
        if self.row_blocks is None:
            return 0, self.widths[i]
        k0, k1 = self.row_blocks.blocks[self.sweep]
        return int(self.offsets[i][k0]), int(self.offsets[i][k1])

    def _row_accumulators(self):
        """(kind, ordered pair, accumulators per half) of the co-moments kept in row blocks."""
        out = [("cross", p, a) for p, a in self.cross.items()]
        if self.null is not None:
            out += [("null", p, a) for p, a in self.null.items()]
        return out

    def _sweep_columns(self, a: torch.Tensor, i: int) -> torch.Tensor:
        """Model i's units (..., W_i) whose group sums this sweep adds: this
        row block's layers when the group sums go to disk by blocks, else all
        of them (in the first sweep)."""
        return a[..., slice(*self._block_rows(i))] if self.groups_on_disk else a

    def _sweep_layers(self) -> range:
        """The compared layers whose per-layer accumulators this sweep adds to."""
        if self.groups_on_disk:
            return range(*self.row_blocks.blocks[self.sweep])
        return range(len(self.layer_sizes[0])) if self.sweep == 0 else range(0)

    def _spill_layer_comoments(self, last: bool) -> None:
        """Write this sweep's layers' self co-moments to their files (read back
        one layer at a time by :meth:`_rotated_var`)."""
        from culture.universality.spill import SpilledRows

        if self.layer_comoments is None or not self.groups_on_disk:
            return
        for i, per_layer in enumerate(self.layer_comoments):
            for k in self._sweep_layers():
                for h, acc in enumerate(per_layer[k]):
                    if isinstance(acc.comoment, torch.Tensor):
                        store = SpilledRows(self.row_blocks.new_path(f"layer-{i}-{k}-{h}"), tuple(acc.comoment.shape),
                                            acc.comoment.device, acc.comoment.dtype)
                        store.write(0, acc.comoment)
                        acc.comoment = store

    def _group_accumulators(self):
        """(name, holder, half, model) of every group sums: ``holder[half]`` is
        one, over model ``model``'s units (its neurons or its null units)."""
        for c, per_model in (self.groups or {}).items():
            for i, holder in enumerate(per_model):
                for h in range(len(holder)):
                    yield f"groups-{c}-{i}-{h}", holder, h, i
        for c, per_pair in (self.null_groups or {}).items():
            for (i, j), holder in per_pair.items():
                for h in range(len(holder)):
                    yield f"null-groups-{c}-{i}-{j}-{h}", holder, h, j

    def _spill_groups(self, last: bool) -> None:
        """Write this sweep's columns of the group sums to their files; after
        the last sweep the group sums read from the files (one block of
        columns at a time), until then fresh sums for the next block."""
        from culture.universality.spill import SpilledColumns

        if not self.groups_on_disk:
            return
        for name, holder, h, model in self._group_accumulators():
            gs = holder[h]
            if gs.sums is None:
                continue
            if name not in self._spilled:
                self._spilled[name] = SpilledColumns(self.row_blocks.new_path(name),
                                                     (gs.n_groups, self.widths[model]), gs.sums.device, gs.dtype)
            store = self._spilled[name]
            store.write(self._block_rows(model)[0], gs.sums)
            if last:
                gs.sums = store
            else:
                holder[h] = GroupSums(gs.n_groups, dtype=gs.dtype)

    def use_rotations(self, seed: int | None) -> None:
        """Set the baseline's rotations: a further draw from ``seed``, or the
        reported rotation (None: made from its own seed). Either way the
        rotated units' m2 comes from the layers' self co-moments."""
        self.rotations = None  # one set of rotations held at a time
        own = seed is None
        if own:
            self._draw_views = None  # the draws are over
        self.rotations = rotations_for(self.layer_sizes, self.rotation_seed if own else seed)
        self.own_rotation = own
        self._rotated_m2_cache = {}

    def begin_sweep(self, sweep: int) -> None:
        """Start sweep ``sweep`` (fresh accumulators for its block of rows)."""
        self.sweep = int(sweep)
        if self.row_blocks is None or self.sweep == 0:
            return
        for _, _, accs in self._row_accumulators():
            for h in range(len(accs)):
                accs[h] = self._acc()

    def end_sweep(self) -> None:
        """Write this sweep's rows (and group sums' columns) to disk; after the
        last sweep, put back accumulators whose co-moment is the whole spilled
        matrix (read by row blocks) and whose x moments are the blocks' joined."""
        if self.row_blocks is None:
            return
        from culture.universality.spill import SpilledRows

        last = self.sweep == len(self.row_blocks.blocks) - 1
        for kind, (i, j), accs in self._row_accumulators():
            start, stop = self._block_rows(i)
            for h, acc in enumerate(accs):
                if acc.comoment is None:
                    continue
                key = (kind, i, j, h)
                if key not in self._spilled:
                    path = self.row_blocks.new_path(f"{kind}-{i}-{j}-{h}")
                    self._spilled[key] = (SpilledRows(path, (self.widths[i], acc.comoment.shape[1]),
                                                      acc.comoment.device, acc.comoment.dtype), [], [])
                rows, means, m2s = self._spilled[key]
                rows.write(start, acc.comoment)
                means.append(acc.mean_x)
                m2s.append(acc.m2_x)
                acc.comoment = None
                if last:
                    acc.comoment = rows
                    acc.mean_x, acc.m2_x = torch.cat(means), torch.cat(m2s)
        self._spill_groups(last)
        self._spill_layer_comoments(last)
        if last:
            self._spilled = {}

    def update(self, acts: list[torch.Tensor], labels, half: torch.Tensor, nulls: list[torch.Tensor] | None) -> None:
        """acts: per model (n, P, W_i); half: (n,) 0/1; nulls: per model the null units (n, P, W_i).
        In row blocks: this sweep's rows of the co-moments and columns of the
        group sums only, the rest in the first sweep."""
        if not self.heldout:
            half = torch.zeros_like(half)
        first = self.sweep == 0
        for h in ((0, 1) if self.heldout else (0,)):
            rows = half == h
            if not bool(rows.any()):
                continue
            sub = [a[rows] for a in acts]
            flat = [s.reshape(-1, s.shape[-1]) for s in sub]
            prepared = [Centered.of(f, compute_dtype=self.compute_dtype) for f in flat]
            block = [prepared[i] if self.row_blocks is None else prepared[i].columns(*self._block_rows(i))
                     for i in range(self.m)]
            for (i, j) in self.pairs:
                self.cross[(i, j)][h].update(block[i], prepared[j])
            if first or self.groups_on_disk:
                for c, per_model in self.groups.items():
                    for i in range(self.m):
                        add_to_groups(per_model[i][h], self._sweep_columns(sub[i], i), labels, c, rows, subset=True)
            if self.layer_comoments is not None:
                for i in range(self.m):
                    off = self.offsets[i]
                    for k in self._sweep_layers():
                        self.layer_comoments[i][k][h].update(prepared[i].columns(int(off[k]), int(off[k + 1])))
            else:
                null_flat = [nl[rows].reshape(-1, nl.shape[-1]) for nl in nulls]
                null_prep = [Centered.of(f, compute_dtype=self.compute_dtype) for f in null_flat]
                for (i, j) in self.ordered:
                    self.null[(i, j)][h].update(block[i], null_prep[j])
                if first or self.groups_on_disk:
                    for c, per_pair in self.null_groups.items():
                        for (i, j) in self.ordered:
                            add_to_groups(per_pair[(i, j)][h], self._sweep_columns(nulls[j], j), labels, c, rows)
            del prepared, block

    def release(self) -> None:
        """Drop pass 1's accumulators (co-moments, group sums, rotations):
        once the analysis, the rotation draws and pass 2's block sums are
        made, nothing reads them (the block sums keep the columns they need)."""
        self.cross = self.null = self.groups = self.null_groups = self.rotations = None
        self.layer_comoments = None
        self._self_cache = {}
        self._rotated_m2_cache = {}
        self._draw_views = None

    # ------------------------------------------------------------ results

    def _split(self, items, split):
        """The accumulator (or group sums) of one split: 0, 1 or "full" (small
        accumulators only, e.g. one layer's self co-moments: cross
        co-moments are read through :meth:`views`)."""
        if split == "full":
            if len(items) == 1:
                return items[0]
            if isinstance(items[0], GroupSums) and items[0].sums is not None and items[1].sums is not None:
                return MergedGroupSums(items[0], items[1])  # read a block at a time, no (G, W) copy
            return items[0].merged(items[1])
        return items[split]

    def views(self, items, split, groups_x=None, groups_y=None) -> CrossTiles | None:
        """The moments of one split (0, 1 or "full": both halves merged) of a
        pair's accumulators, within groups when group sums are given."""
        parts = list(items) if split == "full" else [items[split]]
        if all(p.comoment is None for p in parts):
            return None
        return CrossTiles(parts, groups_x, groups_y)

    def row_tiles(self, i: int, tile_rows: int | None) -> list[tuple[int, int, list[int]]]:
        """Blocks of model i's rows (whole layers, at most ``tile_rows`` rows
        unless one layer is wider; None: one block): (start, stop, layers)."""
        off = self.offsets[i]
        out, layers = [], []
        for k in range(len(self.layer_sizes[i])):
            if layers and tile_rows is not None and off[k + 1] - off[layers[0]] > tile_rows:
                out.append((int(off[layers[0]]), int(off[layers[-1] + 1]), layers))
                layers = []
            layers.append(k)
        if layers:
            out.append((int(off[layers[0]]), int(off[layers[-1] + 1]), layers))
        return out

    def _control_views(self, control: str) -> "_ControlViews":
        """What an analysis under ``control`` reads: per split, each model's
        group sums and each pair's moments within those groups; the dead
        units; whether the held-out split is measured (both halves for every
        pair) and, then, the units alive in both halves."""
        m = self.m
        splits = ("full", 0, 1) if self.heldout else ("full",)
        gs = {split: [None if control == "none" else self._split(self.groups[control][i], split) for i in range(m)]
              for split in splits}
        views, dead = {}, {}
        for split in splits:
            for (i, j) in self.pairs:
                v = self.views(self.cross[(i, j)], split, gs[split][i], gs[split][j])
                if v is None:
                    continue
                views[(split, i, j)] = v
                dead.setdefault((split, i), v.dead_x)
                dead.setdefault((split, j), v.dead_y)
        held = self.heldout and all((s, i, j) in views for s in (0, 1) for (i, j) in self.pairs)
        ok = {i: ~dead[(0, i)] & ~dead[(1, i)] for i in range(m)} if held else {}
        return _ControlViews(gs, views, dead, held, ok)

    def analyse(self, control: str, threshold: float, tile_rows: int | None = None) -> "NeuronAnalysis":
        """Max-corr, baseline, excess and held-out figures under ``control``
        (:meth:`analyse_controls` with that control alone)."""
        return self.analyse_controls([control], threshold, tile_rows)[control]

    def analyse_controls(self, controls, threshold: float, tile_rows: int | None = None) -> dict:
        """Per control: max-corr, baseline, excess and held-out figures.

        The co-moments are read ``tile_rows`` rows (whole layers) at a time:
        temporaries are a few (tile_rows x neurons) blocks; the results do not
        depend on ``tile_rows`` (bit for bit). Default: ``self.tile_rows``.
        The rotation baseline is made for every control together
        (:meth:`_rotation_baselines`)."""
        tile_rows = self.tile_rows if tile_rows is None else tile_rows
        self._self_cache = {}
        ctx = {c: self._control_views(c) for c in controls}
        outs = {}
        for control, cv in ctx.items():
            out = NeuronAnalysis(control, threshold, self.layer_sizes, self.baseline)
            for i in range(self.m):
                out.dead[i] = cv.dead[("full", i)].cpu().numpy()
                if cv.held:
                    out.held_alive[i] = cv.ok[i].cpu().numpy()
            for (i, j) in self.pairs:
                if ("full", i, j) in cv.views:
                    self._analyse_pair(out, i, j, cv, tile_rows)
            if self.baseline != "rotation":
                for (i, j) in self.ordered:
                    self._null_rows(out, control, i, j, cv, tile_rows)
            outs[control] = out
        if self.baseline == "rotation":
            if self.rotations is None:
                self.use_rotations(None)
            self._rotation_baselines(outs, ctx, tile_rows)
        for c, out in outs.items():
            _finish(out, ctx[c].ok)
        return outs

    def analyse_draw(self, likes: dict, tile_rows: int | None = None) -> dict:
        """Under a further rotation draw (:meth:`use_rotations` with a seed),
        the rotation baseline of every control of ``likes`` (control -> an
        analysis of these moments under that control, made under another
        rotation). Each returned analysis takes the figures that do not depend
        on the rotation (max-corr, same-layer and held-out partners, dead
        units) from its ``like``."""
        if self.baseline != "rotation":
            raise ValueError("analyse_draw: the rotation baseline only")
        tile_rows = self.tile_rows if tile_rows is None else tile_rows
        self._self_cache = {}
        # the views within each control's groups do not depend on the rotation: made at the first
        # draw, kept for the next ones (:meth:`use_rotations` back to the reported rotation drops them)
        if self._draw_views is None or set(self._draw_views) != set(likes):
            self._draw_views = None
            self._draw_views = {c: self._control_views(c) for c in likes}
        ctx = self._draw_views
        outs = {}
        for c, like in likes.items():
            out = NeuronAnalysis(c, like.threshold, self.layer_sizes, self.baseline, dead=like.dead,
                                 held_alive=like.held_alive)
            out.pair_max, out.pair_arg, out.same_layer_max = like.pair_max, like.pair_arg, like.same_layer_max
            out.held_arg, out.held_corr = like.held_arg, like.held_corr
            outs[c] = out
        self._rotation_baselines(outs, ctx, tile_rows)
        for c, out in outs.items():
            _finish(out, ctx[c].ok)
        return outs

    def _rotation_baselines(self, outs: dict, ctx: dict, tile_rows: int | None) -> None:
        """The rotation baseline of every control of ``outs`` under the current
        rotations, both directions of every pair, into ``outs``.

        The controls are walked together, block by block as the max-corr is.
        The raw block of the co-moment (not centred within groups) is rotated
        once per half of the quizzes, the full split following by linearity
        ((C0 + C1 + f dx dy^T) R^T); a control's within-group block in the
        rotated basis is that less its between-group part, (N Dx)^T (Dy R^T):
        products over the G groups in place of one over all neurons per
        control and split. A control with so many groups that this costs more
        (:func:`_corrected_after_rotation`) has its within-group block
        rotated instead. Both ways give the same numbers up to the rounding of
        the compute dtype (tested)."""
        for (i, j) in self.pairs:
            controls = [c for c in outs if ("full", i, j) in ctx[c].views]
            if controls:
                self._baseline_pair(outs, ctx, controls, i, j, tile_rows)

    def _rotated_var(self, control, split, j, k, gs) -> torch.Tensor:
        """(H,) m2 of model j's layer-k units after the baseline rotation, within
        the control's groups (cached per analysis): their m2 (:meth:`_rotated_m2`)
        less the between-group part, whose group means are the rotated group
        means. Every split of the control is made at once: with both halves,
        the full split's rotated group sums are the halves' added (rotation is
        linear), two products over the G groups instead of three."""
        key = (control, split, j, k)
        if key not in self._self_cache:
            if control == "none":
                self._self_cache[key] = self._rotated_m2(split, j, k)
                return self._self_cache[key]
            oj = self.offsets[j]
            rotation = self.rotations[j][k]
            halves = self.heldout  # the control's group sums per half, and their merge ("full")
            occupied = torch.nonzero(gs["full" if halves else split][j].counts > 0).flatten()
            made = {}  # split -> rotated group sums of the groups with tokens
            for s in ((0, 1) if halves else (split,)):
                g = gs[s][j]
                counts = g.counts[occupied]
                made[s] = GroupSums(len(occupied)).add(
                    _rotated_sums(g.block(oj[k], oj[k + 1])[occupied], counts, rotation, self.compute_dtype), counts)
            if halves:
                made["full"] = made[0].merged(made[1])
            for s, rotated in made.items():
                used = torch.nonzero(rotated.counts > 0).flatten()
                c = rotated.counts[used]
                mean = rotated.sums[used].sum(0) / c.sum()  # R mean
                between = between_group_m2(rotated, used, c, mean, c.device)
                self._self_cache[(control, s, j, k)] = (self._rotated_m2(s, j, k) - between).clamp(min=0)
        return self._self_cache[key]

    def _rotated_m2(self, split, j, k) -> torch.Tensor:
        """(H,) m2 of model j's layer-k units under the rotations held (the
        reported one or a further draw): diag(R C R^T) from the layer's self
        co-moment C (kept until the rotations change: the controls share
        it), one product after the quizzes in place of rotating every batch's
        activations (which costs as much as C's own product). With both halves,
        the full split follows from theirs: C = C0 + C1 + f d d^T (d the
        difference of the halves' means), so diag(R C R^T) = v0 + v1 + f (R d)^2."""
        key = (split, j, k)
        if key not in self._rotated_m2_cache:
            accs = self.layer_comoments[j][k]
            if split == "full" and len(accs) == 2 and all(a.comoment is not None for a in accs):
                a0, a1 = accs
                rd = (a1.mean_x - a0.mean_x) @ self.rotations[j][k].to(a0.mean_x).t()
                m2 = self._rotated_m2(0, j, k) + self._rotated_m2(1, j, k)
                self._rotated_m2_cache[key] = m2 + (a0.n * a1.n / (a0.n + a1.n)) * rd * rd
            else:
                one = _in_memory(accs[split]) if split != "full" else self._split([_in_memory(a) for a in accs], split)
                comoment = one.comoment
                self._rotated_m2_cache[key] = rotated_variances(comoment, self.rotations[j][k])
        return self._rotated_m2_cache[key]

    def _analyse_pair(self, out: "NeuronAnalysis", i: int, j: int, cv: "_ControlViews", tile_rows: int | None) -> None:
        """Model pair i < j, read in blocks of (rows of i: whole layers, at most
        ``tile_rows``) x (one layer of j): both directions' max-corr (running
        maxima over j's layers for i's neurons, over i's row blocks for j's),
        same-layer maxima and held-out (partner chosen on split 0, measured on
        split 1); the baselines are made apart. Temporaries: a few (rows x
        d_mlp) blocks."""
        oi, oj = self.offsets[i], self.offsets[j]
        views, held = cv.views, cv.held
        dev = views[("full", i, j)].m2_x.device
        same_ij = torch.zeros(self.widths[i], dtype=torch.float64, device=dev)
        same_ji = torch.zeros(self.widths[j], dtype=torch.float64, device=dev)
        layers_j = range(len(self.layer_sizes[j]))
        n_same = min(len(self.layer_sizes[i]), len(self.layer_sizes[j]))
        # j's neurons: running maxima over i's row blocks, one per layer of j
        col_pair, col_held = [_Running() for _ in layers_j], [_Running() for _ in layers_j]
        rows_pair, rows_held = [], []  # i's neurons, per row block
        for start, stop, layers in self.row_tiles(i, tile_rows):
            pair, held_r = _Running(), _Running()
            for kj in layers_j:
                cols = (int(oj[kj]), int(oj[kj + 1]))
                corr = {split: views[(split, i, j)].corr_tile(start, stop, cols=cols) for split in cv.splits}
                c = corr["full"]
                _best_along(pair, held_r, corr, 1, cols[0], held)
                _best_along(col_pair[kj], col_held[kj], corr, 0, start, held)
                for k in layers:
                    if k == kj and k < n_same:
                        blk = c[oi[k] - start:oi[k + 1] - start]
                        same_ij[oi[k]:oi[k + 1]] = blk.max(1).values
                        same_ji[oj[k]:oj[k + 1]] = blk.max(0).values
            rows_pair.append(pair)
            rows_held.append(held_r)
        out.pair_max[(i, j)], out.pair_arg[(i, j)], _ = _joined(rows_pair)
        out.pair_max[(j, i)], out.pair_arg[(j, i)], _ = _joined(col_pair)
        out.same_layer_max[(i, j)], out.same_layer_max[(j, i)] = same_ij, same_ji
        if held:
            _, out.held_arg[(i, j)], out.held_corr[(i, j)] = _joined(rows_held)
            _, out.held_arg[(j, i)], out.held_corr[(j, i)] = _joined(col_held)

    def _baseline_pair(self, outs: dict, ctx: dict, controls: list, i: int, j: int, tile_rows: int | None) -> None:
        """:meth:`_rotation_baselines` for model pair i < j: both directions' rotation
        baselines (i's neurons against j's rotated units, j's against i's) of
        every control, in blocks of (rows of i: whole layers) x (one layer of
        j). The controls corrected after rotation share the rotated raw blocks;
        the others are done one at a time (a control's within-group block in
        each split is held while both directions read it)."""
        oi, oj = self.offsets[i], self.offsets[j]
        cd = self.compute_dtype
        halves = any(ctx[c].held for c in controls)  # then the full split's raw block follows from the halves'
        raw_splits = (0, 1) if halves else ("full",)
        raw = {s: self.views(self.cross[(i, j)], s) for s in raw_splits + (("full",) if halves else ())}
        merge = raw["full"]._merge if halves else None  # (f, dx, dy) of the halves' merge
        layers_j = range(len(self.layer_sizes[j]))
        rows_best = {c: [] for c in controls}
        cols_best = {c: [(_Running(), _Running()) for _ in layers_j] for c in controls}
        for start, stop, layers in self.row_tiles(i, tile_rows):
            rows = slice(start, stop)
            row_best = {c: (_Running(), _Running()) for c in controls}
            for kj in layers_j:
                cols = (int(oj[kj]), int(oj[kj + 1]))
                c0, c1 = cols
                blocks = {s: raw[s].tile(start, stop, cols) for s in raw_splits}
                rj = self.rotations[j][kj].to(blocks[raw_splits[0]].device)
                rj_c = rj.to(cd)  # once per block: every control and split multiplies by it
                linear = [c for c in controls
                          if _corrected_after_rotation(ctx[c].views[("full", i, j)].n_groups, stop - start, c1 - c0)]

                def forward(group, cross):  # i's rows against j's rotated layer kj
                    _fold_baseline(ctx, group, cross, lambda c, s: ctx[c].views[(s, i, j)].m2_x[rows],
                               lambda c, s: self._rotated_var(c, s, j, kj, ctx[c].gs),
                               lambda c, s: ctx[c].dead[(s, i)][rows], lambda c: row_best[c], c0)

                def backward(group, cross, k):  # j's layer-kj units against i's rotated layer k
                    _fold_baseline(ctx, group, cross, lambda c, s: ctx[c].views[(s, i, j)].m2_y[c0:c1],
                               lambda c, s: self._rotated_var(c, s, i, k, ctx[c].gs),
                               lambda c, s: ctx[c].dead[(s, j)][c0:c1], lambda c: cols_best[c][kj], int(oi[k]))

                if linear:
                    factors = {(c, s): ctx[c].views[(s, i, j)].between_factors(start, stop, cols)
                               for c in linear for s in ctx[c].splits if ctx[c].views[(s, i, j)].n_groups}
                    f_dx_dy = None if merge is None else (merge[0], merge[1][rows], merge[2][c0:c1])
                    rotated = _rotate_splits(blocks, rj, rj_c, f_dx_dy)
                    forward(linear, lambda c, s: _less_between(rotated[s], factors.get((c, s)), rj_c))
                    for k in layers:
                        a, b = int(oi[k]) - start, int(oi[k + 1]) - start
                        ri = self.rotations[i][k].to(rj.device)
                        ri_c = ri.to(cd)
                        f_dy_dx = None if merge is None else (merge[0], merge[2][c0:c1], merge[1][oi[k]:oi[k + 1]])
                        back = _rotate_splits({s: blk[a:b].t() for s, blk in blocks.items()}, ri, ri_c, f_dy_dx)
                        transposed = {key: (dy.t(), rows_factor[a:b].t()) for key, (rows_factor, dy) in factors.items()}
                        backward(linear, lambda c, s: _less_between(back[s], transposed.get((c, s)), ri_c), k)
                for c in controls:
                    if c in linear:
                        continue
                    within = {s: ctx[c].views[(s, i, j)].tile(start, stop, cols) for s in ctx[c].splits}
                    forward([c], lambda c, s: _rotated(within[s], rj_c))
                    for k in layers:
                        a, b = int(oi[k]) - start, int(oi[k + 1]) - start
                        ri_c = self.rotations[i][k].to(device=rj.device, dtype=cd)
                        backward([c], lambda c, s: _rotated(within[s][a:b].t(), ri_c), k)
                    del within
            for c in controls:
                rows_best[c].append(row_best[c])
        for c in controls:
            out = outs[c]
            out.base_max[(i, j)], out.base_arg[(i, j)], _ = _joined([b[0] for b in rows_best[c]])
            out.base_max[(j, i)], out.base_arg[(j, i)], _ = _joined([b[0] for b in cols_best[c]])
            if ctx[c].held:
                _, out.held_base_arg[(i, j)], out.held_base[(i, j)] = _joined([b[1] for b in rows_best[c]])
                _, out.held_base_arg[(j, i)], out.held_base[(j, i)] = _joined([b[1] for b in cols_best[c]])

    def _null_rows(self, out, control, i, j, cv: "_ControlViews", tile_rows) -> None:
        """Permutation / gaussian baseline of ordered pair (i, j): model i's
        correlations with j's null units, in blocks of (rows of i) x (one layer of j)."""
        splits, dead, held = cv.splits, cv.dead, cv.held
        views = {}
        for split in splits:
            gy = None if control == "none" else self._split(self.null_groups[control][(i, j)], split)
            views[split] = self.views(self.null[(i, j)], split, cv.gs[split][i], gy)
        oj = self.offsets[j]
        rows_base, rows_held_base = [], []
        for start, stop, _ in self.row_tiles(i, tile_rows):
            rows = slice(start, stop)
            base, held_base = _Running(), _Running()
            for kj in range(len(self.layer_sizes[j])):
                cols = (int(oj[kj]), int(oj[kj + 1]))
                corr = {}
                for split in splits:
                    b = views[split].corr_tile(start, stop, cols=cols)
                    b[dead[(split, i)][rows]] = 0.0
                    corr[split] = b
                _best_along(base, held_base, corr, 1, cols[0], held)
            rows_base.append(base)
            rows_held_base.append(held_base)
        out.base_max[(i, j)], out.base_arg[(i, j)], _ = _joined(rows_base)
        if held:
            _, out.held_base_arg[(i, j)], out.held_base[(i, j)] = _joined(rows_held_base)


@dataclass
class _ControlViews:
    """What an analysis under one control reads (:meth:`NeuronMoments._control_views`)."""

    gs: dict  # split -> per model: group sums (None for "none")
    views: dict  # (split, i, j) -> CrossTiles within the groups
    dead: dict  # (split, i) -> (W_i,) bool
    held: bool  # the held-out split is measured
    ok: dict  # i -> (W_i,) alive in both halves (held only)

    @property
    def splits(self) -> tuple:
        return ("full", 0, 1) if self.held else ("full",)


def _corrected_after_rotation(n_groups: int, rows: int, cols: int) -> bool:
    """Whether the rotation baseline gets a block's within-group co-moment in
    the rotated basis cheaper by rotating the raw block (made once for every
    control) and subtracting the rotated between-group part, than by rotating
    the within-group block. Per block of ``rows`` x ``cols`` (one layer of
    ``cols`` units), both directions, in multiply-adds: the correction
    G (cols^2 + 3 rows cols), the direct way rows cols (2 cols + G) (the
    within-group block, then its two rotated products), i.e. the correction
    is cheaper when G (cols + 2 rows) < 2 rows cols."""
    return n_groups * (cols + 2 * rows) < 2 * rows * cols


def _rotated_sums(sums: torch.Tensor, counts: torch.Tensor, rotation: torch.Tensor, low: torch.dtype) -> torch.Tensor:
    """(G, H) float64 group sums of the rotated units, ``sums`` R^T. In float64
    one product. In a lower compute dtype the product is made on the groups'
    deviations from the sums' overall mean (the mean rotated apart, in
    float64 and added back), so that its rounding is relative to what the
    between-group variances are made of, not to the sums: the product in half
    the time, the between-group part exact to float32's digits of itself."""
    if low == torch.float64:
        return sums @ rotation.to(sums).t()
    mean = sums.sum(0) / counts.sum()
    deviations = sums - counts[:, None] * mean
    rotated_mean = mean @ rotation.to(sums).t()
    return (deviations.to(low) @ rotation.to(low).t()).to(torch.float64).add_(counts[:, None] * rotated_mean)


def _rotated(block: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """A co-moment block times ``rotation``^T, the product in the rotation's
    dtype (the compute dtype), returned in float64."""
    return (block.to(rotation.dtype) @ rotation.t()).to(torch.float64)


def _rotate_splits(blocks: dict, rotation: torch.Tensor, low: torch.Tensor, merge=None) -> dict:
    """Each split's co-moment block times the rotation^T (:func:`_rotated`
    with ``low``, the rotation in the compute dtype). With ``merge`` = (f, u,
    v), the halves' merge term f u v^T of the full block, the full split
    follows from the halves' by linearity: B0 R^T + B1 R^T + f u (R v)^T, its
    last term with ``rotation`` in float64."""
    out = {s: _rotated(b, low) for s, b in blocks.items()}
    if merge is not None:
        f, u, v = merge
        out["full"] = torch.add(out[0], out[1]).add_(torch.outer(u, v @ rotation.to(v).t()).mul_(f))  # same ops
    return out


def _less_between(rotated: torch.Tensor, factors, low: torch.Tensor) -> torch.Tensor:
    """A rotated raw block less its between-group part in the rotated basis:
    rotated - left (right R^T), for the between-group factors (left, right)
    (:meth:`~culture.universality.stats.CrossTiles.between_factors`; None:
    no groups), with ``low`` the rotation in the compute dtype."""
    if factors is None:
        return rotated
    left, right = factors
    return rotated - (left @ (right @ low.t())).to(torch.float64)


def _fold_baseline(ctx: dict, controls: list, cross, m2_rows, m2_units, dead_rows, running, offset: int) -> None:
    """Fold one block of the rotation baseline into each control's running maxima
    (``running(c)``: full split, held out): per split s, the correlations of
    the rotated within-group block ``cross(c, s)`` from its rows' m2
    ``m2_rows(c, s)``, the rotated units' ``m2_units(c, s)`` and the dead
    rows ``dead_rows(c, s)``; column indices shifted by ``offset``."""
    for c in controls:
        cv = ctx[c]
        corr = {s: correlation_of(cross(c, s), m2_rows(c, s), m2_units(c, s), dead_rows(c, s)) for s in cv.splits}
        _best_along(*running(c), corr, 1, offset, cv.held)


def _finish(out: "NeuronAnalysis", ok: dict) -> None:
    """Held-out figures of units not alive in both halves set to 0; every
    table turned into numpy (tables already in numpy are left as they are)."""
    for table in (out.held_corr, out.held_base):
        for key, v in table.items():
            if isinstance(v, torch.Tensor):
                table[key] = torch.where(ok[key[0]], v, 0.0)
    for table in (out.pair_max, out.pair_arg, out.same_layer_max, out.base_max, out.base_arg, out.held_arg,
                  out.held_corr, out.held_base_arg, out.held_base):
        for key, v in table.items():
            table[key] = v.cpu().numpy() if isinstance(v, torch.Tensor) else v


def _in_memory(acc):
    """``acc`` with its co-moment read back from disk (a copy), or ``acc``."""
    if isinstance(acc.comoment, torch.Tensor) or acc.comoment is None:
        return acc
    out = copy.copy(acc)
    out.comoment = acc.comoment[0:acc.comoment.shape[0]]
    return out


def _best_along(best: "_Running", held_best: "_Running", blocks: dict, dim: int, offset: int, held: bool) -> None:
    """Fold one block {"full", 0, 1} of correlations into running maxima along
    ``dim`` (1: each row's best column; 0: each column's best row), indices
    shifted by ``offset``: max and argmax on "full"; held out: argmax on split
    0, its value on split 1."""
    b = blocks["full"].max(dim)
    best.add(b.values, b.indices + offset)
    if held:
        m0 = blocks[0].max(dim)
        value = blocks[1].gather(dim, m0.indices.unsqueeze(dim)).squeeze(dim)
        held_best.add(m0.values, m0.indices + offset, value)


def _joined(parts: list["_Running"]) -> tuple:
    """(value, index, extra) of running maxima over consecutive blocks, joined."""
    parts = [p for p in parts if p.value is not None]
    if not parts:
        return None, None, None
    cat = [torch.cat([getattr(p, name) for p in parts]) if getattr(parts[0], name) is not None else None
           for name in ("value", "index", "extra")]
    return tuple(cat)


def _group_means_reader(groups):
    """``cols -> (G, c)``: the per-group means of variables ``cols`` (the
    same numbers as ``groups.means()[:, cols]``, from those columns' sums)."""
    counts = groups.counts.clamp(min=1)[:, None]
    parts = groups.parts if isinstance(groups, MergedGroupSums) else (groups,)

    def read(cols: torch.Tensor) -> torch.Tensor:
        picked = [g.sums.index_select(-1, cols.to(g.sums.device)) for g in parts]
        total = picked[0] if len(picked) == 1 else picked[0] + picked[1]
        return total / counts
    return read


class _Running:
    """Running maximum over blocks of columns: value, index (the first of
    ties, as ``torch.max`` gives) and a value carried along (``extra``)."""

    def __init__(self):
        self.value = self.index = self.extra = None

    def add(self, value: torch.Tensor, index: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        if self.value is None:
            self.value, self.index, self.extra = value, index, extra
            return
        better = value > self.value
        self.value = torch.where(better, value, self.value)
        self.index = torch.where(better, index, self.index)
        if extra is not None:
            self.extra = torch.where(better, extra, self.extra)


# ---------------------------------------------------------------- results


@dataclass
class NeuronAnalysis:
    """One group of models (trained, or random-init) under one control: per
    ordered model pair (i, j), arrays over model i's neurons of all chosen
    layers, flattened (layer-major)."""

    control: str
    threshold: float
    layer_sizes: list[list[int]]
    baseline: str
    dead: dict[int, np.ndarray] = field(default_factory=dict)
    pair_max: dict = field(default_factory=dict)  # (i, j) -> (W_i,) max-corr over all layers of j
    pair_arg: dict = field(default_factory=dict)  # (i, j) -> (W_i,) flat index of the partner in j
    same_layer_max: dict = field(default_factory=dict)
    base_max: dict = field(default_factory=dict)
    base_arg: dict = field(default_factory=dict)
    held_arg: dict = field(default_factory=dict)
    held_corr: dict = field(default_factory=dict)
    held_base_arg: dict = field(default_factory=dict)
    held_base: dict = field(default_factory=dict)
    held_alive: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # filled by NeuronBlockSums.intervals

    @property
    def n_models(self) -> int:
        return len(self.layer_sizes)

    def offsets(self, i: int) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.layer_sizes[i])]).astype(int)

    def others(self, i: int) -> list[int]:
        return [j for j in range(self.n_models) if j != i]

    def mean_over_others(self, table: dict, i: int) -> np.ndarray:
        return np.mean([table[(i, j)] for j in self.others(i)], axis=0)

    def excess(self, i: int) -> np.ndarray:
        return np.where(self.dead[i], 0.0, self.mean_over_others(self.pair_max, i)
                        - self.mean_over_others(self.base_max, i))

    def universal(self, i: int) -> np.ndarray:
        return ~self.dead[i] & (self.excess(i) > self.threshold)

    def held_excess(self, i: int) -> np.ndarray | None:
        if not self.held_corr:
            return None
        return np.where(self.held_alive[i], self.mean_over_others(self.held_corr, i)
                        - self.mean_over_others(self.held_base, i), 0.0)

    def held_universal(self, i: int) -> np.ndarray | None:
        e = self.held_excess(i)
        return None if e is None else (~self.dead[i] & self.held_alive[i] & (e > self.threshold))

    def partner_layer(self, i: int, j: int) -> np.ndarray:
        """(W_i,) the layer (index into the chosen layers) of each neuron's best partner in j."""
        return np.searchsorted(self.offsets(j), self.pair_arg[(i, j)], side="right") - 1


class NeuronBlockSums:
    """Pass 2 for one group under one control: per block of quizzes, the sums
    that give a neuron's correlation with each of its chosen partners
    (in-sample partner and baseline partner, residualised with the group means
    of all the quizzes; held-out partner and held-out baseline partner,
    residualised with the means of the token's own half, as their point
    estimates are), for the neurons whose excess (in-sample or held-out) lies
    within ``margin`` of the threshold. The others keep their side of the
    threshold in every resample: a bootstrap moves a correlation by a few
    hundredths, far less than the margin (``intervals["max_excess_sd"]``: the
    largest bootstrap standard deviation of a resampled neuron's excess).

    Memory: only what :meth:`update` reads, built at construction one model
    (and null pair) at a time from its full means table, which is dropped:
    the group means of each model's needed columns (:meth:`_needed`:
    candidates and their pair / held-out partners), the rotated group means
    of the rotation baseline's units (with their rows of the rotation), or the
    null group means of each pair's baseline partners; float64, (G, c) and
    (2, G, c) per view, so 8 G (1 + 2 held-out) bytes per kept column, plus
    the block sums, 8 K per candidate and sum. Nothing scales with all the
    neurons W (the full tables, transient: one (G, W) table per split of the
    view being cut, one model or null pair at a time)."""

    SETS = ("pair", "base", "held", "held_base")
    VIEWS = {"full": ("pair", "base"), "half": ("held", "held_base")}

    def __init__(self, analysis: NeuronAnalysis, moments: NeuronMoments, n_blocks: int, margin: float = 0.15):
        self.a = analysis
        self.mom = moments
        self.k = n_blocks
        self.margin = float(margin)
        m = analysis.n_models
        self.ordered = [(i, j) for i in range(m) for j in range(m) if i != j]
        self.sets = self.SETS if analysis.held_corr else self.SETS[:2]
        self.views = [v for v, sets in self.VIEWS.items() if sets[0] in self.sets]
        thr = analysis.threshold
        self.candidates = []
        for i in range(m):
            near = np.abs(analysis.excess(i) - thr) <= margin
            held = analysis.held_excess(i)
            if held is not None:
                near |= np.abs(held - thr) <= margin
            self.candidates.append(np.nonzero(near & ~analysis.dead[i])[0])
        self.cand_t = [torch.as_tensor(c, dtype=torch.long) for c in self.candidates]
        self.n = np.zeros(n_blocks)
        c = [len(x) for x in self.candidates]
        z = lambda width: np.zeros((n_blocks, width))  # noqa: E731
        self.x1 = {(v, i): z(c[i]) for v in self.views for i in range(m)}
        self.x2 = {(v, i): z(c[i]) for v in self.views for i in range(m)}
        self.y1 = {(p, s): z(c[p[0]]) for p in self.ordered for s in self.sets}
        self.y2 = {(p, s): z(c[p[0]]) for p in self.ordered for s in self.sets}
        self.xy = {(p, s): z(c[p[0]]) for p in self.ordered for s in self.sets}
        arg = {"pair": analysis.pair_arg, "base": analysis.base_arg,
               "held": analysis.held_arg or analysis.pair_arg, "held_base": analysis.held_base_arg or analysis.base_arg}
        self.index = {(p, s): torch.as_tensor(arg[s][p][self.candidates[p[0]]], dtype=torch.long)
                      for p in self.ordered for s in self.sets}
        self._prepare_tables()

    # ------------------------------------------------- what update reads

    def _prepare_tables(self) -> None:
        """Everything :meth:`update` reads, built once, one model (and null
        pair) at a time from its full means table, which is then dropped:
        ``means[view][i]`` the means of model i's needed columns (:meth:`_needed`),
        ``_rot`` the rotated means of the rotation baseline's units,
        ``_null`` the null means of each pair's baseline partners, and
        ``_cols`` where each resampled correlation's columns lie in them."""
        m = self.a.n_models
        need = self._needed()
        # where each correlation's columns lie among the kept ones (sorted, so a search finds them)
        self._cols = {("x", i): torch.searchsorted(need[i], self.cand_t[i]) for i in range(m)}
        for (i, j) in self.ordered:
            for s in self.sets:
                if s in ("pair", "held"):
                    self._cols[((i, j), s)] = torch.searchsorted(need[j], self.index[((i, j), s)])
        rotation = self.mom.baseline == "rotation"
        plan = self._rotation_plan() if rotation else None
        self.means = {v: [None] * m for v in self.views}
        for i in range(m):
            parts = plan[i][0] if rotation else []
            for v in self.views:
                tables = self._split_tables(v, lambda split: self._means(i, split))  # dropped below
                self.means[v][i] = self._columns(v, tables, need[i])
                for block, rows, means in parts:
                    table = self._columns(v, tables, block)
                    means[v] = table.double() @ rows.t().to(table.device)
                del tables
        if rotation:
            self._rot = [[((int(block[0]), int(block[-1]) + 1), rows, means) for block, rows, means in parts]
                         for parts, _ in plan]
            for (i, j) in self.ordered:
                for s in ("base", "held_base"):
                    if s in self.sets:
                        self._cols[((i, j), s)] = torch.searchsorted(plan[j][1], self.index[((i, j), s)])
            return
        self._null = {}
        for (i, j) in self.ordered:
            if not len(self.candidates[i]):
                continue
            for v in self.views:
                cols = self.index[((i, j), self.VIEWS[v][1])]
                units = torch.unique(cols)  # sorted
                tables = self._split_tables(v, lambda split: self._null_means((i, j), split))
                self._null[(v, (i, j))] = self._columns(v, tables, units)
                self._cols[(v, (i, j))] = torch.searchsorted(units, cols)
                del tables

    @staticmethod
    def _split_tables(view: str, per_split) -> list:
        """The means of a view, as column readers (``cols -> (G, c)``):
        ``[per_split("full")]`` or ``[per_split(0), per_split(1)]``."""
        return [per_split("full")] if view == "full" else [per_split(0), per_split(1)]

    @staticmethod
    def _columns(view: str, tables: list, cols: torch.Tensor) -> torch.Tensor:
        """Columns ``cols`` of a view's means: (G, c) ("full"), or the two halves stacked (2, G, c) ("half")."""
        picked = [t(cols) for t in tables]
        return picked[0] if view == "full" else torch.stack(picked)

    def _means(self, i: int, split):
        """Model i's means to remove on one split (0, 1 or "full"), read by
        columns (``cols -> (G, c)``: per-group means from the group sums of
        those columns alone, never the (G, W) table); G = 1 (the global mean)
        without a control."""
        mom, control = self.mom, self.a.control
        if control != "none":
            return _group_means_reader(mom._split(mom.groups[control][i], split))
        p = next(p for p in mom.pairs if i in p)
        acc = mom.views(mom.cross[p], split)
        mean = (acc.mean_x if p[0] == i else acc.mean_y)[None, :]
        return lambda cols: mean.index_select(-1, cols.to(mean.device))

    def _null_means(self, pair, split):
        """The same for the null units of model pair[1] beside pair[0]."""
        mom, control = self.mom, self.a.control
        if control != "none":
            return _group_means_reader(mom._split(mom.null_groups[control][pair], split))
        mean = mom.views(mom.null[pair], split).mean_y[None, :]
        return lambda cols: mean.index_select(-1, cols.to(mean.device))

    @staticmethod
    def _token_means(table: torch.Tensor, groups, halves, cols=None) -> torch.Tensor:
        """(T, c): each token's means from a (G, c) or (2, G, c) table (its
        columns ``cols`` when given)."""
        t = table if cols is None else table.index_select(-1, cols.to(table.device))
        if t.dim() == 2:
            return t[groups]
        return t[halves, groups]

    def _needed(self) -> list[torch.Tensor]:
        """Per model, the columns any resampled correlation reads (as x or as a partner), sorted."""
        cols = [set(c.tolist()) for c in self.candidates]
        for (i, j) in self.ordered:
            for s in ("pair", "held"):
                if s in self.sets:
                    cols[j].update(self.index[((i, j), s)].tolist())
        self._need = [torch.as_tensor(sorted(c), dtype=torch.long) for c in cols]
        return self._need

    def _rotation_plan(self) -> list:
        """Per model j, the rotated units the baseline partners read, by layer:
        (parts, units), parts: (the layer's columns, its rows of the rotation
        (c, H), {view: rotated means}, filled by :meth:`_prepare_tables`);
        units: the units, sorted (the order of the parts' columns joined).
        Rotation is linear: R (x - m_g) = R x - R m_g."""
        mom = self.mom
        plan = []
        for j in range(self.a.n_models):
            units = set()
            for (i, jj) in self.ordered:
                if jj == j and len(self.candidates[i]):
                    for s in ("base", "held_base"):
                        if s in self.sets:
                            units.update(self.index[((i, j), s)].tolist())
            units = np.array(sorted(units), dtype=np.int64)
            off = mom.offsets[j]
            layer_of = np.searchsorted(off, units, side="right") - 1
            parts = []
            for k in np.unique(layer_of):
                sel = units[layer_of == k]
                rows = mom.rotations[j][k][torch.as_tensor(sel - off[k])].double()  # (c, H)
                parts.append((torch.arange(off[k], off[k + 1]), rows, {}))
            plan.append((parts, torch.as_tensor(units)))
        return plan

    def update(self, acts: list[torch.Tensor], labels, blocks: torch.Tensor, nulls, halves: torch.Tensor) -> None:
        """acts: per model (n, P, W); blocks, halves: (n,) block and half (0/1) of each quiz."""
        m = self.a.n_models
        n, p = acts[0].shape[:2]
        dev = acts[0].device
        groups = (torch.zeros(n * p, dtype=torch.long, device=dev) if self.a.control == "none"
                  else labels.groups(self.a.control).reshape(-1))
        half_t = halves.to(dev).repeat_interleave(p)
        blk = blocks.repeat_interleave(p).to(dev)
        flat = [a.reshape(n * p, -1) for a in acts]  # columns are picked before any float64 copy

        def block_sum(v):  # (T, c) -> (K, c)
            out = torch.zeros(self.k, v.shape[1], dtype=torch.float64, device=v.device)
            out.index_add_(0, blk, v)
            return out.cpu().numpy()

        self.n += np.bincount(blk.cpu().numpy(), minlength=self.k)
        need = self._need
        picked = [scratch_buffer((n * p, len(need[i])), torch.float64, dev, slot=f"pass 2 units {i}")
                  .copy_(flat[i].index_select(1, need[i].to(dev))) for i in range(m)]  # reused batch after batch
        raw_rot = {}
        if self.mom.baseline == "rotation":  # the rotated units this batch needs, before removing means
            for j in range(m):
                raw_rot[j] = [(flat[j][:, a:b] @ rows.t().to(flat[j])).double() for (a, b), rows, _ in self._rot[j]]
        for view in self.views:
            res = [picked[i] - self._token_means(self.means[view][i], groups, half_t) for i in range(m)]

            def cols_of(i, key):
                return res[i].index_select(1, self._cols[key].to(dev))

            xs = []
            for i in range(m):
                x = cols_of(i, ("x", i))
                self.x1[(view, i)] += block_sum(x)
                self.x2[(view, i)] += block_sum(x * x)
                xs.append(x)
            rotated = {}
            if self.mom.baseline == "rotation":
                for j in range(m):
                    cols = []
                    for (_, _, means), units in zip(self._rot[j], raw_rot[j]):
                        mean = means[view]
                        mean = mean[groups] if mean.dim() == 2 else mean[half_t, groups]
                        cols.append(units - mean)
                    rotated[j] = torch.cat(cols, 1) if cols else torch.zeros(n * p, 0, dtype=torch.float64)
            pair_set, base_set = self.VIEWS[view]
            for (i, j) in self.ordered:
                if not len(self.candidates[i]):
                    continue
                for s in (pair_set, base_set):
                    if s == pair_set:
                        y = cols_of(j, ((i, j), s))
                    elif self.mom.baseline == "rotation":
                        y = rotated[j].index_select(1, self._cols[((i, j), s)].to(dev))
                    else:
                        cols = self.index[((i, j), s)]
                        raw = nulls[j].reshape(n * p, -1).index_select(1, cols.to(dev)).double()
                        y = raw - self._token_means(self._null[(view, (i, j))], groups, half_t,
                                                    self._cols[(view, (i, j))])
                    self.y1[((i, j), s)] += block_sum(y)
                    self.y2[((i, j), s)] += block_sum(y * y)
                    self.xy[((i, j), s)] += block_sum(xs[i] * y)

    # ----------------------------------------------------------- intervals

    def intervals(self, n_resamples: int, confidence: float, seed: int) -> None:
        """Bootstrap (over blocks of quizzes) intervals per layer of the pooled
        share universal, in-sample (all blocks) and held-out (odd-quiz blocks).
        Stored in ``analysis.intervals``: {name: [per layer (low, high)]}."""
        a = self.a
        m = a.n_models
        n_layers = min(len(s) for s in a.layer_sizes)
        full_w = block_weights(self.k, n_resamples, seed, np.nonzero(self.n > 0)[0])
        odd = [b for b in range(self.k) if b % 2 == 1 and self.n[b] > 0]
        held_w = block_weights(self.k, n_resamples, seed + 1, odd)
        thr = a.threshold
        fixed, fixed_held, alive, alive_held, layer_of = [], [], [], [], []
        for i in range(m):
            off = a.offsets(i)
            live = ~a.dead[i]
            in_cand = np.zeros(len(live), bool)
            in_cand[self.candidates[i]] = True
            fixed.append(a.universal(i) & ~in_cand)
            alive.append(live)
            hu = a.held_universal(i)
            fixed_held.append(None if hu is None else hu & ~in_cand)
            alive_held.append(None if hu is None else live & a.held_alive[i])
            layer_of.append(np.searchsorted(off, np.arange(len(live)), side="right") - 1)
        shares = {"share": [[] for _ in range(n_layers)], "held_share": [[] for _ in range(n_layers)]}
        sd = []
        for start in range(0, n_resamples, _CHUNK):
            for weights, name, s_pair, s_base in ((full_w[start:start + _CHUNK], "share", "pair", "base"),
                                                  (held_w[start:start + _CHUNK], "held_share", "held", "held_base")):
                if name == "held_share" and not a.held_corr:
                    continue
                n = (weights @ self.n)[:, None]
                count = np.zeros((len(weights), n_layers))
                denom = np.zeros(n_layers)
                for i in range(m):
                    base_fixed = fixed[i] if name == "share" else fixed_held[i]
                    live = alive[i] if name == "share" else alive_held[i]
                    for k in range(n_layers):
                        sel = layer_of[i] == k
                        count[:, k] += (base_fixed & sel).sum()
                        denom[k] += (live & sel).sum()
                    cand = self.candidates[i]
                    if not len(cand):
                        continue
                    view = "full" if name == "share" else "half"
                    x1, x2 = weights @ self.x1[(view, i)], weights @ self.x2[(view, i)]
                    ex = 0.0
                    for j in a.others(i):
                        corr = {}
                        for s in (s_pair, s_base):
                            key = ((i, j), s)
                            corr[s] = corr_from_sums(n, x1, weights @ self.y1[key], x2, weights @ self.y2[key],
                                                     weights @ self.xy[key])
                        ex = ex + (corr[s_pair] - corr[s_base]) / (m - 1)
                    ok = live[cand]
                    if name == "share" and start == 0 and ok.any():
                        sd.append(float(ex[:, ok].std(0).max()))
                    for k in range(n_layers):
                        sel = (layer_of[i][cand] == k) & ok
                        count[:, k] += ((ex > thr) & sel).sum(1)
                shares[name] = [v + [count[:, k] / max(denom[k], 1)] for k, v in enumerate(shares[name])]
        # the bootstrap shares themselves (per name, per layer): culture.universality.intervals re-centres them
        self.samples = {name: [np.concatenate(v) if v else None for v in per_layer]
                        for name, per_layer in shares.items()}
        out = {name: [percentile_interval(s, confidence) if s is not None else None for s in per_layer]
               for name, per_layer in self.samples.items()}
        out["n_resamples"] = n_resamples
        out["confidence"] = confidence
        out["blocks"] = int((self.n > 0).sum())
        out["held_blocks"] = len(odd)
        out["margin"] = self.margin
        out["resampled_neurons"] = int(sum(len(c) for c in self.candidates))
        out["max_excess_sd"] = max(sd) if sd else None
        a.intervals = out


__all__ = ["BASELINES", "rotations_for", "NeuronMoments", "NeuronAnalysis", "NeuronBlockSums", "QuizRoller",
           "null_units"]
