"""The memory plan of a universality comparison, checked before any work.

:func:`memory_plan` counts every buffer :func:`~culture.universality.compare_models`
holds at its peak, from the shapes alone (it never depends on the number of
tokens): the process as it is now (interpreter, libraries, the models), the
float64 accumulators of pass 1 (neuron co-moments per model pair and half,
rotated units' moments of the rotation baseline or null co-moments, per-group sums
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
from culture.universality_settings import CONTROLS, DEFAULT_MAX_MEMORY, parse_memory

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
    #: bytes of co-moment rows written to the temporary folder (row blocks)
    disk: int = 0

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
        blocks = ""
        if self.block_layers is not None:
            blocks = (f"; pass 1 in {self.sweeps} row blocks of {self.block_layers} layer(s), "
                      f"{format_memory(self.disk)} of co-moments on disk")
        return (f"memory plan {format_memory(self.total)}{limit}: process now {format_memory(self.process)}, "
                f"{parts}{blocks}")

    def to_dict(self) -> dict:
        return {"total_bytes": self.total, "process_bytes": self.process, "items": dict(self.items),
                "tile_rows": self.tile_rows, "limit_bytes": self.limit, "block_layers": self.block_layers,
                "sweeps": self.sweeps, "disk_bytes": self.disk}


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
    The analysis block is the largest that fits.

    ``block_layers``: pass 1 accumulates the neuron co-moments of this many
    layers of rows per sweep over the quizzes, writing each finished block to
    disk (:mod:`~culture.universality.spill`); None: one sweep in memory when
    that fits the limit, else the largest block that does."""
    from culture.universality.compare import resolve_layers

    dims = [_dims(m) for m in models]
    n_layers = len(resolve_layers([d[0] for d in dims], layers))
    process = process_memory() if process is None else int(process)
    args = (models, layers, cka, saes, random_init, controls, positions, n_blocks, baseline, cka_permutations,
            batch_size, n_quizzes, n_tasks, compute_dtype, max_memory, process)
    if block_layers is not None:
        return _plan(*args, block_layers=min(int(block_layers), n_layers))
    whole = _plan(*args, block_layers=None)
    if whole.fits() or n_layers < 2:
        return whole
    for b in range(n_layers - 1, 0, -1):
        blocked = _plan(*args, block_layers=b)
        if blocked.fits() or b == 1:
            return blocked
    return whole


def _plan(models, layers, cka, saes, random_init, controls, positions, n_blocks, baseline, cka_permutations,
          batch_size, n_quizzes, n_tasks, compute_dtype, max_memory, process, block_layers) -> MemoryPlan:
    """:func:`memory_plan` with pass 1 in row blocks of ``block_layers`` layers (None: not)."""
    from culture.universality.compare import BATCH_FLOATS, resolve_layers

    dims = [_dims(m) for m in models]
    chosen = resolve_layers([d[0] for d in dims], layers)
    controls = check_controls(controls)
    m = len(dims)
    L = len(chosen)
    H = [d[1] for d in dims]
    D = [d[2] for d in dims]
    W = [L * h for h in H]
    G = [n_groups(c, positions) for c in controls if c != "none"]
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    ordered = [(i, j) for i in range(m) for j in range(m) if i != j]
    groups = [2] + ([1] if random_init else [])  # halves per group: trained (held-out), random-init
    f8 = 8
    items: dict[str, int] = {}

    def add(name, n):
        items[name] = items.get(name, 0) + int(n)

    # rows of model i's co-moments held at once: all, or one row block (the rest on disk)
    rows_of = W if block_layers is None else [min(block_layers, L) * h for h in H]
    disk = 0
    for h in groups:
        add("neuron co-moments", h * f8 * sum(rows_of[i] * W[j] for i, j in pairs))
        if block_layers is not None:
            disk += h * f8 * sum(W[i] * W[j] for i, j in pairs)
        if baseline == "rotation":
            add("rotated unit moments", h * f8 * 2 * sum(W))
        else:
            add("null co-moments", h * f8 * sum(rows_of[i] * W[j] for i, j in ordered))
            if block_layers is not None:
                disk += h * f8 * sum(W[i] * W[j] for i, j in ordered)
            add("group sums", h * f8 * sum(g * W[j] for _, j in ordered for g in G))
        add("group sums", h * f8 * sum(g * W[i] for i in range(m) for g in G))
        # pass 2: block sums of the resampled neurons (at most every neuron), per control
        sets = 4 if h == 2 else 2
        add("bootstrap block sums", len(controls) * f8 * n_blocks * (
            sum(2 * (sets // 2) * W[i] for i in range(m)) + sum(3 * sets * W[i] for i, _ in ordered)))
        if cka:
            R = [(1 + (d[0] if layers is None else L)) * D[i] for i, d in enumerate(dims)]
            rows = [1 + (d[0] if layers is None else L) for d in dims]
            add("CKA co-moments", f8 * (sum(R[i] * R[j] for i, j in pairs)
                                        + sum(rows[i] * D[i] ** 2 for i in range(m))))
            add("CKA co-moments", f8 * sum((g if g else 1) * R[i] for i in range(m) for g in G + [1]))
            # pass 2 (primary control): x^T x, a^T x per model, x^T y, a^T y, b^T x per pair
            add("CKA sums", f8 * (sum(R[i] ** 2 + rows[i] * R[i] for i in range(m))
                                  + sum(R[i] * R[j] + rows[i] * R[j] + rows[j] * R[i] for i, j in pairs)))
            if h == 2 and cka_permutations:
                add("CKA permutation sums", f8 * cka_permutations * sum(
                    min(rows[i], rows[j]) * (D[i] * D[j] + D[i] + D[j]) for i, j in pairs))
        if h == 2:
            add("task sums", 2 * f8 * n_tasks * sum(W))
    if saes:
        d = [int(s.cfg.d_sae) for s in saes if s is not None]
        sae_pairs = [(a, b) for a in range(len(d)) for b in range(a + 1, len(d))]
        add("SAE co-moments", f8 * sum(2 * d[a] * d[b] for a, b in sae_pairs))
        add("SAE co-moments", f8 * (max(G) if G else 1) * (sum(d) + 2 * sum(d[a] + d[b] for a, b in sae_pairs)))
        # the correlation matrices of the analysis (within groups, corr, null) and the Hungarian copy
        add("SAE analysis", f8 * 4 * max((d[a] * d[b] for a, b in sae_pairs), default=0))
    # the scratch of the batch products when they run in a lower dtype than the accumulators
    if compute_dtype is not None and getattr(compute_dtype, "itemsize", 8) < 8:
        largest = max((W[i] * W[j] for i, j in pairs), default=0)
        if cka:
            rws = [(1 + (d[0] if layers is None else L)) * D[i] for i, d in enumerate(dims)]
            largest = max([largest] + [rws[i] * rws[j] for i, j in pairs])
        add("product scratch", compute_dtype.itemsize * largest)
    # one forward batch (float32) with its working copies
    cka_rows = [1 + (d[0] if layers is None else L) for d in dims]
    width = sum(W) + (sum(r * D[i] for i, r in enumerate(cka_rows)) if cka else 0)
    width += sum(int(s.cfg.d_sae) for s in saes or [] if s is not None)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        batch_size = int(max(1, min(256, BATCH_FLOATS // (positions * max(width, 1)))))
    if n_quizzes is not None:
        batch_size = max(1, min(batch_size, int(n_quizzes)))
    add("activations of one batch", 4 * BATCH_COPIES * batch_size * positions * width)
    if random_init:
        add("random-init models", 4 * sum(d[3] for d in dims))
    # analysis temporaries: merged group sums and the within-group deviations of one control,
    # and the row blocks of the co-moments
    gmax = max(G, default=0)
    # merged group sums of both models, the deviations made when a view is built, and the 3 views kept
    fixed = f8 * 7 * gmax * max(W)
    per_row = f8 * 3 * 5 * max(W)  # 3 splits x (co-moment, corr, baseline, j's baseline columns, slack)
    limit, source = None, ""
    if max_memory is not None and str(max_memory).strip().lower() != DEFAULT_MAX_MEMORY:
        limit, source = parse_memory(max_memory), ""
    else:
        avail = available_memory()
        if avail is not None:
            limit, source = process + avail, ", memory available"
    tile_rows = None
    if limit is not None:
        room = limit - process - sum(items.values()) - fixed
        layer_rows = max(H)
        rows = max(room // per_row, 0) if per_row else 0
        if rows < max(W):
            tile_rows = int(max(layer_rows, rows // layer_rows * layer_rows))
    rows_used = max(W) if tile_rows is None else min(tile_rows, max(W))
    add("analysis temporaries", fixed + per_row * rows_used)
    sweeps = 1 if block_layers is None else -(-L // min(block_layers, L))
    return MemoryPlan(items, tile_rows, limit, source, process, block_layers=block_layers, sweeps=sweeps, disk=disk)


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


__all__ = ["memory_plan", "settings_memory_plan", "check_memory", "MemoryPlan", "parse_memory", "format_memory", "available_memory",
           "process_memory", "DEFAULT_MAX_MEMORY"]
