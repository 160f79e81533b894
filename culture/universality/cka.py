"""Residual-stream CKA between models, tested.

For every pair of models and every pair of residual-stream rows ("embed" =
``blocks.0.hook_resid_pre``, then ``blocks.L.hook_resid_post``), under every
control (the activations with their per-group means removed, means from the
first pass):

* **linear CKA** (Kornblith et al., 2019): ||Xc^T Yc||^2 / (||Xc^T Xc|| ||Yc^T Yc||);
* **debiased CKA**: the same ratio with Song et al.'s unbiased HSIC
  estimator (:func:`~culture.universality.stats.unbiased_hsic`), which does
  not drift up with the dimension / number of tokens (Murphy et al., 2024);
* a **permutation test** at matching depth (primary control, trained
  models): the tokens of one model shuffled within each batch of quizzes
  (uniform random elements of that group of permutations), CKA recomputed
  ``permutations`` times; p = (1 + #{null >= observed}) / (1 + permutations).

All from streamed sums (float64): raw cross products X^T Y, column sums,
and the per-token squared norms a_t = ||x_t||^2 (with sum a, a^T a, a^T Y),
which is all the unbiased estimator needs. Memory: (rows x d_model)^2 per
pair, never the tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from culture.universality.stats import transposed_product, unbiased_hsic

#: permutations computed together (memory: chunk x batch tokens x d_model, one residual row at a time)
_PERM_CHUNK = 25


class _Raw:
    """Raw sums of one model's stacked rows: n, s = sum x, x^T x, and of the
    per-row squared norms a: sum a, a^T a, a^T x."""

    def __init__(self):
        self.n = 0
        self.s = self.xx = self.sa = self.aa = self.ax = None

    def update(self, x: torch.Tensor, a: torch.Tensor, xl: torch.Tensor) -> None:
        if self.s is None:
            d, r = x.shape[1], a.shape[1]
            self.s = torch.zeros(d, dtype=torch.float64)
            self.xx = torch.zeros(d, d, dtype=torch.float64)
            self.sa = torch.zeros(r, dtype=torch.float64)
            self.aa = torch.zeros(r, r, dtype=torch.float64)
            self.ax = torch.zeros(r, d, dtype=torch.float64)
        self.n += x.shape[0]
        self.s += x.sum(0).cpu()
        self.xx.add_(transposed_product(xl, xl).cpu())
        self.sa += a.sum(0).cpu()
        self.aa += (a.t() @ a).cpu()
        self.ax += (a.t() @ x).cpu()


class CKAMoments:
    """Pass-2 sums for one group of models under one control."""

    def __init__(self, row_widths: list[list[int]], compute_dtype: torch.dtype, permutations: int = 0,
                 diagonal: dict | None = None, seed: int = 0):
        self.row_widths = row_widths  # per model: width of each row (d_model)
        self.offsets = [np.concatenate([[0], np.cumsum(w)]).astype(int) for w in row_widths]
        m = len(row_widths)
        self.m = m
        self.pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        self.compute_dtype = compute_dtype
        self.raw = [_Raw() for _ in range(m)]
        self.xy = {p: None for p in self.pairs}
        self.ay = {p: None for p in self.pairs}
        self.bx = {p: None for p in self.pairs}
        self.ab = {p: None for p in self.pairs}
        self.permutations = int(permutations)
        self.diagonal = diagonal or {}  # pair -> [(r, s)] rows tested
        self.perm = {}  # (pair, r, s) -> dict of (P, ...) tensors
        self.seed = int(seed)
        self.batches = 0

    def _norms(self, i: int, x: torch.Tensor) -> torch.Tensor:
        off = self.offsets[i]
        return torch.stack([(x[:, off[r]:off[r + 1]] ** 2).sum(1) for r in range(len(off) - 1)], 1)

    def update(self, xs: list[torch.Tensor]) -> None:
        """xs: per model the residualised stacked rows (T, sum of widths), float64."""
        c = self.compute_dtype
        low = [x.to(c) for x in xs]
        norms = [self._norms(i, x) for i, x in enumerate(xs)]
        for i in range(self.m):
            self.raw[i].update(xs[i], norms[i], low[i])
        for (i, j) in self.pairs:
            xy = transposed_product(low[i], low[j]).cpu()
            ay = (norms[i].t() @ xs[j]).cpu()
            bx = (norms[j].t() @ xs[i]).cpu()
            ab = (norms[i].t() @ norms[j]).cpu()
            if self.xy[(i, j)] is None:
                self.xy[(i, j)], self.ay[(i, j)], self.bx[(i, j)], self.ab[(i, j)] = (
                    xy.to(torch.float64, copy=True), ay, bx, ab)  # a copy: xy is the reused buffer
            else:
                self.xy[(i, j)].add_(xy)
                self.ay[(i, j)] += ay
                self.bx[(i, j)] += bx
                self.ab[(i, j)] += ab
        if self.permutations:
            self._update_permutations(xs, low, norms)
        self.batches += 1

    def _update_permutations(self, xs, low, norms) -> None:
        t = xs[0].shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches)
        perms = torch.stack([torch.randperm(t, generator=g) for _ in range(self.permutations)])
        for start in range(0, self.permutations, _PERM_CHUNK):
            pk = perms[start:start + _PERM_CHUNK].to(xs[0].device)
            stop = start + len(pk)
            shuffled = {}  # (model j, row s) -> the row's shuffled tokens (P, T, D_j), shared by j's pairs
            for (i, j), rows in self.diagonal.items():
                oi, oj = self.offsets[i], self.offsets[j]
                bp_all = norms[j][pk]  # (P, T, R_j)
                for (r, s) in rows:
                    if (j, s) not in shuffled:  # one row at a time: (P, T, D_j), not (P, T, all rows)
                        shuffled = {(j, s): low[j][:, oj[s]:oj[s + 1]][pk]}
                    xl = low[i][:, oi[r]:oi[r + 1]]
                    yp = shuffled[(j, s)]
                    a, bp = norms[i][:, r], bp_all[:, :, s]
                    key = ((i, j), r, s)
                    if key not in self.perm:
                        d1, d2 = xl.shape[1], yp.shape[2]
                        self.perm[key] = {"xy": torch.zeros(self.permutations, d1, d2, dtype=torch.float64),
                                          "ab": torch.zeros(self.permutations, dtype=torch.float64),
                                          "ay": torch.zeros(self.permutations, d2, dtype=torch.float64),
                                          "bx": torch.zeros(self.permutations, d1, dtype=torch.float64)}
                    acc = self.perm[key]  # float64 sums += the batch's products, added in place (no cast copy)
                    acc["xy"][start:stop].add_(torch.matmul(xl.t().unsqueeze(0), yp).cpu())
                    acc["ab"][start:stop].add_((bp * a).sum(1).cpu())
                    acc["ay"][start:stop].add_(torch.matmul(a.to(yp)[None, None, :], yp)[:, 0].cpu())
                    acc["bx"][start:stop].add_((bp.to(xl) @ xl).cpu())

    # ------------------------------------------------------------ results

    def _self_hsic(self, i: int, r: int, debiased: bool) -> float:
        raw = self.raw[i]
        off = self.offsets[i]
        sl = slice(off[r], off[r + 1])
        n = raw.n
        xx = raw.xx[sl, sl]
        s = raw.s[sl]
        if not debiased:
            c = xx - torch.outer(s, s) / n
            return float((c ** 2).sum())
        return unbiased_hsic(n, float((xx ** 2).sum()), float(raw.aa[r, r]), float(s @ s), float(s @ s),
                             float(raw.sa[r]), float(raw.sa[r]), float(s @ xx @ s), float(s @ raw.ax[r, sl]),
                             float(s @ raw.ax[r, sl]))

    def _cross_hsic(self, i, j, r, s_, debiased: bool, xy=None, ab=None, ay=None, bx=None) -> float:
        ri, rj = self.raw[i], self.raw[j]
        oi, oj = self.offsets[i], self.offsets[j]
        si, sj = slice(oi[r], oi[r + 1]), slice(oj[s_], oj[s_ + 1])
        n = ri.n
        xy = self.xy[(i, j)][si, sj] if xy is None else xy
        sx, sy = ri.s[si], rj.s[sj]
        if not debiased:
            c = xy - torch.outer(sx, sy) / n
            return float((c ** 2).sum())
        ab = float(self.ab[(i, j)][r, s_]) if ab is None else ab
        ay = self.ay[(i, j)][r, sj] if ay is None else ay
        bx = self.bx[(i, j)][s_, si] if bx is None else bx
        return unbiased_hsic(n, float((xy ** 2).sum()), ab, float(sx @ sx), float(sy @ sy), float(ri.sa[r]),
                             float(rj.sa[s_]), float(sx @ xy @ sy), float(sy @ ay), float(sx @ bx))

    @staticmethod
    def _ratio(h, hx, hy) -> float:
        d = (hx * hy) ** 0.5 if hx > 0 and hy > 0 else 0.0
        return float(h / d) if d > 0 else 0.0

    def matrices(self, debiased: bool) -> dict[tuple[int, int], np.ndarray]:
        """Per pair (i < j): (rows_i, rows_j) CKA."""
        out = {}
        selfs = [[self._self_hsic(i, r, debiased) for r in range(len(self.row_widths[i]))] for i in range(self.m)]
        for (i, j) in self.pairs:
            if self.xy[(i, j)] is None:
                continue
            mat = np.zeros((len(self.row_widths[i]), len(self.row_widths[j])))
            for r in range(mat.shape[0]):
                for s_ in range(mat.shape[1]):
                    v = self._ratio(self._cross_hsic(i, j, r, s_, debiased), selfs[i][r], selfs[j][s_])
                    mat[r, s_] = v if debiased else min(max(v, 0.0), 1.0)
            out[(i, j)] = mat
        return out

    def p_values(self) -> dict:
        """{(pair, r, s): {"linear": p, "debiased": p, "null_linear": (mean, max), ...}} of the permutation test."""
        out = {}
        for key, acc in self.perm.items():
            (i, j), r, s_ = key
            obs = {}
            null = {}
            for deb in (False, True):
                hx, hy = self._self_hsic(i, r, deb), self._self_hsic(j, s_, deb)
                obs[deb] = self._ratio(self._cross_hsic(i, j, r, s_, deb), hx, hy)
                vals = []
                for k in range(self.permutations):
                    h = self._cross_hsic(i, j, r, s_, deb, xy=acc["xy"][k], ab=float(acc["ab"][k]), ay=acc["ay"][k],
                                         bx=acc["bx"][k])
                    vals.append(self._ratio(h, hx, hy))
                null[deb] = np.array(vals)
            out[key] = {
                "permutations": self.permutations,
                "linear": float((1 + (null[False] >= obs[False]).sum()) / (1 + self.permutations)),
                "debiased": float((1 + (null[True] >= obs[True]).sum()) / (1 + self.permutations)),
                "null_linear_mean": float(null[False].mean()), "null_linear_max": float(null[False].max()),
                "null_debiased_mean": float(null[True].mean()), "null_debiased_max": float(null[True].max()),
            }
        return out


__all__ = ["CKAMoments"]
