"""Where a patch goes: *sites* (a hook point, optionally one head and a set of
positions) and the tables of sites the patching commands scan.

Positions are TransformerLens positions: hooked position p reads quiz token
p - 1 (position 0 reads BOS) and predicts quiz token p. A position belongs
to the block of the token it *reads* (BOS joins block A), so "block B" is the
101 positions reading B's marker and cells, and "cell (i, j) of block b" is
the position reading that cell. The last cell of the last block is never
read (it is only predicted), so its entry stays empty.

Tables (``WHAT``):

* ``resid`` -- residual stream before block L (L = 0 .. n_layers, the last
  row being the residual after the last block, which the readout decodes)
  x block (A, f(A), B, f(B), and ``all`` positions);
* ``layers`` -- attention output and MLP output of each layer (all positions);
* ``heads`` -- each head's output (its slice of ``hook_z``; all positions),
  layer x head;
* ``heads-by-block`` -- each head's output at the positions of one query
  block, head x block;
* ``cells`` -- the residual stream before block L at each cell of one block,
  layer x 100 cells (drawn on the 10x10 grid).
"""

from __future__ import annotations

from dataclasses import dataclass

from culture.circuit_settings import WHAT, CircuitError
from culture.hooks import act_name
from culture.quiz import BLOCK_LEN, GRID, N_BLOCKS, N_CELLS, QUIZ_LEN

__all__ = ["Site", "SiteTable", "WHAT", "BLOCK_NAMES", "block_names", "block_positions", "cell_position",
           "site_table"]

#: canonical block names (the predicted block of the canonical structure is f(B))
BLOCK_NAMES = ("A", "f(A)", "B", "f(B)")
KINDS = ("resid", "attn", "mlp", "head")


def block_names(quiz) -> tuple[str, ...]:
    """Labels of the four blocks of a quiz (404,) in its own order: A, f(A), B, f(B)."""
    from culture.quiz import MARKER_LABELS

    return tuple(MARKER_LABELS[int(quiz[BLOCK_LEN * b])] for b in range(N_BLOCKS))


def block_positions(block: int) -> tuple[int, ...]:
    """Hooked positions reading the tokens (marker + cells) of ``block`` 0..3;
    BOS (position 0) counts with block 0."""
    first = BLOCK_LEN * block + 1
    positions = list(range(first, min(first + BLOCK_LEN, QUIZ_LEN)))
    return tuple([0] + positions) if block == 0 else tuple(positions)


def cell_position(block: int, cell: int) -> int | None:
    """The hooked position reading cell ``cell`` (0..99, row-major) of
    ``block``; None for the last cell of the last block (never read)."""
    p = BLOCK_LEN * block + 2 + cell
    return p if p < QUIZ_LEN else None


@dataclass(frozen=True)
class Site:
    """One patch: a component's activation at some positions (None = all).

    ``kind``: ``resid`` (the residual stream before block ``layer``;
    ``layer == n_layers`` is the residual after the last block), ``attn`` /
    ``mlp`` (a layer's output), ``head`` (``head``'s slice of ``hook_z``)."""

    kind: str
    layer: int
    head: int | None = None
    positions: tuple[int, ...] | None = None
    label: str = ""

    def hook_name(self, n_layers: int) -> str:
        if self.kind == "resid":
            if self.layer == n_layers:
                return act_name("resid_post", n_layers - 1)
            return act_name("resid_pre", self.layer)
        if self.kind == "attn":
            return act_name("attn_out", self.layer)
        if self.kind == "mlp":
            return act_name("mlp_out", self.layer)
        return act_name("z", self.layer)

    def component(self) -> str:
        """Name of the component alone (no positions): ``head 1.2``, ``mlp 0``, ``resid 3``."""
        return f"head {self.layer}.{self.head}" if self.kind == "head" else f"{self.kind} {self.layer}"

    def select(self, act):
        """The patched slice of an activation (batch, pos, ...): a view of the
        positions (and head)."""
        x = act if self.positions is None else act[:, list(self.positions)]
        return x if self.head is None else x[:, :, self.head]

    def patch(self, target, source):
        """``target`` with this site's slice taken from ``source`` (a new tensor)."""
        out = target.clone()
        pos = slice(None) if self.positions is None else list(self.positions)
        if self.head is None:
            out[:, pos] = source[:, pos]
        else:
            out[:, pos, self.head] = source[:, pos, self.head]
        return out


@dataclass
class SiteTable:
    """Sites laid out as a table: ``cells[r][c]`` is the index in ``sites`` (or
    None); ``rows`` / ``cols`` label it. ``block``: the block of a cells table."""

    what: str
    sites: list[Site]
    rows: list[str]
    cols: list[str]
    cells: list[list[int | None]]
    block: int | None = None

    def grid(self, values):
        """(rows, cols) numpy array of per-site ``values`` (NaN where no site)."""
        import numpy as np

        out = np.full((len(self.rows), len(self.cols)), np.nan)
        for r, row in enumerate(self.cells):
            for c, k in enumerate(row):
                if k is not None:
                    out[r, c] = values[k]
        return out


def _check_layers(layers, limit: int, what: str) -> list[int]:
    chosen = list(range(limit)) if not layers else list(dict.fromkeys(int(x) for x in layers))
    bad = [x for x in chosen if not 0 <= x < limit]
    if bad:
        raise CircuitError(f"{what}: layer {bad[0]} out of range 0..{limit - 1}")
    return chosen


def site_table(what: str, n_layers: int, n_heads: int, *, block: int = 2, layers=None,
               names=BLOCK_NAMES) -> SiteTable:
    """The sites of one table (see the module docstring). ``block`` (0..3) is
    the block of a ``cells`` table (default B); ``layers`` restricts the rows
    of ``resid`` / ``cells`` (0..n_layers) and of ``layers`` / ``heads`` /
    ``heads-by-block`` (0..n_layers-1). ``names``: the four blocks' labels
    (the canonical A, f(A), B, f(B) by default; :func:`block_names` of the
    pairs for another structure)."""
    if what not in WHAT:
        raise CircuitError(f"unknown table {what!r} (choose from {', '.join(WHAT)})")
    if not 0 <= block < N_BLOCKS:
        raise CircuitError(f"block must be 0..{N_BLOCKS - 1} (A, f(A), B, f(B)), got {block}")
    sites: list[Site] = []
    cells: list[list[int | None]] = []

    def add(site: Site | None) -> int | None:
        if site is None:
            return None
        sites.append(site)
        return len(sites) - 1

    if what in ("resid", "cells"):
        rows_l = _check_layers(layers, n_layers + 1, f"--what {what}")
        rows = [f"resid {L}" for L in rows_l]
        if what == "resid":
            cols = [*names, "all"]
            for L in rows_l:
                row = [add(Site("resid", L, positions=block_positions(b), label=f"resid {L} @ {names[b]}"))
                       for b in range(N_BLOCKS)]
                row.append(add(Site("resid", L, label=f"resid {L} @ all")))
                cells.append(row)
        else:
            cols = [f"{i},{j}" for i in range(GRID) for j in range(GRID)]
            for L in rows_l:
                row = []
                for c in range(N_CELLS):
                    p = cell_position(block, c)
                    row.append(add(None if p is None else Site(
                        "resid", L, positions=(p,), label=f"resid {L} @ {names[block]}[{c // GRID},{c % GRID}]")))
                cells.append(row)
        return SiteTable(what, sites, rows, cols, cells, block if what == "cells" else None)

    rows_l = _check_layers(layers, n_layers, f"--what {what}")
    if what == "layers":
        cols = ["attn", "mlp"]
        for L in rows_l:
            cells.append([add(Site(k, L, label=f"{k} {L}")) for k in ("attn", "mlp")])
        return SiteTable(what, sites, [f"layer {L}" for L in rows_l], cols, cells)
    if what == "heads":
        cols = [f"head {h}" for h in range(n_heads)]
        for L in rows_l:
            cells.append([add(Site("head", L, h, label=f"head {L}.{h}")) for h in range(n_heads)])
        return SiteTable(what, sites, [f"layer {L}" for L in rows_l], cols, cells)
    # heads-by-block
    rows = []
    for L in rows_l:
        for h in range(n_heads):
            rows.append(f"head {L}.{h}")
            cells.append([add(Site("head", L, h, positions=block_positions(b),
                                   label=f"head {L}.{h} @ {names[b]}")) for b in range(N_BLOCKS)])
    return SiteTable(what, sites, rows, list(names), cells)
