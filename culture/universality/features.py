"""SAE features across models: matched one to one and many to one, between a
floor and a ceiling.

SAE features are not stable across SAE seeds on the *same* model (Paulo &
Belrose, 2025), so a cross-model match rate is read against

* a **ceiling**: two SAEs of the same model trained with different seeds -
  the best agreement SAEs reach at all;
* a **floor**: the *shuffled-quiz null* - each feature of the second SAE
  taken on another quiz at the same position (quizzes rolled by one within
  each batch), so positional regularities survive and quiz content does not.
  It needs no extra training. (The first quiz of the run is paired with the
  last of its batch, every later one with the quiz before it.)

Per pair of SAEs, on the same tokens, under the primary control (per-group
means removed, as for neurons):

* **one to one**: Hungarian assignment on the activation correlations
  (:func:`~culture.universality.stats.match_features`); share of matched
  pairs above the threshold, median / mean matched correlation;
* **many to one**: each feature's best correlation with any feature of the
  other SAE (several may pick the same partner);
* **decoder cosine** of matched pairs (meaningful for SAEs of the same model;
  across models the residual bases differ) and **SVCCA** of the matched
  decoder directions (rows scaled to unit norm; Lan et al., 2024), each
  against random pairings of the same rows (floor);
* **families**: features of the first model matched (one to one, above the
  threshold) in every other model; their firing rate per task, per block role
  (A, f(A), B, f(B)) and on transform / copied / prompt cells.

Intervals: bootstrap over blocks of quizzes, like the neurons (a second pass
for the correlations of the pairs near the threshold; firing counts per
block from the first pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from culture.universality.controls import CELL_CLASSES, ROLES, add_to_groups, n_groups
from culture.universality.stats import (
    Centered,
    FeatureMatching,
    GroupSums,
    StreamingCorrelation,
    block_weights,
    corr_from_sums,
    match_features,
    percentile_interval,
    svcca,
)

#: random pairings drawn for the decoder-cosine and SVCCA floors
FLOOR_DRAWS = 20
_CHUNK = 200


@dataclass
class SAEEntry:
    """One SAE of one model (``model`` indexes the compared models)."""

    model: int
    sae: object
    label: str
    hook: str

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def decoder(self) -> np.ndarray:
        return self.sae.W_dec.detach().double().cpu().numpy()


class FeatureMoments:
    """Pass 1: feature co-moments per SAE pair (and their shuffled-quiz null),
    group sums of the control, firing counts per block of quizzes."""

    def __init__(self, entries: list[SAEEntry], pairs: list[tuple[int, int]], control: str, n_positions: int,
                 n_tasks: int, n_blocks: int, compute_dtype: torch.dtype):
        self.entries = entries
        self.pairs = pairs
        self.control = control
        self.k = n_blocks
        self.n_tasks = n_tasks
        self.n_cat = n_tasks + len(ROLES) + len(CELL_CLASSES)
        self.compute_dtype = compute_dtype

        def acc():
            return StreamingCorrelation(compute_dtype=compute_dtype)

        self.cross = {p: acc() for p in pairs}
        self.null = {p: acc() for p in pairs}
        g = n_groups(control, n_positions)
        self.groups = None if control == "none" else [GroupSums(g) for _ in entries]
        # the null's own group sums (x and rolled y): it skips single-quiz batches
        self.null_groups = None if control == "none" else {p: (GroupSums(g), GroupSums(g)) for p in pairs}
        self.fire = [torch.zeros(n_blocks * self.n_cat, e.d_sae, dtype=torch.float64) for e in entries]
        self.tokens = torch.zeros(n_blocks * self.n_cat, dtype=torch.float64)

    def update(self, feats: list[torch.Tensor], nulls: list[torch.Tensor], labels, quiz_tasks: torch.Tensor,
               blocks: torch.Tensor) -> None:
        """feats: per entry (n, P, d) feature activations; nulls: the same
        entries' features on the shuffled quizzes (:class:`QuizRoller`)."""
        n, p = feats[0].shape[:2]
        flat = [f.reshape(n * p, -1) for f in feats]
        rolled = [r.reshape(n * p, -1) for r in nulls]
        prepared = [Centered.of(f, compute_dtype=self.compute_dtype) for f in flat]
        null_prepared = {}
        for (a, b) in self.pairs:
            if b not in null_prepared:
                null_prepared[b] = Centered.of(rolled[b], compute_dtype=self.compute_dtype)
            self.cross[(a, b)].update(prepared[a], prepared[b])
            self.null[(a, b)].update(prepared[a], null_prepared[b])
        if self.groups is not None:
            for e, f in enumerate(feats):
                add_to_groups(self.groups[e], f, labels, self.control)
            for (a, b) in self.pairs:
                add_to_groups(self.null_groups[(a, b)][0], feats[a], labels, self.control)
                add_to_groups(self.null_groups[(a, b)][1], nulls[b], labels, self.control)
        # firing counts per (block, category)
        blk = blocks.to(feats[0].device).repeat_interleave(p)
        cats = [quiz_tasks.to(blk.device).repeat_interleave(p),
                self.n_tasks + labels.role.reshape(-1),
                self.n_tasks + len(ROLES) + labels.cell_class.reshape(-1)]
        for cat in cats:
            idx = (blk * self.n_cat + cat).cpu()
            self.tokens.index_add_(0, idx, torch.ones(idx.shape[0], dtype=torch.float64))
            for e, f in enumerate(flat):
                self.fire[e].index_add_(0, idx, (f > 0).double().cpu())

    def _within(self, acc, ga, gb):
        if self.groups is None or acc.comoment is None:
            return acc
        return acc.within_groups(ga, gb)

    def analyse(self, threshold: float, seed: int = 0) -> dict[tuple[int, int], "SAEPair"]:
        out = {}
        rng = np.random.default_rng(seed)
        for (a, b) in self.pairs:
            ga = None if self.groups is None else self.groups[a]
            gb = None if self.groups is None else self.groups[b]
            acc = self._within(self.cross[(a, b)], ga, gb)
            corr = acc.corr()
            dead_a, dead_b = acc.dead_x(), acc.dead_y()
            matching = match_features(corr, ~dead_a, ~dead_b)
            max_a = torch.where(dead_a, 0.0, corr.max(1).values).cpu().numpy()
            max_b = torch.where(dead_b, 0.0, corr.max(0).values).cpu().numpy()
            arg_a, arg_b = corr.max(1).indices.cpu().numpy(), corr.max(0).indices.cpu().numpy()
            null = self.null[(a, b)]
            null_matching = None
            null_max_a = null_max_b = None
            if null.comoment is not None:
                ngx, ngy = (None, None) if self.null_groups is None else self.null_groups[(a, b)]
                nacc = self._within(null, ngx, ngy)
                nc = nacc.corr()
                nc[dead_a] = 0.0
                nc[:, dead_b] = 0.0
                null_matching = match_features(nc, ~dead_a, ~dead_b & ~nacc.dead_y())
                null_max_a = nc.max(1).values.cpu().numpy()[~dead_a.cpu().numpy()]
                null_max_b = nc.max(0).values.cpu().numpy()[~dead_b.cpu().numpy()]
            ea, eb = self.entries[a], self.entries[b]
            pair = SAEPair(a, b, ea.model == eb.model, matching, max_a, max_b, arg_a, arg_b,
                           dead_a.cpu().numpy(), dead_b.cpu().numpy(), null_matching, null_max_a, null_max_b)
            pair.decoder_stats(ea.decoder(), eb.decoder(), rng)
            out[(a, b)] = pair
        return out

    def fire_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per entry (K, C, d) firing counts and (K, C) token counts, C the categories."""
        counts = [f.reshape(self.k, self.n_cat, -1).numpy() for f in self.fire]
        return counts, self.tokens.reshape(self.k, self.n_cat).numpy()


@dataclass
class SAEPair:
    """Two SAEs compared: ``a``, ``b`` index the entries."""

    a: int
    b: int
    same_model: bool
    matching: FeatureMatching
    max_corr_a: np.ndarray  # (d_a,) best correlation among b's features (0 for dead)
    max_corr_b: np.ndarray
    arg_a: np.ndarray
    arg_b: np.ndarray
    dead_a: np.ndarray
    dead_b: np.ndarray
    null_matching: FeatureMatching | None = None
    null_max_a: np.ndarray | None = None  # alive features only
    null_max_b: np.ndarray | None = None
    decoder_cos: np.ndarray | None = None  # (k,) of matched pairs
    decoder_cos_floor: float | None = None
    svcca: float | None = None
    svcca_floor: tuple[float, float] | None = None  # (mean, 95th percentile) over random pairings
    intervals: dict = field(default_factory=dict)

    def decoder_stats(self, dec_a: np.ndarray, dec_b: np.ndarray, rng) -> None:
        mt = self.matching
        if len(mt) < 2:
            return
        # decoder directions (unit rows): a feature's scale is arbitrary (SAELens may or may not normalise it)
        ra, rb = dec_a[mt.a_index], dec_b[mt.b_index]
        na = ra / np.maximum(np.linalg.norm(ra, axis=1, keepdims=True), 1e-12)
        nb = rb / np.maximum(np.linalg.norm(rb, axis=1, keepdims=True), 1e-12)
        if ra.shape[1] == rb.shape[1]:
            self.decoder_cos = (na * nb).sum(1)
            floor = [float((na * nb[rng.permutation(len(nb))]).sum(1).mean()) for _ in range(FLOOR_DRAWS)]
            self.decoder_cos_floor = float(np.mean(floor))
        self.svcca = svcca(na, nb)
        draws = [svcca(na, nb[rng.permutation(len(nb))]) for _ in range(FLOOR_DRAWS)]
        self.svcca_floor = (float(np.mean(draws)), float(np.quantile(draws, 0.95)))

    def share_above(self, threshold: float) -> float:
        return self.matching.share_above(threshold)

    def null_share_above(self, threshold: float) -> float | None:
        return None if self.null_matching is None else self.null_matching.share_above(threshold)

    def mean_max(self) -> tuple[float, float]:
        """Mean many-to-one max-correlation of the alive features, a->b and b->a."""
        va, vb = self.max_corr_a[~self.dead_a], self.max_corr_b[~self.dead_b]
        return (float(va.mean()) if va.size else 0.0, float(vb.mean()) if vb.size else 0.0)


class FeatureBlockSums:
    """Pass 2: per block of quizzes, the sums giving the correlation of the
    matched pairs (one to one) and of the features with their many-to-one
    partner, on the residualised features - for those within ``margin`` of the
    threshold (the others keep their side of it in every resample, as for
    neurons)."""

    def __init__(self, moments: FeatureMoments, pairs: dict[tuple[int, int], SAEPair], threshold: float,
                 margin: float = 0.15):
        self.mom = moments
        self.pairs = pairs
        self.threshold = threshold
        self.margin = margin
        k = moments.k
        self.n = np.zeros(k)
        self.means = None if moments.groups is None else [g.means() for g in moments.groups]
        self.global_means = {}
        for (a, b), acc in moments.cross.items():
            self.global_means.setdefault(a, acc.mean_x)
            self.global_means.setdefault(b, acc.mean_y)
        # per pair and kind: (features of the first SAE, their partners in the second), near the threshold
        self.cols = {}
        for p, sp in pairs.items():
            mt = sp.matching
            near = np.abs(mt.corr - threshold) <= margin
            self.cols[(p, "one")] = (p[0], mt.a_index[near], p[1], mt.b_index[near])
            live = ~sp.dead_a & (np.abs(sp.max_corr_a - threshold) <= margin)
            self.cols[(p, "a")] = (p[0], np.nonzero(live)[0], p[1], sp.arg_a[live])
            live = ~sp.dead_b & (np.abs(sp.max_corr_b - threshold) <= margin)
            self.cols[(p, "b")] = (p[1], np.nonzero(live)[0], p[0], sp.arg_b[live])
        self.sums = {key: np.zeros((5, k, len(c[1]))) for key, c in self.cols.items()}

    def _residual(self, f, e, cols, groups):
        cols = torch.as_tensor(cols, dtype=torch.long, device=f.device)
        x = f.index_select(1, cols).double()
        if groups is None:
            return x - self.global_means[e].to(x)[cols]
        return x - self.means[e].to(x)[:, cols][groups]

    def update(self, feats: list[torch.Tensor], labels, blocks: torch.Tensor) -> None:
        n, p = feats[0].shape[:2]
        blk = blocks.to(feats[0].device).repeat_interleave(p)
        g = None if self.means is None else labels.groups(self.mom.control).reshape(-1)
        flat = [f.reshape(n * p, -1) for f in feats]

        def block_sum(v):
            out = torch.zeros(self.mom.k, v.shape[1], dtype=torch.float64, device=v.device)
            out.index_add_(0, blk, v)
            return out.cpu().numpy()

        self.n += np.bincount(blk.cpu().numpy(), minlength=self.mom.k)
        for key, (ex, cx, ey, cy) in self.cols.items():
            if not len(cx):
                continue
            x = self._residual(flat[ex], ex, cx, g)
            y = self._residual(flat[ey], ey, cy, g)
            for k, v in enumerate((x, y, x * x, y * y, x * y)):
                self.sums[key][k] += block_sum(v)

    def intervals(self, n_resamples: int, confidence: float, seed: int) -> None:
        """Bootstrap intervals of each pair's one-to-one share above the
        threshold and many-to-one share above it (each direction)."""
        w_all = block_weights(self.mom.k, n_resamples, seed, np.nonzero(self.n > 0)[0])
        thr = self.threshold
        self.samples = {}
        for p, sp in self.pairs.items():
            fixed = {"one": sp.matching.corr > thr, "a": ~sp.dead_a & (sp.max_corr_a > thr),
                     "b": ~sp.dead_b & (sp.max_corr_b > thr)}
            total = {"one": len(sp.matching), "a": int((~sp.dead_a).sum()), "b": int((~sp.dead_b).sum())}
            near = {"one": np.abs(sp.matching.corr - thr) <= self.margin,
                    "a": ~sp.dead_a & (np.abs(sp.max_corr_a - thr) <= self.margin),
                    "b": ~sp.dead_b & (np.abs(sp.max_corr_b - thr) <= self.margin)}
            out = {}
            for kind in ("one", "a", "b"):
                base = int((fixed[kind] & ~near[kind]).sum())
                vals = []
                for start in range(0, n_resamples, _CHUNK):
                    w = w_all[start:start + _CHUNK]
                    count = np.full(len(w), float(base))
                    if near[kind].any():
                        s = self.sums[(p, kind)]
                        n = (w @ self.n)[:, None]
                        c = corr_from_sums(n, w @ s[0], w @ s[1], w @ s[2], w @ s[3], w @ s[4])
                        count += (c > thr).sum(1)
                    vals.append(count / max(total[kind], 1))
                self.samples[(p, kind)] = np.concatenate(vals)  # re-centred by culture.universality.intervals
                out[kind] = percentile_interval(self.samples[(p, kind)], confidence)
            sp.intervals = {"share_above": out["one"], "share_max_above_a": out["a"], "share_max_above_b": out["b"],
                            "n_resamples": n_resamples, "confidence": confidence, "margin": self.margin}


# ------------------------------------------------------------------ families


@dataclass
class FeatureFamily:
    """A feature of the anchor SAE with a one-to-one partner above the
    threshold in the SAE of every other model."""

    members: dict[int, int]  # entry -> feature
    corr: dict[int, float]  # entry -> matched correlation with the anchor
    consistent: bool  # the members' own pairwise matchings agree
    rates: dict = field(default_factory=dict)  # category -> (mean over members, (low, high))
    member_rates: dict = field(default_factory=dict)  # entry -> {category: rate}

    @property
    def min_corr(self) -> float:
        return min(self.corr.values()) if self.corr else 0.0


def find_families(pairs: dict[tuple[int, int], SAEPair], anchor: int, members: list[int], threshold: float,
                  use_null: bool = False) -> list[FeatureFamily]:
    """Families of ``anchor``'s features across the SAEs ``members`` (one per
    other model): each member's one-to-one partner correlates above
    ``threshold`` with the anchor feature. ``use_null``: the same on the
    shuffled-quiz matchings (the floor: how many families chance makes)."""

    def matching(x, y):
        if (x, y) in pairs:
            sp = pairs[(x, y)]
            mt = sp.null_matching if use_null else sp.matching
            return None if mt is None else dict(zip(mt.a_index.tolist(), zip(mt.b_index.tolist(), mt.corr.tolist())))
        if (y, x) in pairs:
            sp = pairs[(y, x)]
            mt = sp.null_matching if use_null else sp.matching
            return None if mt is None else dict(zip(mt.b_index.tolist(), zip(mt.a_index.tolist(), mt.corr.tolist())))
        return None

    maps = {e: matching(anchor, e) for e in members}
    if any(v is None for v in maps.values()) or not members:
        return []
    out = []
    for f, (partner, c) in sorted(maps[members[0]].items()):
        fam = {anchor: f, members[0]: partner}
        corr = {members[0]: c}
        ok = c > threshold
        for e in members[1:]:
            if not ok:
                break
            hit = maps[e].get(f)
            if hit is None or hit[1] <= threshold:
                ok = False
                break
            fam[e], corr[e] = hit
        if not ok:
            continue
        consistent = True
        for x_i, x in enumerate(members):
            for y in members[x_i + 1:]:
                m = matching(x, y)
                if m is not None and m.get(fam[x], (None,))[0] != fam[y]:
                    consistent = False
        out.append(FeatureFamily(fam, corr, consistent))
    return out


def category_names(task_names: list[str]) -> list[str]:
    return [f"task:{t}" for t in task_names] + [f"role:{r}" for r in ROLES] + [f"cells:{c}" for c in CELL_CLASSES]


def family_rates(families: list[FeatureFamily], counts: list[np.ndarray], tokens: np.ndarray,
                 names: list[str], n_resamples: int, confidence: float, seed: int) -> None:
    """Fill each family's firing rate per category (mean over its members,
    bootstrap interval over blocks of quizzes) and per member."""
    if not families:
        return
    w = block_weights(tokens.shape[0], n_resamples, seed, np.nonzero(tokens.sum(1) > 0)[0])
    tok_w = w @ tokens  # (B, C)
    a = (1 - confidence) / 2
    for fam in families:
        fires = sum(counts[e][:, :, f] for e, f in fam.members.items()) / len(fam.members)  # (K, C)
        point = fires.sum(0) / np.maximum(tokens.sum(0), 1)
        lo, hi = np.quantile((w @ fires) / np.maximum(tok_w, 1), [a, 1 - a], axis=0)  # every category at once
        fam.rates = {name: (float(point[c]), (float(lo[c]), float(hi[c])))
                     for c, name in enumerate(names) if tokens[:, c].sum() > 0}
        fam.member_rates = {e: {name: float(counts[e][:, c, f].sum() / max(tokens[:, c].sum(), 1))
                                for c, name in enumerate(names) if tokens[:, c].sum() > 0}
                            for e, f in fam.members.items()}


__all__ = ["SAEEntry", "SAEPair", "FeatureMoments", "FeatureBlockSums", "FeatureFamily", "find_families",
           "family_rates", "category_names", "FLOOR_DRAWS"]
