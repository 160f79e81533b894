"""What each attention head does, as vectors that can be compared across
models (heads are unordered: head 3.3 of one model need not be head 3.3 of
another).

A head's *role* has three parts, each kept per sample so that the vectors can
be recomputed on resampled pairs and quizzes (:meth:`HeadRoleData.vectors`):

* ``profile`` -- its activation-patching recovery (denoising, the head's
  output ``hook_z`` over all positions; :func:`culture.circuits.activation.activation_patching`)
  on the counterfactual pairs of every condition (task, factor): one number
  per condition;
* ``attention`` -- its mean attention as a function of the offset ``query -
  key`` (0..403 positions), over the queries that predict an answer cell
  (the predicted block), averaged over quizzes;
* ``output`` -- its direct effect on the logits: the head's output at those
  queries read through the unembedding (``result @ W_U``, centred over the
  vocabulary), averaged per target colour (the cell the query predicts):
  11 colours x vocabulary. Vocabulary and positions are shared by every
  model, residual bases are not, so these parts compare across models.

Quizzes for ``attention`` and ``output`` are the clean quizzes of the
profile pairs.

    >>> data = head_role_data(hooked, pair_sets)       # pair_sets: {"replace_color/dst": QuizPairs, ...}
    >>> v = data.vectors()                            # {"profile": (L*H, C), "attention": ..., "output": ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from culture.circuits.metric import Baseline, CircuitError, QuizPairs
from culture.circuits.runs import DEFAULT_BATCH_SIZE, Progress
from culture.hooks import act_name

__all__ = ["ROLE_PARTS", "N_COLOURS", "HeadRoleData", "head_role_data", "role_conditions", "head_labels"]

ROLE_PARTS = ("profile", "attention", "output")
#: cell colours 0..10 (the targets the output part is grouped by)
N_COLOURS = 11


def head_labels(n_layers: int, n_heads: int) -> list[str]:
    return [f"{layer}.{h}" for layer in range(n_layers) for h in range(n_heads)]


def role_conditions(tasks) -> list[tuple[str, str]]:
    """(task, factor) for every factor of ``tasks`` that changes f(B) (all but the control factor)."""
    from culture.circuits.pairs import CONTROL_FACTOR, pair_factors

    return [(t, f) for t in tasks for f in pair_factors(t) if f != CONTROL_FACTOR]


def _ratio_of_means(ld: np.ndarray, base: Baseline, w: np.ndarray | None) -> np.ndarray:
    """Recovery (heads,) with pair weights ``w`` (None: equal); 0 when the weighted gap is not positive."""
    w = np.full(ld.shape[1], 1.0 / ld.shape[1]) if w is None else w
    gap = float(base.gap @ w)
    if gap <= 0:
        return np.zeros(ld.shape[0])
    return ((ld - base.corrupted_ld) @ w) / gap


@dataclass
class HeadRoleData:
    """Per-sample pieces of every head's role (heads in ``L.H`` order)."""

    n_layers: int
    n_heads: int
    conditions: list[str]
    profile_ld: list[np.ndarray]  # per condition: (L*H, n) patched logit difference per pair
    profile_base: list[Baseline]
    attention: np.ndarray  # (quizzes, L*H, offsets) mean attention by offset, per quiz
    output_sum: np.ndarray  # (quizzes, L*H, N_COLOURS, vocab) centred direct logits summed per target colour
    output_count: np.ndarray  # (quizzes, N_COLOURS) queries per target colour

    @property
    def n_quizzes(self) -> int:
        return self.attention.shape[0]

    @property
    def n_pairs(self) -> list[int]:
        return [ld.shape[1] for ld in self.profile_ld]

    def labels(self) -> list[str]:
        return head_labels(self.n_layers, self.n_heads)

    def recovery(self, condition: int | str = 0) -> np.ndarray:
        """Head recovery (L*H,) on one condition (index or name)."""
        c = self.conditions.index(condition) if isinstance(condition, str) else condition
        return _ratio_of_means(self.profile_ld[c], self.profile_base[c], None)

    def vectors(self, weights: dict | None = None) -> dict[str, np.ndarray]:
        """{part: (L*H, dim)} role vectors; ``weights``: resampling weights
        {"pairs": [per condition (n,)], "quizzes": (q,)} summing to 1 each
        (see :func:`resample_weights`), None: the data as they are."""
        pw = None if weights is None else weights["pairs"]
        qw = np.full(self.n_quizzes, 1.0 / self.n_quizzes) if weights is None else weights["quizzes"]
        profile = np.stack([_ratio_of_means(ld, b, None if pw is None else pw[c])
                            for c, (ld, b) in enumerate(zip(self.profile_ld, self.profile_base))], 1)
        attention = np.einsum("q,qhk->hk", qw, self.attention)
        sums = np.einsum("q,qhcv->hcv", qw, self.output_sum)
        counts = qw @ self.output_count
        output = np.where(counts[None, :, None] > 0, sums / np.maximum(counts, 1e-300)[None, :, None], 0.0)
        return {"profile": profile, "attention": attention, "output": output.reshape(len(output), -1)}

    def resample_weights(self, rng: np.random.Generator) -> dict:
        """One bootstrap draw: multinomial weights over each condition's pairs and over the quizzes."""
        def draw(n):
            return rng.multinomial(n, np.full(n, 1.0 / n)) / n

        return {"pairs": [draw(n) for n in self.n_pairs], "quizzes": draw(self.n_quizzes)}


def _attention_and_output(hooked, quizzes: torch.Tensor, batch_size: int):
    """Per quiz: (L*H, 404) mean attention by offset over the predicted
    queries, (L*H, colours, vocab) centred direct logits summed per target
    colour, (colours,) counts."""
    from culture.hooked import to_hooked_tokens
    from culture.quiz import QUIZ_LEN, ar_mask

    cfg = hooked.cfg
    L, H = cfg.n_layers, cfg.n_heads
    names = [act_name(k, layer) for layer in range(L) for k in ("pattern", "z")]
    w_ou = torch.einsum("lhdm,mv->lhdv", hooked.W_O.detach(), hooked.W_U.detach())  # (L, H, d_head, vocab)
    att, out, cnt = [], [], []
    pos = torch.arange(QUIZ_LEN)
    offsets = (pos[:, None] - pos[None, :]).clamp(min=0)  # (q, k); k > q has zero attention
    for lo in range(0, len(quizzes), batch_size):
        q = quizzes[lo:lo + batch_size]
        tokens = to_hooked_tokens(q).to(cfg.device)
        pred = ar_mask(q)  # (b, 404): hooked position t predicts quiz token t
        with torch.inference_mode():
            _, cache = hooked.run_with_cache(tokens, names_filter=lambda n: n in names)
        b = len(q)
        a = torch.zeros(b, L, H, QUIZ_LEN, dtype=torch.float64)
        o = torch.zeros(b, L, H, N_COLOURS, cfg.d_vocab, dtype=torch.float64)
        target = q.clamp(max=N_COLOURS - 1)
        onehot = torch.nn.functional.one_hot(target, N_COLOURS).double() * pred[..., None].double()  # (b, 404, c)
        nq = pred.sum(1).clamp(min=1).double()
        for layer in range(L):
            pat = cache[act_name("pattern", layer)].double().cpu()[..., :QUIZ_LEN, :QUIZ_LEN]  # (b, H, q, k)
            pat = pat * pred[:, None, :, None]
            by_off = torch.zeros(b, H, QUIZ_LEN, dtype=torch.float64)
            by_off.scatter_add_(2, offsets.expand(b, H, -1, -1).reshape(b, H, -1), pat.reshape(b, H, -1))
            a[:, layer] = by_off / nq[:, None, None]
            z = cache[act_name("z", layer)].double().cpu()  # (b, 404, H, d_head)
            dl = torch.einsum("bphd,hdv->bphv", z, w_ou[layer].double().cpu())
            dl = dl - dl.mean(-1, keepdim=True)
            o[:, layer] = torch.einsum("bphv,bpc->bhcv", dl, onehot)
        att.append(a.reshape(b, L * H, QUIZ_LEN).numpy())
        out.append(o.reshape(b, L * H, N_COLOURS, cfg.d_vocab).numpy())
        cnt.append(onehot.sum(1).numpy())
    return np.concatenate(att), np.concatenate(out), np.concatenate(cnt)


def head_role_data(hooked, pair_sets: dict[str, QuizPairs], *, batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: Progress | None = None) -> HeadRoleData:
    """Role pieces of every head of ``hooked`` on ``pair_sets`` (condition
    name -> pairs; the same pairs should serve every compared model)."""
    from culture.circuits.activation import activation_patching
    from culture.circuits.sites import site_table

    if not pair_sets:
        raise CircuitError("no conditions to profile the heads on")
    cfg = hooked.cfg
    hooked.eval()
    sites = site_table("heads", cfg.n_layers, cfg.n_heads).sites
    lds, bases = [], []
    for k, (name, pairs) in enumerate(pair_sets.items()):
        out, base = activation_patching(hooked, pairs, sites, "denoise", batch_size=batch_size)
        lds.append(out["ld"])
        bases.append(base)
        if progress is not None:
            progress("head profiles", k + 1, len(pair_sets))
    quizzes = torch.cat([p.clean for p in pair_sets.values()])
    att, out_sum, out_cnt = _attention_and_output(hooked, quizzes, batch_size)
    return HeadRoleData(cfg.n_layers, cfg.n_heads, list(pair_sets), lds, bases, att, out_sum, out_cnt)
