"""Heads matched across models by their roles (:mod:`culture.circuits.head_roles`).

**Similarity** of a head of model a and a head of model b: the mean over
the role parts (profile, attention, output) of the cosine of the two heads'
part vectors, each centred on its own model's mean over heads (what sets a
head apart from the other heads of its model). Centring on the model's own
mean keeps the similarity invariant under a permutation of the heads.

**Matching**: within each layer, one to one, maximising the summed
similarity (Hungarian assignment, ``scipy.optimize.linear_sum_assignment``;
layers are ordered, heads within a layer are not). Beside it, each head's
best match anywhere (any layer).

**Null** (shuffled role vectors): every head's part vectors of model b have
their coordinates permuted at random (independently per head and part), and
the matching is done again; the mean matched similarity of the real
matching is read against the distribution of these draws (``p`` = share of
draws at least as high, with the +1 correction).

    >>> m = match_heads(roles_a.vectors(), roles_b.vectors(), n_layers, n_heads, null_draws=200)
    >>> m.perm[3, 3]          # the head of layer 3 of model b that plays head 3.3's role
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from culture.circuits.head_roles import ROLE_PARTS, head_labels
from culture.circuits.metric import CircuitError

__all__ = ["HeadMatching", "role_similarity", "match_heads", "permute_heads", "parse_head"]


def parse_head(text: str, n_layers: int, n_heads: int) -> tuple[int, int]:
    """``"3.3"`` -> (3, 3), checked against the model's shape (CircuitError otherwise)."""
    try:
        layer, head = (int(x) for x in str(text).split("."))
    except ValueError:
        raise CircuitError(f"a head is LAYER.HEAD (e.g. 3.3), got {text!r}") from None
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise CircuitError(f"head {text} is outside the model ({n_layers} layers x {n_heads} heads)")
    return layer, head


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 1e-12, x / np.maximum(norm, 1e-300), 0.0)


def role_similarity(va: dict, vb: dict, parts=ROLE_PARTS) -> np.ndarray:
    """(heads of a, heads of b): the mean over ``parts`` of the cosine of the
    heads' part vectors (each centred on its model's mean over heads)."""
    return np.mean([_unit_rows(va[p]) @ _unit_rows(vb[p]).T for p in parts], 0)


def _assign(sim: np.ndarray, n_layers: int, n_heads: int) -> np.ndarray:
    """(L, H) permutation: head h of layer l of a <-> head perm[l, h] of layer l of b."""
    from scipy.optimize import linear_sum_assignment

    perm = np.zeros((n_layers, n_heads), dtype=np.int64)
    for layer in range(n_layers):
        s = slice(layer * n_heads, (layer + 1) * n_heads)
        rows, cols = linear_sum_assignment(sim[s, s], maximize=True)
        perm[layer, rows] = cols
    return perm


def _matched(sim: np.ndarray, perm: np.ndarray) -> np.ndarray:
    L, H = perm.shape
    return np.array([sim[layer * H + h, layer * H + perm[layer, h]] for layer in range(L) for h in range(H)])


def _shuffled(v: dict, rng: np.random.Generator) -> dict:
    return {p: rng.permuted(x, axis=1) for p, x in v.items()}


@dataclass
class HeadMatching:
    """Matching of model a's heads to model b's (see the module docstring)."""

    n_layers: int
    n_heads: int
    similarity: np.ndarray  # (L*H, L*H)
    perm: np.ndarray  # (L, H)
    null: np.ndarray = field(default_factory=lambda: np.zeros(0))  # mean matched similarity per null draw
    null_per_head: np.ndarray = field(default_factory=lambda: np.zeros(0))  # matched similarities of the draws

    @property
    def matched_similarity(self) -> np.ndarray:
        """(L*H,) similarity of each head of a with its match in b."""
        return _matched(self.similarity, self.perm)

    @property
    def mean_similarity(self) -> float:
        return float(self.matched_similarity.mean())

    def counterpart(self, layer: int, head: int) -> dict:
        """Model b's head matched to head ``layer.head`` of a (within its
        layer), its similarity, and b's most similar head anywhere."""
        i = layer * self.n_heads + head
        best = int(np.argmax(self.similarity[i]))
        out = {"matched": f"{layer}.{int(self.perm[layer, head])}",
               "similarity": float(self.similarity[i, layer * self.n_heads + self.perm[layer, head]]),
               "best_anywhere": head_labels(self.n_layers, self.n_heads)[best],
               "best_similarity": float(self.similarity[i, best])}
        if self.null_per_head.size:
            out["null_q95"] = float(np.quantile(self.null_per_head, 0.95))
        return out

    def null_summary(self) -> dict | None:
        if not self.null.size:
            return None
        obs = self.mean_similarity
        return {"observed": obs, "null_mean": float(self.null.mean()), "null_q95": float(np.quantile(self.null, 0.95)),
                "p_value": float((1 + np.sum(self.null >= obs)) / (1 + len(self.null))), "draws": int(len(self.null))}

    def to_dict(self) -> dict:
        labels = head_labels(self.n_layers, self.n_heads)
        sim = self.matched_similarity
        return {"pairs": [{"a": labels[i], "b": f"{i // self.n_heads}.{int(self.perm.flat[i])}",
                           "similarity": float(sim[i])} for i in range(len(labels))],
                "mean_similarity": self.mean_similarity, "null": self.null_summary()}


def match_heads(va: dict, vb: dict, n_layers: int, n_heads: int, *, null_draws: int = 0, seed: int = 0,
                parts=ROLE_PARTS) -> HeadMatching:
    """Match the heads of a (role vectors ``va``) to those of b within each
    layer; ``null_draws`` matchings of shuffled role vectors for the null."""
    n = n_layers * n_heads
    for v, side in ((va, "a"), (vb, "b")):
        missing = [p for p in parts if p not in v]
        if missing:
            raise CircuitError(f"role vectors of model {side} lack {', '.join(missing)}")
        if any(len(v[p]) != n for p in parts):
            raise CircuitError(f"role vectors of model {side} do not have {n} heads")
    sim = role_similarity(va, vb, parts)
    perm = _assign(sim, n_layers, n_heads)
    rng = np.random.default_rng(seed)
    null, per_head = [], []
    for _ in range(null_draws):
        s = role_similarity(va, _shuffled(vb, rng), parts)
        m = _matched(s, _assign(s, n_layers, n_heads))
        null.append(m.mean())
        per_head.append(m)
    return HeadMatching(n_layers, n_heads, sim, perm, np.array(null),
                        np.concatenate(per_head) if per_head else np.zeros(0))


def permute_heads(hooked, perm) -> object:
    """A copy of ``hooked`` whose heads are permuted within each layer: head
    h of layer l of the copy is head ``perm[l][h]`` of the original. The
    copy computes the same function (heads are unordered)."""
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    cfg = hooked.cfg
    if perm.shape != (cfg.n_layers, cfg.n_heads):
        raise CircuitError(f"perm must be (n_layers, n_heads) = ({cfg.n_layers}, {cfg.n_heads})")
    state = {k: v.detach().clone() for k, v in hooked.state_dict().items()}
    for layer in range(cfg.n_layers):
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            key = f"blocks.{layer}.attn.{name}"
            if key in state:
                state[key] = state[key][perm[layer]]
    from culture.hooked import _empty_hooked

    # a fresh shell: a deepcopy would keep forward methods bound to the original (fused attention)
    out = _empty_hooked(cfg, sae=hasattr(hooked, "add_sae"))
    out.load_state_dict(state, strict=False)
    out.eval()
    return out
