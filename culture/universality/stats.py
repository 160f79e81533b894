"""Streaming statistics for universality: correlations, linear CKA, matching.

Everything here works on activations given batch by batch (rows = tokens), so
memory grows with the number of variables squared, never with the number of
tokens:

    >>> acc = StreamingCorrelation()
    >>> for x, y in batches:              # x (tokens, a), y (tokens, b)
    ...     acc.update(x, y)
    >>> corr = acc.corr()                 # (a, b) Pearson correlations, float64
    >>> best_a, best_b = max_correlations(corr)

Numerics: each batch is centred on its own mean and merged into the running
co-moment with the pairwise update of Chan, Golub & LeVeque (1979):

    C  <-  C + Xc_b^T Yc_b + (n n_b / (n + n_b)) (mean_b(x) - mean(x)) (mean_b(y) - mean(y))^T

in float64. This is exact algebra (the same numbers as centring the whole
data set at once) and avoids the cancellation of the raw-moment formula
sum(xy) - n mean(x) mean(y) when means are large next to the spread.

Linear CKA (Kornblith et al., 2019) uses the same co-moments:
HSIC_lin(X, Y) = ||Xc^T Yc||_F^2 and CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: a variable whose variance is below DEAD_RELATIVE * mean^2 + DEAD_ABSOLUTE is
#: constant over the tokens seen ("dead": it never fires, or always equally).
DEAD_RELATIVE = 1e-20
DEAD_ABSOLUTE = 1e-30
#: after removing group means (:meth:`StreamingCorrelation.within_groups`), a
#: variable keeping less than this share of its variance is a function of the
#: group alone and counts as dead too. The share is 1,000 float32 epsilons
#: (1.2e-4): below it, the rounding of float32 batch products (about 1e-7 of
#: the total co-moment, whose between-group part is then nearly all of it) is
#: no longer small beside what is left within groups (excesses off by 0.2
#: against float64 were measured). One floor for both precisions keeps their
#: figures comparable (``benchmarks/precision_universality.py``; the floor
#: was 1e-10 until 2026-12-07).
WITHIN_DEAD_RELATIVE = 1e3 * float(torch.finfo(torch.float32).eps)


def float64_sum(x: torch.Tensor, dim: int = 0, rows: list[int] | None = None) -> torch.Tensor:
    """``x.sum(dim, dtype=torch.float64)`` (of ``x[rows]``, rows along
    dimension 0, when given), the same to the bit: x is copied into a reused
    float64 buffer (:func:`scratch_buffer`) and summed there. On the CPU
    torch's dtype-converting reduction is several times slower than that copy
    and a float64 reduction (a batch of activations summed over its quizzes
    or its positions: about 5x), and a fresh float64 copy costs its page
    faults every batch."""
    picked = range(x.shape[0]) if rows is None else rows
    shape = (len(picked), *x.shape[1:])
    width = int(np.prod(shape[1:], dtype=np.int64))
    buf = scratch_buffer((len(picked), width), torch.float64, x.device, slot="batch").view(shape)
    if rows is None:
        buf.copy_(x)
    else:
        for k, r in enumerate(rows):
            buf[k].copy_(x[r])
    return buf.sum(dim)


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


class GroupSums:
    """Per-group sums (G, a) and token counts (G,) of a set of variables, for
    moments *within* groups (e.g. groups = positions: correlations that
    positional coding alone cannot produce)."""

    def __init__(self, n_groups: int, *, dtype: torch.dtype = torch.float64):
        if int(n_groups) < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        self.n_groups = int(n_groups)
        self.dtype = dtype
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def update(self, x, groups) -> "GroupSums":
        x = _as_tensor(x)
        groups = _as_tensor(groups).to(device=x.device, dtype=torch.long).reshape(-1)
        if groups.shape[0] != x.shape[0]:
            raise ValueError(f"groups must have one entry per row: {groups.shape[0]} for {x.shape[0]} rows")
        if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= self.n_groups):
            raise ValueError(f"group ids must be in 0..{self.n_groups - 1}")
        if self.sums is None:
            self.sums = torch.zeros(self.n_groups, x.shape[1], dtype=self.dtype, device=x.device)
            self.counts = torch.zeros(self.n_groups, dtype=self.dtype, device=x.device)
        if x.dtype != self.dtype:  # converted into a reused buffer, not a fresh copy per batch
            x = scratch_buffer(x.shape, self.dtype, x.device, slot="batch").copy_(x)
        self.sums.index_add_(0, groups, x)
        self.counts.index_add_(0, groups, torch.ones(groups.shape[0], dtype=self.dtype, device=x.device))
        return self

    def add(self, sums, counts) -> "GroupSums":
        """Add precomputed per-group sums (G, a) and counts (G,) (e.g. activations
        (quizzes, positions, a) summed over quizzes, groups = positions)."""
        return self.add_block(0, sums, counts)

    def add_block(self, start: int, sums, counts) -> "GroupSums":
        """Add precomputed sums (k, a) and counts (k,) of groups start..start+k-1."""
        sums = _as_tensor(sums)
        counts = _as_tensor(counts)
        if self.sums is None:
            self.sums = torch.zeros(self.n_groups, sums.shape[1], dtype=self.dtype, device=sums.device)
            self.counts = torch.zeros(self.n_groups, dtype=self.dtype, device=sums.device)
        stop = start + sums.shape[0]
        self.sums[start:stop] += sums.to(self.sums)
        self.counts[start:stop] += counts.to(self.counts)
        return self

    def merged(self, other: "GroupSums") -> "GroupSums":
        """The group sums of both token sets together."""
        out = GroupSums(self.n_groups, dtype=self.dtype)
        if self.sums is None or other.sums is None:
            src = self if other.sums is None else other
            out.sums = src.sums.clone() if isinstance(src.sums, torch.Tensor) else src.sums  # None, or on disk
            out.counts = None if src.counts is None else src.counts.clone()
            return out
        out.sums = self.sums + other.sums
        out.counts = self.counts + other.counts
        return out

    def columns(self, start: int, stop: int) -> "GroupSums":
        """The group sums of variables start..stop-1 (a view)."""
        out = GroupSums(self.n_groups, dtype=self.dtype)
        out.sums = self.sums[:, start:stop]
        out.counts = self.counts
        return out

    def means(self) -> torch.Tensor:
        """(G, a) per-group means (0 for an empty group)."""
        return self.sums / self.counts.clamp(min=1)[:, None]

    def block(self, start: int, stop: int) -> torch.Tensor:
        """(G, stop - start) sums of variables start..stop-1."""
        return self.sums[:, start:stop]

    @staticmethod
    def cat(parts: list["GroupSums"]) -> "GroupSums":
        """The group sums of the concatenated variables (same groups, same tokens)."""
        out = GroupSums(parts[0].n_groups, dtype=parts[0].dtype)
        out.sums = torch.cat([p.sums for p in parts], 1)
        out.counts = parts[0].counts
        return out


class MergedGroupSums:
    """The group sums of two token sets (e.g. the two halves of the quizzes)
    added a block of variables at a time when read, instead of a merged
    (G, a) copy: the same sums as :meth:`GroupSums.merged`, element for element."""

    def __init__(self, a: GroupSums, b: GroupSums):
        self.parts = (a, b)
        self.n_groups, self.dtype = a.n_groups, a.dtype
        self.counts = a.counts + b.counts

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.parts[0].sums[:, start:stop] + self.parts[1].sums[:, start:stop]

    @property
    def sums(self) -> torch.Tensor:
        """All the merged sums (a (G, a) tensor made now)."""
        return self.block(0, self.parts[0].sums.shape[1])

    def means(self) -> torch.Tensor:
        return self.sums / self.counts.clamp(min=1)[:, None]

    def columns(self, start: int, stop: int) -> GroupSums:
        out = GroupSums(self.n_groups, dtype=self.dtype)
        out.sums, out.counts = self.block(start, stop), self.counts
        return out


#: variables per block when the analysis walks group sums (bounds its (G, block) temporaries)
GROUP_BLOCK = 2048


def group_deviations(groups, used: torch.Tensor, counts: torch.Tensor, mean: torch.Tensor, start: int, stop: int,
                     device) -> torch.Tensor:
    """(used groups, stop - start): each group's mean less the overall mean,
    variables start..stop-1 (``groups``: GroupSums or MergedGroupSums)."""
    return groups.block(start, stop).to(device)[used] / counts[:, None] - mean[start:stop]


def between_group_m2(groups, used, counts, mean, device) -> torch.Tensor:
    """(a,) the between-group part of each variable's m2, sum_g n_g (mean_g -
    mean)^2, :data:`GROUP_BLOCK` variables at a time (the same sums as in one go)."""
    width = mean.shape[0]
    parts = []
    for start in range(0, width, GROUP_BLOCK):
        d = group_deviations(groups, used, counts, mean, start, min(start + GROUP_BLOCK, width), device)
        parts.append((counts[:, None] * d * d).sum(0))
    return torch.cat(parts) if parts else mean.new_zeros(0)


@dataclass
class Centered:
    """A batch centred on its own mean, ready for :meth:`StreamingCorrelation.update`
    (prepare a model's batch once, feed it to every pair it belongs to)."""

    n: int
    mean: torch.Tensor  # (a,)
    centered: torch.Tensor  # (tokens, a)
    m2: torch.Tensor  # (a,) sum of squared deviations

    @staticmethod
    def of(x, dtype: torch.dtype = torch.float64, device=None, compute_dtype: torch.dtype | None = None
           ) -> "Centered":
        """Centre x (tokens, a): mean and m2 in ``dtype``; with a lower
        ``compute_dtype`` the centred values are kept in it (what the batch
        products read), the mean and m2 still summed in ``dtype``."""
        x = _as_tensor(x)
        if x.dim() != 2:
            raise ValueError(f"expected a 2-D (tokens, features) batch, got {tuple(x.shape)}")
        if compute_dtype is not None and compute_dtype != dtype and x.shape[0]:
            xl = x.to(device=device or x.device, dtype=compute_dtype)
            mean = xl.mean(0)
            xc = xl - mean
        else:
            xc = x.to(device=device or x.device, dtype=dtype, copy=True)  # centred in place: one copy of the batch
            mean = xc.mean(0) if xc.shape[0] else torch.zeros(xc.shape[1], dtype=dtype, device=xc.device)
            xc -= mean
        square = torch.mul(xc, xc, out=scratch_buffer(xc.shape, xc.dtype, xc.device, slot="batch"))
        return Centered(int(x.shape[0]), mean.to(dtype), xc, square.sum(0).to(dtype))

    @property
    def shape(self):
        return self.centered.shape

    def columns(self, start: int, stop: int) -> "Centered":
        """The batch of variables start..stop-1 (already centred: a view)."""
        return Centered(self.n, self.mean[start:stop], self.centered[:, start:stop], self.m2[start:stop])

    def low(self, dtype: torch.dtype) -> torch.Tensor:
        """The centred batch in ``dtype`` (cast once, shared by every pair)."""
        if self.centered.dtype == dtype:
            return self.centered
        cache = self.__dict__.setdefault("_low", {})
        if dtype not in cache:
            cache[dtype] = self.centered.to(dtype)
        return cache[dtype]


class StreamingCorrelation:
    """Running means, variances and cross co-moments of two sets of variables.

    ``update(x, y)`` with x (tokens, a) and y (tokens, b) (same tokens, same
    order); ``update(x)`` alone accumulates x against itself (one product per
    batch instead of two). Accumulators (float64 by default) live on the
    device of the first batch. Batch products run in ``compute_dtype``
    (default: the accumulator dtype); float32 there is faster on CPUs and most
    GPUs and, since each batch is centred first, still accurate to ~1e-6.

    With ``n_groups`` (and ``update(x, y, groups=...)``) it also keeps
    per-group sums, and :meth:`within_groups` gives the moments pooled within
    groups (each variable's group mean removed), e.g. correlations within
    position.

    Memory: a*b + 2(a+b) numbers (+ n_groups*(a+b)), whatever the number of tokens.
    """

    def __init__(self, *, dtype: torch.dtype = torch.float64, compute_dtype: torch.dtype | None = None,
                 n_groups: int | None = None):
        self.dtype = dtype
        self.n_groups = n_groups
        self.groups_x = GroupSums(n_groups, dtype=dtype) if n_groups else None
        self.groups_y = GroupSums(n_groups, dtype=dtype) if n_groups else None
        self.ref_m2_x: torch.Tensor | None = None  # total m2 before removing group means
        self.ref_m2_y: torch.Tensor | None = None
        self.compute_dtype = compute_dtype or dtype
        self.n = 0
        self.symmetric: bool | None = None
        self.mean_x: torch.Tensor | None = None
        self.mean_y: torch.Tensor | None = None
        self.m2_x: torch.Tensor | None = None  # sum of squared deviations
        self.m2_y: torch.Tensor | None = None
        self.comoment: torch.Tensor | None = None  # sum of (x - mean x)(y - mean y)^T

    # -------------------------------------------------------------- update

    def update(self, x, y=None, groups=None) -> "StreamingCorrelation":
        """Add a batch: x (tokens, a) and y (tokens, b), or :class:`Centered`
        batches; ``y`` None accumulates x against itself."""
        if (groups is None) != (self.n_groups is None):
            raise ValueError("pass groups exactly when the accumulator was made with n_groups")
        symmetric = y is None
        if self.symmetric is None:
            self.symmetric = symmetric
        elif self.symmetric != symmetric:
            raise ValueError("StreamingCorrelation: mixing update(x) and update(x, y)")
        device = None if self.comoment is None else self.comoment.device
        cx = x if isinstance(x, Centered) else Centered.of(x, self.dtype, device)
        cy = cx if symmetric else (y if isinstance(y, Centered) else Centered.of(y, self.dtype, cx.centered.device))
        if cx.n != cy.n:
            raise ValueError(f"x and y must have the same number of rows (tokens), got {cx.n} and {cy.n}")
        if self.comoment is not None and (cx.shape[1] != self.mean_x.shape[0] or cy.shape[1] != self.mean_y.shape[0]):
            raise ValueError(f"feature sizes changed: ({cx.shape[1]}, {cy.shape[1]}) after "
                             f"({self.mean_x.shape[0]}, {self.mean_y.shape[0]})")
        nb = cx.n
        if nb == 0:
            return self
        if groups is not None:
            self.groups_x.update(cx.centered + cx.mean, groups)
            if not symmetric:
                self.groups_y.update(cy.centered + cy.mean, groups)
        mx, xc, m2x = cx.mean, cx.centered, cx.m2
        my, yc, m2y = cy.mean, cy.centered, cy.m2
        if self.comoment is None:
            self.comoment = torch.zeros(xc.shape[1], yc.shape[1], dtype=self.dtype, device=xc.device)
            self._add_product(xc, yc, cx, cy)
            self.mean_x, self.m2_x = mx.to(self.dtype), m2x.to(self.dtype)
            self.mean_y, self.m2_y = my.to(self.dtype), m2y.to(self.dtype)
            self.n = nb
            return self
        n = self.n
        total = n + nb
        f = n * nb / total
        dx = mx - self.mean_x
        dy = dx if symmetric else my - self.mean_y
        self._add_product(xc, yc, cx, cy)
        self.comoment.addr_(dx, dy, alpha=f)
        self.m2_x = self.m2_x + m2x + dx * dx * f
        self.mean_x = self.mean_x + dx * (nb / total)
        if symmetric:
            self.m2_y, self.mean_y = self.m2_x, self.mean_x
        else:
            self.m2_y = self.m2_y + m2y + dy * dy * f
            self.mean_y = self.mean_y + dy * (nb / total)
        self.n = total
        return self

    def _add_product(self, xc: torch.Tensor, yc: torch.Tensor, cx: "Centered", cy: "Centered") -> None:
        if self.compute_dtype == self.dtype == xc.dtype == yc.dtype:
            self.comoment.addmm_(xc.t(), yc)
        else:  # the product into a reused buffer, added in place (no per-batch allocation or cast copy)
            c = self.compute_dtype
            xl = cx.low(c)
            yl = xl if cy is cx else cy.low(c)
            self.comoment.add_(transposed_product(xl, yl))

    def merged(self, other: "StreamingCorrelation") -> "StreamingCorrelation":
        """A new accumulator holding the moments of both token sets (the pairwise
        merge of Chan, Golub & LeVeque), e.g. two halves of the quizzes."""
        if other.comoment is None:
            return self._copy()
        if self.comoment is None:
            return other._copy()
        out = self._copy()
        n, nb = self.n, other.n
        total = n + nb
        f = n * nb / total
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        out.comoment = self.comoment + other.comoment + f * torch.outer(dx, dy)
        out.m2_x = self.m2_x + other.m2_x + dx * dx * f
        out.m2_y = self.m2_y + other.m2_y + dy * dy * f
        out.mean_x = self.mean_x + dx * (nb / total)
        out.mean_y = self.mean_y + dy * (nb / total)
        out.n = total
        return out

    def _copy(self) -> "StreamingCorrelation":
        out = StreamingCorrelation(dtype=self.dtype, compute_dtype=self.compute_dtype)
        out.n, out.symmetric = self.n, self.symmetric
        out.mean_x, out.mean_y, out.m2_x, out.m2_y = self.mean_x, self.mean_y, self.m2_x, self.m2_y
        out.comoment = self.comoment
        out.ref_m2_x, out.ref_m2_y = self.ref_m2_x, self.ref_m2_y
        return out

    # ------------------------------------------------------------- results

    def _check(self) -> None:
        if self.comoment is None:
            raise ValueError("StreamingCorrelation: no data (call update first)")

    @property
    def var_x(self) -> torch.Tensor:
        """Population variances of the x variables (a,)."""
        self._check()
        return self.m2_x / self.n

    @property
    def var_y(self) -> torch.Tensor:
        self._check()
        return self.m2_y / self.n

    def dead_x(self) -> torch.Tensor:
        """(a,) bool: x variables constant over every token seen (within
        groups: a function of the group alone)."""
        self._check()
        return _dead(self.m2_x, self.mean_x, self.n, self.ref_m2_x)

    def dead_y(self) -> torch.Tensor:
        self._check()
        return _dead(self.m2_y, self.mean_y, self.n, self.ref_m2_y)

    def within_groups(self, groups_x: GroupSums | None = None,
                      groups_y: GroupSums | None = None) -> "StreamingCorrelation":
        """A new accumulator holding the moments pooled *within* groups: every
        variable centred on its group's mean instead of the global one,

            C_within = C - sum_g n_g (mean_g(x) - mean(x)) (mean_g(y) - mean(y))^T

        (the between-group part removed). Group sums come from this
        accumulator (made with ``n_groups``) or are given (they must cover the
        same tokens). Variables with no variance left within groups are dead."""
        self._check()
        gx = groups_x if groups_x is not None else self.groups_x
        if groups_y is not None:
            gy = groups_y
        else:
            gy = gx if self.symmetric else self.groups_y
        if gx is None or gy is None or gx.sums is None or gy.sums is None:
            raise ValueError("within_groups needs group sums (n_groups, or groups_x / groups_y)")
        counts = gx.counts.to(self.comoment.device)
        if abs(float(counts.sum()) - self.n) > 0.5 or abs(float(gy.counts.sum()) - self.n) > 0.5:
            raise ValueError(f"group sums cover {float(counts.sum()):.0f} tokens, the accumulator {self.n}")
        used = torch.nonzero(counts > 0).flatten()  # empty groups add nothing
        counts = counts[used]
        dx = gx.sums.to(self.comoment.device)[used] / counts[:, None] - self.mean_x
        dy = gy.sums.to(self.comoment.device)[used] / counts[:, None] - self.mean_y
        out = StreamingCorrelation(dtype=self.dtype, compute_dtype=self.compute_dtype)
        out.n, out.symmetric = self.n, self.symmetric
        out.mean_x, out.mean_y = self.mean_x, self.mean_y
        c = self.compute_dtype  # the between-group product, in the compute dtype like the batch products
        between = ((dx * counts[:, None]).to(c).t() @ dy.to(c)).to(self.dtype)
        out.comoment = self.comoment - between
        out.m2_x = (self.m2_x - (counts[:, None] * dx * dx).sum(0)).clamp(min=0)
        out.m2_y = (self.m2_y - (counts[:, None] * dy * dy).sum(0)).clamp(min=0)
        out.ref_m2_x, out.ref_m2_y = self.m2_x, self.m2_y
        return out

    def covariance(self) -> torch.Tensor:
        """(a, b) population covariance."""
        self._check()
        return self.comoment / self.n

    def corr(self) -> torch.Tensor:
        """(a, b) Pearson correlation, float64, in [-1, 1]; 0 (never NaN) for a
        row or column whose variable is constant (dead)."""
        self._check()
        alive_x = ~self.dead_x()
        alive_y = ~self.dead_y()
        sx = torch.where(alive_x, self.m2_x, torch.ones_like(self.m2_x)).sqrt()
        sy = torch.where(alive_y, self.m2_y, torch.ones_like(self.m2_y)).sqrt()
        out = self.comoment / sx[:, None] / sy[None, :]
        out = out.clamp_(-1.0, 1.0)
        out[~alive_x] = 0.0
        out[:, ~alive_y] = 0.0
        return out


class CrossTiles:
    """The moments of a cross accumulator - or of its halves merged, and/or
    centred within groups - whose co-moment is produced a block of rows at a
    time (:meth:`tile`), so that analysing an (a, b) co-moment needs (rows, b)
    of temporaries, never a second (a, b) matrix.

    Every element is computed by the same operations whatever the block
    (elementwise merges; the between-group product is a row slice of the same
    product), so blocked and unblocked analyses agree to the bit.
    ``parts``: one accumulator, or the two halves (merged as in
    :meth:`StreamingCorrelation.merged`); ``groups_x`` / ``groups_y``: group
    sums of the same tokens for moments within groups (as in
    :meth:`StreamingCorrelation.within_groups`)."""

    def __init__(self, parts, groups_x: GroupSums | None = None, groups_y: GroupSums | None = None):
        parts = [p for p in parts if p.comoment is not None]
        if not parts:
            raise ValueError("CrossTiles: no data")
        self.parts = parts
        first = parts[0]
        self.dtype = first.dtype
        self.compute_dtype = first.compute_dtype
        self.n = first.n
        self.mean_x, self.mean_y, self.m2_x, self.m2_y = first.mean_x, first.mean_y, first.m2_x, first.m2_y
        self.ref_m2_x, self.ref_m2_y = first.ref_m2_x, first.ref_m2_y
        self._merge = None
        if len(parts) == 2:
            other = parts[1]
            n, nb = self.n, other.n
            total = n + nb
            f = n * nb / total
            dx = other.mean_x - first.mean_x
            dy = other.mean_y - first.mean_y
            self._merge = (f, dx, dy)
            self.m2_x = first.m2_x + other.m2_x + dx * dx * f
            self.m2_y = first.m2_y + other.m2_y + dy * dy * f
            self.mean_x = first.mean_x + dx * (nb / total)
            self.mean_y = first.mean_y + dy * (nb / total)
            self.n = total
        self._between = None
        self._row_dev = None  # the between-group rows of the last row block asked for
        if groups_x is not None:
            gx, gy = groups_x, groups_y
            dev = first.comoment.device
            counts = gx.counts.to(dev)
            if abs(float(counts.sum()) - self.n) > 0.5 or abs(float(gy.counts.sum()) - self.n) > 0.5:
                raise ValueError(f"group sums cover {float(counts.sum()):.0f} tokens, the accumulator {self.n}")
            used = torch.nonzero(counts > 0).flatten()
            counts = counts[used]
            self.ref_m2_x, self.ref_m2_y = self.m2_x, self.m2_y
            self.m2_x = (self.m2_x - between_group_m2(gx, used, counts, self.mean_x, dev)).clamp(min=0)
            self.m2_y = (self.m2_y - between_group_m2(gy, used, counts, self.mean_y, dev)).clamp(min=0)
            # the group deviations are made per tile from the group sums (rows of x, columns of y)
            self._between = (gx, gy, used, counts, self.mean_x, self.mean_y)
        self.dead_x = _dead(self.m2_x, self.mean_x, self.n, self.ref_m2_x)
        self.dead_y = _dead(self.m2_y, self.mean_y, self.n, self.ref_m2_y)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.parts[0].comoment.shape)

    def tile(self, start: int, stop: int, cols: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows start..stop-1, columns ``cols`` (start, stop; default all) of the
        (merged, within-group) co-moment (a new tensor). Within groups, the
        between-group product is made for exactly these columns: the
        analysis always asks for the same column blocks (one layer of the
        other model), so its numbers do not depend on its row blocks."""
        rows = slice(start, stop)
        cs = slice(*(cols or (0, self.shape[1])))
        fresh = self._merge is not None  # out is a new tensor (else a view of the accumulator)
        if not fresh:
            out = self.parts[0].comoment[rows, cs]
        else:  # C0 + C1 + f dx dy^T, with two (rows, cols) temporaries: the same operations, in place
            f, dx, dy = self._merge
            out = torch.add(self.parts[0].comoment[rows, cs], self.parts[1].comoment[rows, cs])
            out.add_(torch.outer(dx[rows], dy[cs]).mul_(f))
        if self._between is not None:
            rows_factor, dy = self.between_factors(start, stop, (cs.start, cs.stop))
            between = (rows_factor @ dy).to(self.dtype)
            out = out.sub_(between) if fresh else out - between
        return out

    def between_factors(self, start: int, stop: int, cols: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Within groups, the two factors of the between-group part of the
        co-moment block (rows start..stop-1, columns ``cols``), in the compute
        dtype: (rows, G) = each group's deviation of x times its count, and
        (G, cols) = each group's deviation of y; :meth:`tile` subtracts their
        product. The row factor is kept for the next block of the same rows."""
        gx, gy, used, counts, mean_x, mean_y = self._between
        c = self.compute_dtype
        if self._row_dev is None or self._row_dev[0] != (start, stop):
            dx = group_deviations(gx, used, counts, mean_x, start, stop, counts.device)
            self._row_dev = ((start, stop), (dx * counts[:, None]).to(c).t())
        dy = group_deviations(gy, used, counts, mean_y, cols[0], cols[1], counts.device).to(c)
        return self._row_dev[1], dy

    @property
    def n_groups(self) -> int:
        """Groups with tokens (0: not within groups)."""
        return 0 if self._between is None else int(self._between[2].numel())

    def corr_tile(self, start: int, stop: int, comoment: torch.Tensor | None = None,
                  cols: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows start..stop-1 (columns ``cols``) of :meth:`StreamingCorrelation.corr` of these moments."""
        c = self.tile(start, stop, cols) if comoment is None else comoment
        cs = slice(*(cols or (0, self.shape[1])))
        return correlation_of(c, self.m2_x[start:stop], self.m2_y[cs], self.dead_x[start:stop], self.dead_y[cs])


_BUFFERS: dict = {}


def scratch_buffer(shape, dtype: torch.dtype, device, slot: str = "product") -> torch.Tensor:
    """A scratch tensor of ``shape`` (2-D) for one use at a time, one per
    ``slot``, dtype and device, grown to the largest shape asked for and reused
    batch after batch: a fresh temporary of a batch's size costs more in page
    faults than in arithmetic (glibc maps it anew each time). ``"product"``:
    the batch products of :class:`StreamingCorrelation`; ``"batch"``: a
    temporary of a batch's size, read before the next use of the slot (the
    float64 copy that :func:`float64_sum` and :class:`GroupSums` sum, the
    squares of a centred batch in :meth:`Centered.of`): one slot for all of
    them, so that they cost one batch of memory, not one each."""
    key = (slot, dtype, torch.device(device))
    n = int(shape[0]) * int(shape[1])
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < n:
        _BUFFERS.pop(key, None)
        buf = _BUFFERS[key] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n].view(int(shape[0]), int(shape[1]))


def transposed_product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x^T y into the reused ``"product"`` scratch buffer (:func:`scratch_buffer`):
    read or add it before the next product overwrites it."""
    return torch.mm(x.t(), y, out=scratch_buffer((x.shape[1], y.shape[1]), x.dtype, x.device))


def release_buffers() -> None:
    """Free the scratch tensors of :func:`scratch_buffer`."""
    _BUFFERS.clear()


def _dead(m2: torch.Tensor, mean: torch.Tensor, n: int, ref: torch.Tensor | None = None) -> torch.Tensor:
    dead = m2 <= n * (DEAD_RELATIVE * mean * mean + DEAD_ABSOLUTE)
    if ref is not None:
        dead |= m2 <= WITHIN_DEAD_RELATIVE * ref
    return dead


class StreamingCKA:
    """Linear CKA of two representations streamed together.

    ``update(x, y)`` with x (tokens, a), y (tokens, b); ``cka()`` -> float.
    Keeps the three co-moments C_xx (a, a), C_yy (b, b), C_xy (a, b). With
    ``n_groups`` (and ``update(x, y, groups)``), ``cka(within_groups=True)``
    is the CKA of the representations centred per group.
    """

    def __init__(self, *, dtype: torch.dtype = torch.float64, compute_dtype: torch.dtype | None = None,
                 n_groups: int | None = None):
        kw = dict(dtype=dtype, compute_dtype=compute_dtype, n_groups=n_groups)
        self.xx = StreamingCorrelation(**kw)
        self.yy = StreamingCorrelation(**kw)
        self.xy = StreamingCorrelation(dtype=dtype, compute_dtype=compute_dtype)

    def update(self, x, y, groups=None) -> "StreamingCKA":
        self.xx.update(x, groups=groups)
        self.yy.update(y, groups=groups)
        self.xy.update(x, y)
        return self

    def cka(self, within_groups: bool = False) -> float:
        self.xy._check()
        if not within_groups:
            return cka_from_comoments(self.xy.comoment, self.xx.comoment, self.yy.comoment)
        xy = self.xy.within_groups(self.xx.groups_x, self.yy.groups_x)
        return cka_from_comoments(xy.comoment, self.xx.within_groups().comoment, self.yy.within_groups().comoment)


def hsic_linear(comoment: torch.Tensor) -> float:
    """||Xc^T Yc||_F^2 from the co-moment Xc^T Yc (unnormalised HSIC)."""
    return float((comoment.double() ** 2).sum().item())


def cka_from_comoments(c_xy: torch.Tensor, c_xx: torch.Tensor, c_yy: torch.Tensor) -> float:
    """Linear CKA = ||C_xy||^2 / (||C_xx|| ||C_yy||) (Frobenius norms of the
    centred co-moments). 0 when either representation is constant."""
    hxy = hsic_linear(c_xy)
    hxx = hsic_linear(c_xx)
    hyy = hsic_linear(c_yy)
    denom = (hxx * hyy) ** 0.5
    if not denom > 0:
        return 0.0
    return float(min(max(hxy / denom, 0.0), 1.0))


def linear_cka(x, y) -> float:
    """Linear CKA of two dense representations x (tokens, a), y (tokens, b),
    computed directly (centre, then ||Xc^T Yc||^2 / (||Xc^T Xc|| ||Yc^T Yc||)).
    Float64. Equal to :class:`StreamingCKA` fed the same rows."""
    x = _as_tensor(x).double()
    y = _as_tensor(y).double()
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka expects (tokens, a) and (tokens, b), got {tuple(x.shape)}, {tuple(y.shape)}")
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    return cka_from_comoments(xc.t() @ yc, xc.t() @ xc, yc.t() @ yc)


def max_correlations(corr, return_indices: bool = False):
    """Both directions of "best partner" from an (a, b) correlation matrix.

    Returns (max over b for each of the a variables (a,), max over a for each
    of the b variables (b,)); with ``return_indices`` also the argmax of each
    (a,) and (b,). The maximum is signed (a strong anticorrelation is not a
    match), as in Gurnee et al. (2024).
    """
    c = _as_tensor(corr)
    if c.dim() != 2:
        raise ValueError(f"corr must be 2-D, got {tuple(c.shape)}")
    a, b = c.shape
    if a == 0 or b == 0:
        za = torch.zeros(a, dtype=c.dtype, device=c.device)
        zb = torch.zeros(b, dtype=c.dtype, device=c.device)
        ia = torch.zeros(a, dtype=torch.long, device=c.device)
        ib = torch.zeros(b, dtype=torch.long, device=c.device)
        return (za, zb, ia, ib) if return_indices else (za, zb)
    row = c.max(1)
    col = c.max(0)
    if return_indices:
        return row.values, col.values, row.indices, col.indices
    return row.values, col.values


@dataclass
class FeatureMatching:
    """A one-to-one matching between the features of two dictionaries."""

    a_index: np.ndarray  # (k,) feature of A
    b_index: np.ndarray  # (k,) its partner in B
    corr: np.ndarray  # (k,) their activation correlation

    def __len__(self) -> int:
        return len(self.a_index)

    def share_above(self, threshold: float) -> float:
        return float((self.corr > threshold).mean()) if len(self) else 0.0


def match_features(corr, alive_a=None, alive_b=None) -> FeatureMatching:
    """One-to-one matching maximising the summed correlation (Hungarian
    assignment, ``scipy.optimize.linear_sum_assignment`` on -corr), restricted
    to the alive rows / columns when masks are given. Returns the matched pairs
    sorted by A's index; min(alive a, alive b) pairs."""
    from scipy.optimize import linear_sum_assignment

    c = _as_tensor(corr).detach().double().cpu().numpy()
    a, b = c.shape
    rows = np.arange(a) if alive_a is None else np.nonzero(np.asarray(_np(alive_a), bool))[0]
    cols = np.arange(b) if alive_b is None else np.nonzero(np.asarray(_np(alive_b), bool))[0]
    if rows.size == 0 or cols.size == 0:
        empty = np.zeros(0, np.int64)
        return FeatureMatching(empty, empty.copy(), np.zeros(0))
    sub = c[np.ix_(rows, cols)]
    r, k = linear_sum_assignment(sub, maximize=True)
    order = np.argsort(rows[r])
    ai, bi = rows[r][order], cols[k][order]
    return FeatureMatching(ai.astype(np.int64), bi.astype(np.int64), c[ai, bi])


def random_orthogonal(d: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A (d, d) random orthogonal matrix, uniform (Haar) over O(d): the Q of a
    Gaussian matrix's QR decomposition with the signs of R's diagonal folded
    in (Mezzadri, 2007). Gurnee et al.'s code row-normalises a Gaussian matrix
    instead (their TODO: "consider making this actually orthogonal"); an exact
    rotation keeps the covariance spectrum of the activations it rotates."""
    g = torch.randn(d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(d, dtype=torch.float64))
    return q.to(dtype)


def rotated_variances(c_yy: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """(b,) m2 of the rotated units y' = R y: diag(R C_yy R^T)."""
    r = rotation.to(c_yy)
    return (r @ c_yy).mul_(r).sum(1)


def correlation_of(cross: torch.Tensor, m2_x: torch.Tensor, m2_y: torch.Tensor,
                   dead_x: torch.Tensor | None = None, dead_y: torch.Tensor | None = None) -> torch.Tensor:
    """(a, b) correlations from a cross co-moment and both sides' m2 (the same
    centring), clamped to [-1, 1]; 0 for rows without variance or ``dead_x``,
    and for columns without variance or ``dead_y``."""
    alive_y = m2_y > 1e-300
    sx = torch.where(m2_x > 0, m2_x, torch.ones_like(m2_x)).sqrt()
    sy = torch.where(alive_y, m2_y, torch.ones_like(m2_y)).sqrt()
    out = torch.div(cross, sx[:, None])  # one (a, b) temporary: the rest in place, the same operations
    out.div_(sy[None, :]).clamp_(-1.0, 1.0)
    out[:, ~alive_y] = 0.0
    if dead_y is not None:
        out[:, dead_y] = 0.0
    out[m2_x <= 0] = 0.0
    if dead_x is not None:
        out[dead_x] = 0.0
    return out


# ------------------------------------------------------------- debiased CKA


def _u_centre(gram: torch.Tensor) -> torch.Tensor:
    """U-centring of a Gram matrix (Szekely & Rizzo 2014): zero diagonal, row
    and column effects removed with the unbiased denominators."""
    n = gram.shape[0]
    g = gram.clone()
    g.fill_diagonal_(0.0)
    means = g.sum(0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    g = g - means[:, None] - means[None, :]
    g.fill_diagonal_(0.0)
    return g


def debiased_cka(x, y) -> float:
    """Debiased linear CKA of dense representations x (n, a), y (n, b), n >= 4:
    the unbiased HSIC estimator of Song et al. (2012) in place of the biased
    one, i.e. the inner product of U-centred Gram matrices (Kornblith et al.,
    2019, appendix; Murphy et al., 2024). Unlike linear CKA it is ~0 for
    independent representations whatever n / dimension. Computed from the
    (n, n) Gram matrices: for checking :func:`debiased_cka_from_sums`."""
    x = _as_tensor(x).double()
    y = _as_tensor(y).double()
    if x.shape[0] < 4 or x.shape[0] != y.shape[0]:
        raise ValueError("debiased_cka needs the same n >= 4 rows in x and y")
    kx, ky = _u_centre(x @ x.t()), _u_centre(y @ y.t())
    hxy, hxx, hyy = float((kx * ky).sum()), float((kx * kx).sum()), float((ky * ky).sum())
    denom = (hxx * hyy) ** 0.5
    return hxy / denom if denom > 0 else 0.0


def unbiased_hsic(n: float, xy_raw_sq: float, sum_ab: float, sx_sq: float, sy_sq: float, sum_a: float,
                  sum_b: float, sx_xy_sy: float, sa_y_sy: float, sb_x_sx: float) -> float:
    """Song et al.'s unbiased HSIC of linear kernels K = X X^T, L = Y Y^T from
    streamable sums (a_t = ||x_t||^2, b_t = ||y_t||^2, s_x = sum_t x_t):

    * tr(K~L~) = ||X^T Y||^2 - sum_t a_t b_t           (K~: K with a zero diagonal)
    * 1^T K~ 1 = ||s_x||^2 - sum_t a_t
    * 1^T K~ L~ 1 = s_x^T (X^T Y) s_y - s_y . sum_t a_t y_t - s_x . sum_t b_t x_t + sum_t a_t b_t

    HSIC_u = [tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3)).
    Arguments: n, ||X^T Y||_F^2, sum a b, ||s_x||^2, ||s_y||^2, sum a, sum b,
    s_x^T X^T Y s_y, s_y . sum a y, s_x . sum b x."""
    if n < 4:
        return 0.0
    trace = xy_raw_sq - sum_ab
    kk = sx_sq - sum_a
    ll = sy_sq - sum_b
    kl = sx_xy_sy - sa_y_sy - sb_x_sx + sum_ab
    return (trace + kk * ll / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (n * (n - 3))


# ------------------------------------------------------------------- SVCCA


def svcca(a, b, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al., 2017) of paired rows a (k, d_a), b (k, d_b): centre
    the columns, keep the top singular directions explaining ``keep`` of each
    one's variance, then the mean canonical correlation of the two reduced
    sets (singular values of Q_a^T Q_b, Q orthonormal bases). Lan et al. (2024)
    apply it to the decoder rows of matched SAE features. 0 for fewer than 2 rows."""
    x = np.asarray(_np(a), dtype=np.float64)
    y = np.asarray(_np(b), dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"svcca needs paired rows, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        return 0.0

    def basis(m):
        m = m - m.mean(0)
        u, s, _ = np.linalg.svd(m, full_matrices=False)
        energy = s * s
        total = energy.sum()
        if total <= 0:
            return u[:, :0]
        k = int(np.searchsorted(np.cumsum(energy) / total, keep - 1e-12) + 1)
        return u[:, :min(k, len(s))]

    qa, qb = basis(x), basis(y)
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return 0.0
    rho = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


# --------------------------------------------------------------- bootstrap


def block_weights(n_blocks: int, n_resamples: int, seed: int = 0, blocks=None) -> np.ndarray:
    """(n_resamples, n_blocks) bootstrap weights: each row the counts of a
    resample with replacement of the blocks (of quizzes) in ``blocks``
    (default all), as many as there are; the other blocks weigh 0."""
    rng = np.random.default_rng(seed)
    chosen = np.arange(n_blocks) if blocks is None else np.asarray(blocks, dtype=np.int64)
    w = np.zeros((n_resamples, n_blocks))
    if chosen.size == 0:
        return w
    draws = chosen[rng.integers(0, chosen.size, size=(n_resamples, chosen.size))]
    np.add.at(w, (np.arange(n_resamples)[:, None], draws), 1.0)
    return w


def percentile_interval(samples, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of bootstrap samples (NaN-free)."""
    v = np.asarray(samples, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def corr_from_sums(n, sx, sy, sxx, syy, sxy):
    """Pearson correlation from sums (numpy, broadcasting); 0 where a variance is 0."""
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        vx = sxx - sx * sx / n
        vy = syy - sy * sy / n
        ok = (vx > 1e-12 * np.maximum(sxx, 1e-300)) & (vy > 1e-12 * np.maximum(syy, 1e-300))
        r = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), 0.0)
    return np.clip(r, -1.0, 1.0)


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


__all__ = [
    "random_orthogonal", "rotated_variances", "correlation_of", "debiased_cka", "unbiased_hsic", "svcca",
    "block_weights", "percentile_interval", "corr_from_sums",
    "StreamingCorrelation", "CrossTiles", "StreamingCKA",
    "scratch_buffer", "transposed_product", "release_buffers", "float64_sum",
    "GroupSums", "Centered", "WITHIN_DEAD_RELATIVE", "linear_cka",
    "cka_from_comoments", "hsic_linear", "max_correlations", "match_features", "FeatureMatching", "DEAD_RELATIVE",
    "DEAD_ABSOLUTE",
]
