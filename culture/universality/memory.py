"""The memory plan of a universality comparison, checked before any work.

:func:`memory_plan` counts every buffer :func:`~culture.universality.compare_models`
holds at its peak, from the shapes alone (it never depends on the number of
tokens): the process as it is now (interpreter, libraries, the models), the
float64 accumulators of pass 1 (neuron co-moments per model pair and half,
each layer's self co-moment for the rotation baseline or null co-moments, per-group sums
of every control, CKA and SAE co-moments), those of pass 2 (bootstrap block
sums, CKA sums and permutation-test buffers), one forward batch of
activations with its working copies, and the temporaries of the analysis.

The analysis reads the (neurons x neurons) co-moments a block of rows at a
time (:class:`~culture.universality.stats.CrossTiles`); the block
(``tile_rows``, whole layers) is the largest that keeps the plan under the
limit, and the results do not depend on it. :func:`check_memory` refuses,
with one line, a plan above the limit (``max_memory``, else the memory the
system has available).

    >>> plan = memory_plan(models, max_memory="4.5G")   # default: the memory available
    >>> print(plan.line())      # "memory plan 1.2 GiB (limit 4.5 GiB): ..."
    >>> check_memory(plan)      # raises UniversalityError when over
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from culture.universality.controls import check_controls, n_groups
from culture.universality.runner import UniversalityError
from culture.universality_settings import CONTROLS, DEFAULT_MAX_MEMORY, MEMORY_TARGET, parse_memory

#: working copies of one batch of activations (float32 activations, centred copy,
#: float64 copies of pass 2, null units), in units of the float32 batch
BATCH_COPIES = 6


def format_memory(n: int) -> str:
    """1.2 GiB, 340 MiB."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def available_memory() -> int | None:
    """Bytes the system can still give this process (MemAvailable of
    /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: glibc's mmap threshold while a comparison runs: temporaries of this size or more are mapped and
#: handed back when freed (glibc's own threshold grows to 32 MiB after the first frees, and the heap
#: then keeps and fragments the many (rows x d_mlp) blocks of the analysis: at the 37M shape the
#: peak grew about 0.5 GiB per 3 GiB past the plan)
MMAP_THRESHOLD = 8 * 2**20


def limit_heap_growth() -> None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process
    (``mallopt(M_MMAP_THRESHOLD)``; nothing where glibc is not the allocator).
    Written by hand: no library exposes glibc's ``mallopt``."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def process_memory() -> int:
    """Resident set size of this process now (bytes; 0 where unknown), after
    handing freed heap memory back to the system (glibc ``malloc_trim``), so
    that an earlier comparison's freed buffers do not count."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class MemoryPlan:
    """Bytes per buffer at the comparison's peak (``items``), the analysis
    block (``tile_rows``: rows of the neuron co-moments read at once, None:
    all) and the limit checked against."""

    items: dict[str, int]
    tile_rows: int | None
    limit: int | None = None
    limit_source: str = ""
    process: int = 0
    notes: list[str] = field(default_factory=list)
    #: layers per row block of pass 1 (None: one sweep, co-moments in memory)
    block_layers: int | None = None
    #: sweeps over the quizzes in pass 1
    sweeps: int = 1
    #: bytes written to the temporary folder (row blocks: co-moment rows and group sums)
    disk: int = 0
    #: in row blocks, the group sums (and layer co-moments) on disk a block at a time too
    groups_on_disk: bool = False
    #: the size the blocks were chosen for (None: none)
    target: int | None = None
    #: per group, bytes kept throughout and added by each phase
    phases: dict = field(default_factory=dict)

    @property
    def buffers(self) -> int:
        """Bytes the comparison adds to the process."""
        return int(sum(self.items.values()))

    @property
    def total(self) -> int:
        """Expected peak resident memory of the process."""
        return self.process + self.buffers

    def fits(self) -> bool:
        return self.limit is None or self.total <= self.limit

    def line(self) -> str:
        """One line: total, limit and the largest items."""
        top = sorted(self.items.items(), key=lambda kv: -kv[1])[:4]
        parts = ", ".join(f"{k} {format_memory(v)}" for k, v in top if v > 0)
        limit = "" if self.limit is None else f" (limit {format_memory(self.limit)}{self.limit_source})"
        if self.target is not None and self.target != self.limit and (self.limit is None or self.target < self.limit):
            limit = limit[:-1] + f"; blocks sized for {format_memory(self.target)})" if limit else \
                f" (blocks sized for {format_memory(self.target)})"
        blocks = ""
        if self.block_layers is not None:
            what = "co-moments and group sums" if self.groups_on_disk else "co-moments"
            blocks = (f"; pass 1 in {self.sweeps} row blocks of {self.block_layers} layer(s), "
                      f"{format_memory(self.disk)} of {what} on disk")
        return (f"memory plan {format_memory(self.total)}{limit}: process now {format_memory(self.process)}, "
                f"{parts}{blocks}")

    def to_dict(self) -> dict:
        return {"total_bytes": self.total, "process_bytes": self.process, "items": dict(self.items),
                "tile_rows": self.tile_rows, "limit_bytes": self.limit, "block_layers": self.block_layers,
                "sweeps": self.sweeps, "disk_bytes": self.disk, "groups_on_disk": self.groups_on_disk, "target_bytes": self.target,
                "phases": self.phases}


def _dims(model) -> tuple[int, int, int, int]:
    """(n_layers, d_mlp, d_model, parameters) of a MyGPT, HookedTransformer or ModelRunner."""
    from culture.universality.runner import ModelRunner

    inner = model
    if isinstance(model, ModelRunner):
        inner = model.mygpt if model.mygpt is not None else model.hooked
        n = sum(p.numel() for p in inner.parameters())
        return model.n_layers, model.d_mlp, model.d_model, n
    n = sum(p.numel() for p in inner.parameters()) if hasattr(inner, "parameters") else 0
    if hasattr(inner, "cfg") and hasattr(inner.cfg, "d_mlp"):
        c = inner.cfg
        return int(c.n_layers), int(c.d_mlp), int(c.d_model), n
    c = inner.config
    return c.nb_blocks, c.dim_hidden, c.dim_model, n


#: the memory a comparison aims at when ``max_memory`` is left at "available"
DEFAULT_TARGET = MEMORY_TARGET

#: the phases of one group of models, after what it keeps throughout
PHASES = ("pass 1", "analysis", "pass 2")


def memory_plan(models, layers=None, *, cka: bool = True, saes=None, random_init: bool = True,
                controls=CONTROLS, positions: int = 404,
                n_blocks: int = 32, baseline: str = "rotation", cka_permutations: int = 0,
                batch_size: int | None = None, n_quizzes: int | None = None, n_tasks: int = 15,
                compute_dtype=None, max_memory=None, process: int | None = None,
                block_layers: int | None = None) -> MemoryPlan:
    """The memory plan of :func:`~culture.universality.compare_models` with
    these arguments (8 bytes per accumulated number; ``compute_dtype``: that
    of the batch products, float32 adds a product scratch). ``max_memory``: a size
    (4.5G, bytes), or None / "available" for the memory available now; ``process``: the
    resident memory to start from (default: this process now, which holds the
    models already); ``n_quizzes``: quizzes streamed (a batch holds no more).

    The groups (trained models, then random-init copies) run one after
    another, each through its phases (:data:`PHASES`): the peak is the
    process, plus the largest group's kept buffers and its largest phase.
    Three things are chosen here, largest first (fewest sweeps, then the
    group sums in memory, then fewest tiles): ``block_layers``, the layers of
    rows pass 1 accumulates per sweep over the quizzes, the rest written to
    disk (:mod:`~culture.universality.spill`; None: one sweep in memory),
    unless given; ``groups_on_disk``, whether the control group sums (and the
    layers' self co-moments) follow the row blocks to disk too (always, when
    ``block_layers`` is given); and ``tile_rows``, the rows the analysis
    reads at once (whole layers). They are the first that keep the plan under
    ``max_memory`` (when it is "available": under :data:`DEFAULT_TARGET`) with
    files that fit the temporary folder; if none does, the smallest plan under
    the limit whose files fit, else the smallest under the limit, else the
    smallest (:func:`check_memory` then refuses, saying which)."""
    from culture.universality.compare import resolve_layers

    dims = [_dims(m) for m in models]
    n_layers = len(resolve_layers([d[0] for d in dims], layers))
    process = process_memory() if process is None else int(process)
    limit, source, target = _limits(max_memory, process)
    shape = _Shape(models, dims, layers, n_layers, cka, saes, random_init, check_controls(controls), positions,
                   n_blocks, baseline, cka_permutations, batch_size, n_quizzes, n_tasks, compute_dtype)
    if block_layers is not None:
        options = [(min(int(block_layers), n_layers), True)]
    else:
        options = [(None, False)] + [(b, g) for b in range(n_layers - 1, 0, -1) for g in (False, True)]
    from culture.universality.spill import disk_free

    free = disk_free()
    plans = []
    for b, on_disk in options:
        for t in range(n_layers, 0, -1):
            plan = _plan(shape, b, None if t == n_layers else t, process, limit, source, on_disk)
            plan.target = target
            if plan.disk <= free and (target is None or plan.total <= target):
                return plan
            plans.append(plan)
    fit = [p for p in plans if p.fits()]
    # the smallest; among equals the last tried (the smallest blocks and tiles)
    return min(reversed([p for p in fit if p.disk <= free] or fit or plans), key=lambda p: p.total)


def _limits(max_memory, process: int) -> tuple[int | None, str, int | None]:
    """(limit, its source, the size blocks aim at)."""
    if max_memory is not None and str(max_memory).strip().lower() != DEFAULT_MAX_MEMORY:
        limit = parse_memory(max_memory)
        return limit, "", limit
    avail = available_memory()
    if avail is None:
        return None, "", DEFAULT_TARGET
    return process + avail, ", memory available", min(DEFAULT_TARGET, process + avail)


@dataclass
class _Shape:
    """What sizes a comparison's buffers (the arguments of :func:`memory_plan`)."""

    models: list
    dims: list
    layers: object
    n_layers: int  # the layers compared (resolved once)
    cka: bool
    saes: object
    random_init: bool
    controls: tuple
    positions: int
    n_blocks: int
    baseline: str
    cka_permutations: int
    batch_size: int | None
    n_quizzes: int | None
    n_tasks: int
    compute_dtype: object

    @property
    def compute_bytes(self) -> int:
        """Bytes per number of the batch products' dtype (8 unless given lower)."""
        return int(getattr(self.compute_dtype, "itemsize", 8))

    @property
    def cka_rows(self) -> list[int]:
        """Residual rows CKA stacks per model: the embedding and every block (all layers) or the compared ones."""
        return [1 + (d[0] if self.layers is None else self.n_layers) for d in self.dims]


def _plan(shape: _Shape, block_layers: int | None, tile_layers: int | None, process: int, limit, source,
          groups_on_disk: bool = False) -> MemoryPlan:
    """The plan with pass 1 in row blocks of ``block_layers`` layers (None: in
    memory) and analysis tiles of ``tile_layers`` layers (None: all rows)."""
    on_disk = groups_on_disk and block_layers is not None
    groups = [_group_phases(shape, 0, block_layers, tile_layers, on_disk)]
    if shape.random_init:
        groups.append(_group_phases(shape, 1, block_layers, tile_layers, on_disk))
    peaks = []
    for kept, phases, _ in groups:
        name = max(phases, key=lambda p: sum(phases[p].values()))
        peaks.append((sum(kept.values()) + sum(phases[name].values()), kept, phases[name]))
    _, kept, phase = max(peaks, key=lambda x: x[0])
    items: dict[str, int] = {}
    for part in (kept, phase):
        for k, v in part.items():
            items[k] = items.get(k, 0) + int(v)
    L = shape.n_layers
    H = max(d[1] for d in shape.dims)
    plan = MemoryPlan(items, None if tile_layers is None else tile_layers * H, limit, source, process,
                      block_layers=block_layers, sweeps=1 if block_layers is None else -(-L // block_layers),
                      disk=max(d for _, _, d in groups), groups_on_disk=on_disk)
    plan.phases = {("trained", "random init")[k]: {"kept": sum(kept.values()),
                                                    **{p: sum(v.values()) for p, v in phases.items()}}
                   for k, (kept, phases, _) in enumerate(groups)}
    return plan


def _group_phases(shape: _Shape, k: int, block_layers, tile_layers, groups_on_disk) -> tuple[dict, dict, int]:
    """(kept, {phase: items}, disk bytes) of group k (0: trained, with its
    held-out halves, task sums, CKA test and SAEs; 1: random-init copies)."""
    dims, m = shape.dims, len(shape.dims)
    L = shape.n_layers
    H = [d[1] for d in dims]
    D = [d[2] for d in dims]
    W = [L * h for h in H]
    G = [n_groups(c, shape.positions) for c in shape.controls if c != "none"]
    gmax = max(G, default=0)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    ordered = [(i, j) for i in range(m) for j in range(m) if i != j]
    h = 2 if k == 0 else 1  # halves: held-out replication (trained), all quizzes (random init)
    f8 = 8
    kept: dict[str, int] = {}  # from the group's first batch to its results
    moments: dict[str, int] = {}  # pass 1's neuron moments: through pass 1 and the analysis, dropped for pass 2
    phases: dict[str, dict[str, int]] = {p: {} for p in PHASES}

    def add(where: dict, name: str, n) -> None:
        where[name] = where.get(name, 0) + int(n)

    # neuron co-moments (and the null baselines'): kept in memory, or one row block in pass 1 and the rest on disk
    rows_of = W if block_layers is None else [min(block_layers, L) * x for x in H]
    co = [("neuron co-moments", pairs)] + ([] if shape.baseline == "rotation" else [("null co-moments", ordered)])
    disk = 0
    for name, which in co:
        whole = h * f8 * sum(W[i] * W[j] for i, j in which)
        if block_layers is None:
            add(moments, name, whole)
        else:
            add(phases["pass 1"], name, h * f8 * sum(rows_of[i] * W[j] for i, j in which))
            disk += whole
    if shape.baseline == "rotation":
        # one (d_mlp, d_mlp) float64 per model and layer, made for the analysis (pass 1 rotates nothing)
        add(phases["analysis"], "rotations", f8 * L * sum(x * x for x in H))
        # each layer's self co-moment: the rotated units' variances under any rotation, diag(R C R^T)
        layer_co = h * f8 * sum(x * x for x in H)
        if not groups_on_disk:
            add(moments, "layer co-moments", L * layer_co)
        else:
            add(phases["pass 1"], "layer co-moments", min(block_layers, L) * layer_co)
            disk += L * layer_co
    # group sums per control: in memory, or this row block's columns in pass 1 and the rest on disk
    units = list(range(m)) + ([] if shape.baseline == "rotation" else [j for _, j in ordered])
    if not groups_on_disk:
        add(moments, "group sums", h * f8 * sum(g * W[i] for i in units for g in G))
    else:
        add(phases["pass 1"], "group sums", h * f8 * sum(g * rows_of[i] for i in units for g in G))
        disk += h * f8 * sum(g * W[i] for i in units for g in G)
    if k == 0:
        add(kept, "task sums", 2 * f8 * shape.n_tasks * sum(W))
    else:
        add(kept, "random-init models", 4 * sum(d[3] for d in dims))
    # pass 2: block sums of the resampled neurons (at most every neuron), per control
    sets = 4 if h == 2 else 2
    block_sums = len(shape.controls) * f8 * shape.n_blocks * (
        sum(2 * (sets // 2) * W[i] for i in range(m)) + sum(3 * sets * W[i] for i, _ in ordered))
    add(phases["pass 2"], "bootstrap block sums", block_sums)
    if shape.cka:
        _cka_items(shape, k, kept, phases, G, D, pairs)
    if k == 0 and shape.saes:
        _sae_items(shape, kept, phases, G, pairs)
    batch = _batch_items(shape, k, W, D, pairs, rows_of)
    for p in ("pass 1", "pass 2"):
        for name, v in batch.items():
            if name != "product scratch" or p == "pass 1":
                add(phases[p], name, v)
    # the analysis (and the rotation draws, before pass 2): blocks of (tile rows) x (one layer of j) in 3 splits,
    # the group deviations of a row tile per split, and the (G, block) temporaries of the within-group moments
    from culture.universality.stats import GROUP_BLOCK

    rows = max(W) if tile_layers is None else min(tile_layers * max(H), max(W))
    draws = 3 if shape.baseline == "rotation" else 0  # a rotation's C, R C, R C * R (its units' variances)
    # the rotation baseline is made for every control at once: the views of each keep their between-group
    # row factor (rows, G)
    row_groups = sum(G) if shape.baseline == "rotation" else gmax
    analysis = (f8 * (rows * 3 * 4 * max(H) + (6 + draws) * max(H) ** 2 + 3 * gmax * GROUP_BLOCK)
                + shape.compute_bytes * rows * 3 * row_groups)  # the row factors are in the compute dtype
    add(phases["analysis"], "analysis temporaries", analysis)
    for p in ("pass 1", "analysis"):
        for name, v in moments.items():
            add(phases[p], name, v)
    return kept, phases, disk


def _cka_items(shape: _Shape, k: int, kept: dict, phases: dict, G, D, pairs) -> None:
    """CKA: pass-1 co-moments and group sums (kept), pass-2 sums and the permutation test's."""
    f8 = 8
    dims = shape.dims
    rows = shape.cka_rows
    R = [r * D[i] for i, r in enumerate(rows)]
    m = len(dims)
    kept["CKA co-moments"] = f8 * (sum(R[i] * R[j] for i, j in pairs) + sum(rows[i] * D[i] ** 2 for i in range(m))
                                  + sum((g if g else 1) * R[i] for i in range(m) for g in G + [1]))
    sums = f8 * (sum(R[i] ** 2 + rows[i] * R[i] for i in range(m))
                 + sum(R[i] * R[j] + rows[i] * R[j] + rows[j] * R[i] for i, j in pairs))
    for p in ("pass 2",):
        phases[p]["CKA sums"] = sums
        # a batch's (R_i, R_j) product before it is added, and the permutation test's shuffled row (P, T, d_model)
        tokens = _batch_size(shape, k) * shape.positions
        perms = min(shape.cka_permutations, 25) if k == 0 else 0
        phases[p]["CKA batch products"] = f8 * (max((R[i] * R[j] for i, j in pairs), default=0)
                                               + perms * tokens * max(D))
        if k == 0 and shape.cka_permutations:
            phases[p]["CKA permutation sums"] = f8 * shape.cka_permutations * sum(
                min(rows[i], rows[j]) * (D[i] * D[j] + D[i] + D[j]) for i, j in pairs)


def _sae_items(shape: _Shape, kept: dict, phases: dict, G, pairs) -> None:
    """SAE features (trained group): co-moments (kept) and the analysis's correlation matrices."""
    f8 = 8
    d = [int(s.cfg.d_sae) for s in shape.saes if s is not None]
    sae_pairs = [(a, b) for a in range(len(d)) for b in range(a + 1, len(d))]
    kept["SAE co-moments"] = f8 * sum(2 * d[a] * d[b] for a, b in sae_pairs) + f8 * (max(G) if G else 1) * (
        sum(d) + 2 * sum(d[a] + d[b] for a, b in sae_pairs))
    # within groups, corr, null and the Hungarian copy
    phases["analysis"]["SAE analysis"] = f8 * 4 * max((d[a] * d[b] for a, b in sae_pairs), default=0)


def _batch_width(shape: _Shape, k: int, W, D) -> int:
    """Numbers per token a forward batch holds (neurons, CKA rows, SAE features)."""
    width = sum(W) + (sum(r * D[i] for i, r in enumerate(shape.cka_rows)) if shape.cka else 0)
    if k == 0:
        width += sum(int(s.cfg.d_sae) for s in shape.saes or [] if s is not None)
    return width


def _batch_size(shape: _Shape, k: int) -> int:
    """Quizzes in the largest forward batch of a pass: its first, which holds
    at least ``FIRST_BATCH_QUIZZES``; the others hold the batch size given,
    else :func:`~culture.universality.compare.quizzes_per_batch`."""
    from culture.universality.compare import FIRST_BATCH_QUIZZES, quizzes_per_batch

    batch_size = shape.batch_size
    if not (isinstance(batch_size, int) and batch_size >= 1):
        W = [shape.n_layers * d[1] for d in shape.dims]
        batch_size = quizzes_per_batch(shape.positions, _batch_width(shape, k, W, [d[2] for d in shape.dims]))
    batch_size = max(batch_size, FIRST_BATCH_QUIZZES)
    if shape.n_quizzes is not None:
        batch_size = max(1, min(batch_size, int(shape.n_quizzes)))
    return batch_size


def _batch_items(shape: _Shape, k: int, W, D, pairs, rows_of) -> dict:
    """One forward batch (float32) with its working copies, and the product
    scratch when the batch products run in a lower dtype than the accumulators."""
    width = _batch_width(shape, k, W, D)
    batch_size = _batch_size(shape, k)
    out = {"activations of one batch": 4 * BATCH_COPIES * batch_size * shape.positions * width}
    if shape.compute_bytes < 8:
        largest = max((rows_of[i] * W[j] for i, j in pairs), default=0)
        if shape.cka:
            R = [r * D[i] for i, r in enumerate(shape.cka_rows)]
            largest = max([largest] + [R[i] * R[j] for i, j in pairs])
        out["product scratch"] = shape.compute_bytes * largest
    return out


def settings_memory_plan(models, settings, n_quizzes: int | None = None, saes=None,
                         process: int | None = None) -> MemoryPlan:
    """The memory plan of ``compare_models(models, settings=settings, saes=saes)``
    over ``n_quizzes`` quizzes (default: those ``settings.tokens`` asks for):
    what the command prints and what the comparison checks."""
    import torch

    return memory_plan(models, settings.layers, cka=settings.cka, saes=saes, random_init=settings.random_init,
                       controls=settings.primary_controls(), positions=settings.positions_per_quiz,
                       n_blocks=settings.n_blocks, baseline=settings.baseline,
                       cka_permutations=settings.cka_permutations, batch_size=settings.batch_size,
                       n_quizzes=settings.n_quizzes() if n_quizzes is None else n_quizzes,
                       compute_dtype=getattr(torch, settings.precision), max_memory=settings.max_memory,
                       process=process, block_layers=settings.block_layers)


def check_memory(plan: MemoryPlan) -> None:
    """Raise :class:`UniversalityError` (one line) when the plan exceeds its
    limit, or its row blocks need more disk than the temporary folder has free."""
    if not plan.fits():
        raise UniversalityError(
            f"{plan.line()}; over the limit by {format_memory(plan.total - plan.limit)}: compare fewer --layers or "
            f"models, drop --cka or --no-random-init, or raise --max-memory")
    if plan.disk:
        from culture.universality.spill import disk_free

        free = disk_free()
        if plan.disk > free:
            raise UniversalityError(
                f"{plan.line()}; the temporary folder has {format_memory(free)} free: set TMPDIR to a folder with "
                f"room, or compare fewer --layers or models")


__all__ = ["memory_plan", "settings_memory_plan", "limit_heap_growth", "check_memory", "MemoryPlan",
           "parse_memory", "format_memory", "available_memory", "process_memory", "DEFAULT_MAX_MEMORY"]
