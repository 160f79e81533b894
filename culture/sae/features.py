"""What SAE features do: where they fire, how often per task, which colours
they push, and what happens when they are scaled or clamped.

:func:`feature_report` runs the test quizzes through the model (TransformerLens
form: position p reads quiz token p-1 -- BOS at p = 0 -- and predicts quiz
token p) and the SAE at its hook, in one pass keeping, for every feature, its
firing counts per task, its mean and maximum activation and its top quizzes
(the quiz's maximum over positions). Features are the ones asked for, or the
top N by mean activation (``rank_by``: ``mean`` | ``frequency`` | ``max``).
For each one:

* ``token_frequency`` / ``quiz_frequency`` per task: the fraction of positions
  (of quizzes) where it is > 0;
* ``logit_effect``: the direct effect of one unit of the feature on the
  logits of the 15 tokens, ``W_dec[f] @ M @ W_U`` with M the map from the hook
  into the residual stream (identity for resid / attn_out / mlp_out, W_out for
  ``mlp.hook_post``, W_O for ``attn.hook_z``; no final LayerNorm in these
  models, later layers ignored); ``promotes``: the (at most 3) colours with
  the largest positive effect, ``suppresses``: those with the most negative
  one -- a colour is never listed on the wrong side of zero;
* ``examples``: the quizzes where it fires most, with the position.

:func:`feature_examples_image` draws those quizzes (culture.render) with, on
each cell read at a position where the feature fires (at 5% of its maximum
or more), a dot sized by the activation, a thick box on the cell read at the maximum and a thin magenta box
on the cell predicted there.

:func:`steer_accuracy` re-scores the test set (greedy accuracy, loss on the
predicted cells; both also on the transform cells, with intervals and the
paired change against clean) with the SAE spliced in *with its error term* (so that with no
change the model is the clean model) and features scaled or clamped through a
hook on the SAE's ``hook_sae_acts_post``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from culture.ablation import ALL
from culture.evaluation import group_metrics, teacher_forced
from culture.evaluation import CELL_FAMILIES
from culture.quiz import BLOCK_LEN, COLOR_NAMES, GRID, MARKER_LABELS, MARKER_NAMES, N_COLORS
from culture.sae.common import SAEError, ensure_sae_model, hook_activations, output_directions
from culture.sae.evaluation import encode_decode

Progress = Callable[[str, int, int], None]

RANKINGS = ("mean", "frequency", "max")
#: display name of each of the 15 tokens
TOKEN_NAMES: tuple[str, ...] = tuple(COLOR_NAMES) + tuple(MARKER_NAMES[m] for m in sorted(MARKER_NAMES))

_HIGHLIGHT = (255, 0, 255)


# ------------------------------------------------------------------ steering


#: a cell read is marked where the feature is at this fraction of its maximum or more
MARK_FRACTION = 0.05


@dataclass(frozen=True)
class SteerSpec:
    """Scale feature ``feature`` by ``value`` (op "scale"; 0 = ablate it) or
    set it to ``value`` at every position (op "clamp")."""

    feature: int
    op: str
    value: float

    @property
    def text(self) -> str:
        return f"{self.feature}={'@' if self.op == 'clamp' else ''}{self.value:g}"

    def apply(self, acts: torch.Tensor) -> None:
        if self.op == "scale":
            acts[..., self.feature] *= self.value
        else:
            acts[..., self.feature] = self.value


_STEER_RE = re.compile(r"^\s*(\d+)\s*=\s*(@|clamp:|x|\*)?\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


def parse_steer(specs: Sequence[str] | str, d_sae: int | None = None) -> list[SteerSpec]:
    """``"FEATURE=SCALE"`` (multiply; ``x``/``*`` prefix allowed, 0 ablates) or
    ``"FEATURE=@VALUE"`` / ``"FEATURE=clamp:VALUE"`` (set at every position).
    Bad syntax or a feature out of range -> one-line SAEError."""
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for spec in specs:
        m = _STEER_RE.match(str(spec))
        if not m:
            raise SAEError(f"--steer: expected FEATURE=SCALE or FEATURE=@VALUE (e.g. 10024=0, 10024=2.5, "
                           f"10024=@4), got {spec!r}")
        feature, prefix, value = int(m.group(1)), m.group(2), float(m.group(3))
        if not math.isfinite(value):
            raise SAEError(f"--steer: value must be finite, got {spec!r}")
        if d_sae is not None and feature >= d_sae:
            raise SAEError(f"--steer: feature {feature} out of range (the SAE has {d_sae} features: 0..{d_sae - 1})")
        out.append(SteerSpec(feature, "clamp" if prefix in ("@", "clamp:") else "scale", value))
    return out


def steer_accuracy(hooked, sae, test_set, specs: Sequence[SteerSpec], *, batch_size: int = 16, device=None,
                   progress: Progress | None = None) -> dict:
    """Greedy accuracy and loss per task, clean vs steered (see the module
    docstring), and the number of quizzes whose greedy correctness changed."""
    from culture.evaluation import score_quizzes
    from culture.sae.loading import check_sae_for_model

    model = ensure_sae_model(hooked)
    model.eval()
    hook = check_sae_for_model(sae, model)
    for s in specs:
        if not 0 <= s.feature < sae.cfg.d_sae:
            raise SAEError(f"feature {s.feature} out of range (the SAE has {sae.cfg.d_sae} features)")
    dev = torch.device(device) if device is not None else torch.device(model.cfg.device)
    names = test_set.label_names

    def report(phase):
        return (lambda d, t: progress(phase, d, t)) if progress is not None else None

    clean_scores = score_quizzes(model, test_set, batch_size=batch_size, device=dev, progress=report("clean"))

    def steer(acts, hook):
        acts = acts.clone()
        for s in specs:
            s.apply(acts)
        return acts

    with model.saes(saes=[sae], use_error_term=True):
        with model.hooks(fwd_hooks=[(f"{hook}.hook_sae_acts_post", steer)]):
            steered_scores = score_quizzes(model, test_set, batch_size=batch_size, device=dev,
                                           progress=report("steered"))
    resamplers: dict = {}
    clean = group_metrics(clean_scores, test_set.labels, names, resamplers=resamplers)
    steered = group_metrics(steered_scores, test_set.labels, names, baseline=clean_scores, resamplers=resamplers)
    changed = clean_scores["greedy_correct"] != steered_scores["greedy_correct"]
    labels = list(test_set.labels)
    out = {}
    for g in [*names, ALL]:
        mask = torch.ones(len(labels), dtype=torch.bool) if g == ALL else torch.tensor([x == g for x in labels])
        out[g] = {
            "n": clean[g]["n"],
            "accuracy_clean": clean[g]["greedy_accuracy"],
            "accuracy_steered": steered[g]["greedy_accuracy"],
            "loss_clean": clean[g]["loss"],
            "loss_steered": steered[g]["loss"],
            "changed": int((changed & mask).sum()),
            **{family: {"clean": clean[g][family], "steered": steered[g][family]} for family in CELL_FAMILIES},
        }
    return {"specs": [s.text for s in specs], "by_group": out,
            "method": "SAE spliced in with its error term; features edited at hook_sae_acts_post",
            "intervals": "95%: Wilson for whole-grid accuracy, bootstrap over quizzes otherwise; 'change' in "
                         "steered: steered minus clean on the same quizzes, paired"}


# ------------------------------------------------------------------ positions


def describe_position(quiz: torch.Tensor, p: int) -> tuple[str, str]:
    """(what position p reads, what it predicts) in words, for hooked position p
    of ``quiz`` (404 tokens)."""

    def token(j: int) -> str:
        if j < 0:
            return "BOS"
        if j >= quiz.shape[0]:
            return "end"
        b, off = divmod(j, BLOCK_LEN)
        label = MARKER_LABELS.get(int(quiz[b * BLOCK_LEN]), "?")
        if off == 0:
            return f"marker {label}"
        r, c = divmod(off - 1, GRID)
        return f"{label} r{r} c{c}"

    return token(p - 1), token(p)


def _cell(j: int) -> tuple[int, int, int] | None:
    """(block, row, col) of quiz index j, None for BOS / a marker."""
    if j < 0:
        return None
    b, off = divmod(j, BLOCK_LEN)
    if off == 0:
        return None
    r, c = divmod(off - 1, GRID)
    return b, r, c


def feature_examples_image(quizzes: torch.Tensor, activations: torch.Tensor, titles: Sequence[str],
                           cell_px: int = 14):
    """A PIL image of ``quizzes`` (k, 404), one per row, marking where a feature
    fires: ``activations`` (k, 404) per hooked position (position p reads quiz
    token p-1). Returns (image, layout)."""
    from PIL import ImageDraw

    from culture.render import quizzes_image

    img, lay = quizzes_image(quizzes, labels=list(titles), cell_px=cell_px)
    draw = ImageDraw.Draw(img)
    for i in range(quizzes.shape[0]):
        acts = activations[i].float()
        top = float(acts.max()) if acts.numel() else 0.0
        if top <= 0:
            continue
        for p in torch.nonzero(acts >= MARK_FRACTION * top).flatten().tolist():
            cell = _cell(p - 1)
            if cell is None:
                continue
            cx, cy = lay.cell_center(i, *cell)
            rad = max(1.5, 0.3 * cell_px * math.sqrt(float(acts[p]) / top))
            draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=_HIGHLIGHT, outline=(0, 0, 0))
        p = int(acts.argmax())
        read, pred = _cell(p - 1), _cell(p)
        if pred is not None:
            x0, y0, x1, y1 = lay.cell_box(i, *pred)
            draw.rectangle((x0, y0, x1, y1), outline=_HIGHLIGHT, width=max(1, cell_px // 8))
        if read is not None:
            x0, y0, x1, y1 = lay.cell_box(i, *read)
            w = max(2, cell_px // 5)
            draw.rectangle((x0 - w + 1, y0 - w + 1, x1 + w - 1, y1 + w - 1), outline=(0, 0, 0), width=w)
    return img, lay


# ------------------------------------------------------------------ report


@dataclass
class FeatureReport:
    """The features studied (dicts, see the module docstring) plus, for the
    pictures, each feature's example quizzes and their activations."""

    hook_name: str
    d_sae: int
    groups: list[str]
    features: list[dict]
    examples: dict[int, tuple[torch.Tensor, torch.Tensor, list[str]]] = field(default_factory=dict)
    steering: dict | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"hook_name": self.hook_name, "d_sae": self.d_sae, "groups": self.groups, "settings": self.settings,
                "features": self.features, "steering": self.steering}

    def image(self, feature: int, cell_px: int = 14):
        """PIL image of the feature's top quizzes (None when it never fired)."""
        if feature not in self.examples:
            return None
        quizzes, acts, titles = self.examples[feature]
        if quizzes.shape[0] == 0:
            return None
        return feature_examples_image(quizzes, acts, titles, cell_px=cell_px)[0]


def _check_features(features: Sequence[int], d_sae: int) -> list[int]:
    out = []
    for f in features:
        try:
            k = int(f)
        except (TypeError, ValueError):
            raise SAEError(f"feature ids are integers, got {f!r}") from None
        if not 0 <= k < d_sae:
            raise SAEError(f"feature {k} out of range (the SAE has {d_sae} features: 0..{d_sae - 1})")
        out.append(k)
    if not out:
        raise SAEError("no feature given")
    return list(dict.fromkeys(out))


def logit_effects(model, sae, hook: str) -> torch.Tensor | None:
    """(d_sae, vocab) direct logit effect of one unit of each feature, or None
    when the hook does not write linearly into the residual stream."""
    M = output_directions(model, hook)
    if M is None or M.shape[0] != sae.cfg.d_in:
        return None
    W_dec = sae.W_dec.detach().to(M)
    return (W_dec @ M) @ model.W_U.detach().to(M)


def feature_report(
    hooked,
    sae,
    test_set,
    *,
    features: Sequence[int] | None = None,
    top: int = 10,
    rank_by: str = "mean",
    n_examples: int = 8,
    batch_size: int = 16,
    device=None,
    progress: Progress | None = None,
) -> FeatureReport:
    """Study ``features`` (ids) or the ``top`` features by ``rank_by`` over
    ``test_set``; see the module docstring."""
    from culture.hooked import to_hooked_tokens
    from culture.sae.loading import check_sae_for_model

    if rank_by not in RANKINGS:
        raise SAEError(f"rank_by must be one of {', '.join(RANKINGS)}, got {rank_by!r}")
    if batch_size < 1 or n_examples < 1:
        raise SAEError("batch size and number of examples must be >= 1")
    model = ensure_sae_model(hooked)
    model.eval()
    sae.eval()
    hook = check_sae_for_model(sae, model)
    d_sae = int(sae.cfg.d_sae)
    chosen = _check_features(features, d_sae) if features else None
    if chosen is None and top < 1:
        raise SAEError(f"--top must be >= 1, got {top}")
    dev = torch.device(device) if device is not None else torch.device(model.cfg.device)
    names = test_set.label_names
    index = {g: i for i, g in enumerate(names)}
    labels = torch.tensor([index[x] for x in test_set.labels])
    G = len(names)
    seq = teacher_forced(test_set)
    n = seq.shape[0]
    k = min(n_examples, n)

    tok_fires = torch.zeros(G, d_sae, dtype=torch.float64)
    quiz_fires = torch.zeros(G, d_sae, dtype=torch.float64)
    n_tok = torch.zeros(G, dtype=torch.float64)
    n_quiz = torch.zeros(G, dtype=torch.float64)
    act_sum = torch.zeros(d_sae, dtype=torch.float64)
    act_max = torch.zeros(d_sae)
    top_val = torch.full((0, d_sae), float("-inf"))
    top_quiz = torch.zeros((0, d_sae), dtype=torch.long)
    top_pos = torch.zeros((0, d_sae), dtype=torch.long)

    done = 0
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x_q = seq[start:start + batch_size]
            lab = labels[start:start + batch_size]
            act = hook_activations(model, to_hooked_tokens(x_q).to(dev), hook)
            _, f, _ = encode_decode(sae, act)
            f = f.float().cpu()  # (b, T, d_sae)
            active = f > 0
            for g in lab.unique().tolist():
                m = lab == g
                tok_fires[g] += active[m].sum((0, 1)).double()
                quiz_fires[g] += active[m].any(1).sum(0).double()
                n_tok[g] += m.sum() * f.shape[1]
                n_quiz[g] += m.sum()
            act_sum += f.sum((0, 1)).double()
            vals, pos = f.max(1)  # (b, d_sae)
            act_max = torch.maximum(act_max, vals.max(0).values)
            ids = torch.arange(start, start + x_q.shape[0]).unsqueeze(1).expand_as(vals)
            cat_v = torch.cat([top_val, vals])
            cat_q = torch.cat([top_quiz, ids])
            cat_p = torch.cat([top_pos, pos])
            kk = min(k, cat_v.shape[0])
            top_val, j = cat_v.topk(kk, dim=0)
            top_quiz, top_pos = cat_q.gather(0, j), cat_p.gather(0, j)
            done += x_q.shape[0]
            if progress is not None:
                progress("features", done, n)

    N = float(n_tok.sum())
    freq_all = tok_fires.sum(0) / max(N, 1.0)
    mean_all = act_sum / max(N, 1.0)
    if chosen is None:
        score = {"mean": mean_all, "frequency": freq_all, "max": act_max.double()}[rank_by]
        chosen = score.topk(min(top, d_sae)).indices.tolist()

    effects = logit_effects(model, sae, hook)
    out_features = []
    wanted_quizzes: dict[int, list[int]] = {}
    for fid in chosen:
        ex = [(int(top_quiz[r, fid]), int(top_pos[r, fid]), float(top_val[r, fid]))
              for r in range(top_val.shape[0]) if float(top_val[r, fid]) > 0]
        wanted_quizzes[fid] = [q for q, _, _ in ex]
        examples = []
        for q, p, v in ex:
            reads, predicts = describe_position(seq[q], p)
            examples.append({"quiz_index": q, "task": test_set.labels[q], "activation": v, "position": p,
                             "reads": reads, "predicts": predicts})
        by_task = {}
        for g in names:
            i = index[g]
            by_task[g] = {"token_frequency": float(tok_fires[i, fid] / n_tok[i]) if n_tok[i] else None,
                          "quiz_frequency": float(quiz_fires[i, fid] / n_quiz[i]) if n_quiz[i] else None}
        entry = {
            "id": fid,
            "token_frequency": float(freq_all[fid]),
            "quiz_frequency": float(quiz_fires[:, fid].sum() / max(float(n_quiz.sum()), 1.0)),
            "mean_activation": float(mean_all[fid]),
            "max_activation": float(act_max[fid]),
            "by_task": by_task,
            "logit_effect": None,
            "promotes": [],
            "suppresses": [],
            "examples": examples,
        }
        if effects is not None:
            e = effects[fid].float().cpu()
            entry["logit_effect"] = {TOKEN_NAMES[i]: float(e[i]) for i in range(e.shape[0])}
            colours = e[:N_COLORS]
            order = colours.argsort(descending=True).tolist()
            entry["promotes"] = [[COLOR_NAMES[i], float(colours[i])] for i in order if colours[i] > 0][:3]
            entry["suppresses"] = [[COLOR_NAMES[i], float(colours[i])] for i in order[::-1] if colours[i] < 0][:3]
        out_features.append(entry)

    # per-position activations of each feature on its example quizzes (one small pass)
    examples: dict[int, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}
    union = sorted({q for qs in wanted_quizzes.values() for q in qs})
    if union:
        where = {q: i for i, q in enumerate(union)}
        feats = torch.tensor(chosen)
        per_pos = []
        with torch.inference_mode():
            for start in range(0, len(union), batch_size):
                x_q = seq[union[start:start + batch_size]]
                act = hook_activations(model, to_hooked_tokens(x_q).to(dev), hook)
                _, f, _ = encode_decode(sae, act)
                per_pos.append(f[..., feats.to(f.device)].float().cpu())
        per_pos = torch.cat(per_pos)  # (u, T, len(chosen))
        for col, entry in enumerate(out_features):
            fid = entry["id"]
            rows = [where[q] for q in wanted_quizzes[fid]]
            titles = [f"#{e['quiz_index']} {e['task']}  feature {fid} max {e['activation']:.3g} "
                      f"reading {e['reads']} -> {e['predicts']}" for e in entry["examples"]]
            examples[fid] = (seq[wanted_quizzes[fid]], per_pos[rows, :, col], titles)
    settings = {"num_quizzes": n, "rank_by": rank_by, "top": top if features is None else None,
                "n_examples": n_examples,
                "positions": "hooked position p reads quiz token p-1 (BOS at p=0) and predicts quiz token p",
                "logit_effect": "W_dec[f] @ (hook -> residual map) @ W_U, per unit of activation, direct path only"
                                if effects is not None else "not available at this hook"}
    return FeatureReport(hook_name=hook, d_sae=d_sae, groups=[*names, ALL], features=out_features,
                         examples=examples, settings=settings)
