"""Linear probes of the world generator's hidden parameters in the residual stream.

Does a culture GPT's residual stream carry, say, the colour a replace_color
quiz paints (``replace_color.dst``)? :func:`run_probes` answers it the way a
reviewer asks:

* **data**: ``n`` quizzes of the task with their latent parameters
  (:func:`culture.world.generate_quizzes_with_params`), put in one structure
  with prompt noise as in evaluation, teacher-forced; the label of a quiz is
  its parameter's value (a class per distinct value: colours...);
* **features**: per hook (default the residual stream after every block,
  plus the embedding), the activation averaged over chosen positions of the
  quiz: the positions predicting the answer's *transform cells* (the cells
  the rule changes), the answer grid, or one grid by role (A, f_A, B, f_B);
* **probe**: multinomial logistic regression (our own few lines of torch,
  L-BFGS on standardised features with an L2 penalty -- scikit-learn is not
  a dependency), trained on one split, accuracy on the held-out split with a
  Wilson interval;
* **controls**: the same probe trained on *shuffled labels* (the control task
  of Hewitt & Liang 2019, "Designing and Interpreting Probes with Control
  Tasks": what the probe gets from capacity alone; *selectivity* = accuracy -
  control accuracy), the majority-class rate, and the same probe on a
  *randomly initialised model* of the same shape (what is decodable from the
  input through random features, i.e. without learning);
* **causal check** (optional): adding the probe's direction from the quiz's
  class to another class c, at the probed positions of one hook, should make
  the model paint c on the transform cells (meaningful when the parameter is
  the colour painted there, e.g. ``replace_color.dst``); reported as the
  share of quizzes whose transform cells mostly turn to c, against a random
  direction of the same norm.

Activations are read from :class:`culture.mygpt.MyGPT` with torch forward
hooks at the residual stream, named as TransformerLens names them
(``blocks.L.hook_resid_post``, position p reads quiz token p-1 and predicts
token p): MyGPT's attention (scaled_dot_product_attention) is about ten
times faster than TransformerLens's on CPU, and the tests check the two give
the same activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from culture.defaults import CANONICAL_STRUCTURE, PROMPT_NOISE
from culture.errors import CultureError
from culture.hooks import HookNameError, act_name, add_hook, parse_act_name
from culture.quiz import (
    BLOCK_LEN,
    MARKER_NAMES,
    N_BLOCKS,
    N_COLORS,
    add_prompt_noise,
    ar_mask,
    block_markers,
    parse_structure,
    reconfigure,
    transform_mask,
)

__all__ = [
    "ProbeError",
    "ProbeSet",
    "LinearProbe",
    "ProbeResults",
    "HOOK_FAMILIES",
    "parse_target",
    "resolve_hooks",
    "probe_set",
    "position_mask",
    "residual_activations",
    "fit_probe",
    "run_probes",
    "save_probe_png",
]

Progress = Callable[[str, int, int], None]

#: --hooks families: each names one residual-stream hook per block
HOOK_FAMILIES = ("resid_post", "resid_pre", "resid_mid")
#: --positions choices besides a grid role
POSITION_CHOICES = ("transform-cells", "answer")
MAX_CLASSES = 64


class ProbeError(CultureError, ValueError):
    """Bad probe arguments (target, hooks, positions, sizes)."""


# ------------------------------------------------------------------ arguments


def parse_target(target: str) -> tuple[str, str]:
    """``"TASK.PARAM"`` -> (task, parameter), checked against
    :data:`culture.world.PARAMETERS`."""
    from culture.world import PARAMETERS, TASKS

    task, dot, param = str(target).strip().partition(".")
    if not dot or not task or not param:
        raise ProbeError(f"--target must be TASK.PARAM (e.g. replace_color.dst), got {target!r}")
    if task not in TASKS:
        raise ProbeError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    if param not in PARAMETERS[task]:
        raise ProbeError(f"task {task} has no parameter {param!r} (its parameters: "
                         f"{', '.join(PARAMETERS[task])})")
    return task, param


def resolve_hooks(hooks: str | Sequence[str], n_layers: int) -> list[str]:
    """Hook names from ``hooks``: a family (:data:`HOOK_FAMILIES`; resid_post
    also gives the embedding, ``blocks.0.hook_resid_pre``) or explicit
    ``blocks.L.hook_resid_*`` names, checked against the model's depth."""
    items = [hooks] if isinstance(hooks, str) else list(hooks)
    out: list[str] = []
    for item in items:
        for h in str(item).replace(",", " ").split():
            if h in HOOK_FAMILIES:
                out += ([act_name("resid_pre", 0)] if h == "resid_post" else []) + [
                    act_name(h, layer) for layer in range(n_layers)]
                continue
            try:
                kind, layer = parse_act_name(h)
            except HookNameError:
                kind, layer = None, None
            if kind not in HOOK_FAMILIES or layer is None:
                raise ProbeError(f"unknown hook {h!r}: give {', '.join(HOOK_FAMILIES)} or names such as "
                                 f"{act_name('resid_post', 0)}")
            if layer >= n_layers:
                raise ProbeError(f"hook {h}: the model has {n_layers} blocks (0..{n_layers - 1})")
            out.append(h)
    if not out:
        raise ProbeError("no hook given")
    return list(dict.fromkeys(out))


def _hook_label(name: str) -> str:
    return "embed" if name == act_name("resid_pre", 0) else name


# ------------------------------------------------------------------ data


@dataclass
class ProbeSet:
    """Probe quizzes: ``sequences`` (n, 404) teacher-forced (noised quizzes
    with the clean answer), ``targets`` (clean), ``labels`` (n,) class index,
    ``classes`` the parameter value of each class."""

    task: str
    param: str
    sequences: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    classes: list
    structure: str
    noise: float
    seed: int

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def subset(self, index) -> "ProbeSet":
        i = torch.as_tensor(index, dtype=torch.long)
        return ProbeSet(self.task, self.param, self.sequences[i], self.targets[i], self.labels[i], self.classes,
                        self.structure, self.noise, self.seed)


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def probe_set(task: str, param: str, n: int, *, seed: int = 0, structure=CANONICAL_STRUCTURE, noise: float = PROMPT_NOISE) -> ProbeSet:
    """``n`` quizzes of ``task`` labelled by their parameter ``param``, in
    ``structure`` (1..4 or markers), prompt noise on its noised block."""
    from culture.world import generate_quizzes_with_params

    if n < 4:
        raise ProbeError(f"a probe needs at least 4 quizzes, got {n}")
    if not 0.0 <= float(noise) <= 1.0:
        raise ProbeError(f"prompt noise must be a probability in [0, 1], got {noise}")
    try:
        st = parse_structure(structure)
    except ValueError as exc:
        raise ProbeError(str(exc)) from None
    quizzes, _, params = generate_quizzes_with_params(int(n), tasks=[task], seed=int(seed))
    values = [_hashable(p[param]) for p in params]
    if not all(isinstance(v, int) for v in values):
        raise ProbeError(f"{task}.{param} is not one number per quiz (e.g. {values[0]!r}): a probe needs a "
                         "categorical target, such as a colour")
    classes = sorted(set(values))
    if len(classes) > MAX_CLASSES:
        raise ProbeError(f"{task}.{param} takes {len(classes)} distinct values on {n} quizzes: a probe needs a "
                         f"categorical target (at most {MAX_CLASSES} classes), such as a colour")
    index = {v: i for i, v in enumerate(classes)}
    labels = torch.tensor([index[v] for v in values])
    targets = reconfigure(quizzes.long(), st)
    g = torch.Generator().manual_seed(int(seed) + 1)
    noised = add_prompt_noise(targets, float(noise), generator=g)
    seq = torch.where(ar_mask(targets), targets, noised)
    return ProbeSet(task, param, seq, targets, labels, classes, st.name, float(noise), int(seed))


def position_mask(sequences: torch.Tensor, targets: torch.Tensor, positions: str) -> torch.Tensor:
    """(n, 404) bool: the positions whose activations a quiz's feature
    averages (position p predicts quiz token p): ``transform-cells`` (the
    answer's cells that differ from the paired clean grid), ``answer`` (the
    predicted grid's cells) or a grid by role (``A``, ``f_A``, ``B``,
    ``f_B``: the positions predicting its 100 cells)."""
    key = str(positions).strip()
    if key == "transform-cells":
        return transform_mask(sequences, paired=targets)
    if key == "answer":
        return ar_mask(sequences)
    aliases = {name: m for m, name in MARKER_NAMES.items()}
    aliases.update({"f(A)": aliases["f_A"], "f(B)": aliases["f_B"]})
    if key not in aliases:
        raise ProbeError(f"unknown positions {positions!r}: {', '.join(POSITION_CHOICES)} or a grid "
                         "(A, f_A, B, f_B)")
    n = sequences.shape[0]
    cells = torch.zeros(n, N_BLOCKS, BLOCK_LEN, dtype=torch.bool)
    cells[:, :, 1:] = (block_markers(sequences) == aliases[key]).unsqueeze(-1)
    return cells.reshape(n, -1)


# ------------------------------------------------------------------ activations


def residual_activations(model, sequences: torch.Tensor, mask: torch.Tensor, hooks: Sequence[str], *,
                         batch_size: int = 100, edit: Callable | None = None,
                         progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict, torch.Tensor]:
    """Run ``model`` (a MyGPT) teacher-forced over ``sequences`` and return
    ``(features, norms, logits_argmax)``: per hook, the activation averaged
    over each quiz's ``mask`` positions ((n, d), float64) and the mean norm of
    the activation at those positions (a float); the argmax token at every
    position ((n, 404)). ``edit(hook, rows, act) -> act`` may change an
    activation on the way (the causal check)."""
    feats: dict[str, list] = {h: [] for h in hooks}
    norm_sum = {h: 0.0 for h in hooks}
    count = max(int(mask.sum()), 1)
    argmax = []
    state: dict = {}

    def reader(h: str):
        def keep(act: torch.Tensor) -> torch.Tensor:
            rows, m = state["rows"], state["mask"]
            if edit is not None:
                act = edit(h, rows, act)
            w = m.unsqueeze(-1).to(act.dtype)
            feats[h].append(((act * w).sum(1) / w.sum(1).clamp_min(1)).double().cpu())
            norm_sum[h] += float((act.norm(dim=-1) * m).sum())
            return act
        return keep

    handles = [add_hook(model, h, reader(h)) for h in hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            done = 0
            dev = next(model.parameters()).device
            for x, m in zip(sequences.split(batch_size), mask.split(batch_size)):
                state["rows"], state["mask"] = torch.arange(done, done + x.shape[0]), m.to(dev)
                argmax.append(model(x.to(dev)).argmax(-1).cpu())
                done += x.shape[0]
                if progress is not None:
                    progress(done, sequences.shape[0])
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return ({h: torch.cat(v) for h, v in feats.items()}, {h: norm_sum[h] / count for h in hooks},
            torch.cat(argmax))


# ------------------------------------------------------------------ probe


@dataclass
class LinearProbe:
    """Multinomial logistic regression on standardised features:
    logits = ((x - mean) / std) @ weight.T + bias."""

    weight: torch.Tensor  # (classes, d)
    bias: torch.Tensor  # (classes,)
    mean: torch.Tensor  # (d,)
    std: torch.Tensor  # (d,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(-1)

    def direction(self, source: int, target: int) -> torch.Tensor:
        """(d,) in activation space: the direction raising class ``target``'s
        logit against ``source``'s fastest (the weight difference, un-standardised)."""
        return (self.weight[target] - self.weight[source]) / self.std


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3, max_iter: int = 100
              ) -> LinearProbe:
    """Fit a :class:`LinearProbe` by L-BFGS on the mean cross-entropy plus
    ``l2`` times the squared weights (our own few lines; float64)."""
    x = x.double()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-8) if x.shape[0] > 1 else torch.ones(x.shape[1], dtype=torch.float64)
    z = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach(), b.detach(), mean, std)


# ------------------------------------------------------------------ results


@dataclass
class ProbeResults:
    """``rows``: one per hook -- accuracy, control accuracy, selectivity,
    random-model accuracy (``{"value", "ci95", "k", "n"}`` shares); ``causal``:
    the causal check (or None); ``settings``: what was run."""

    target: str
    rows: list[dict]
    classes: list
    majority: dict
    settings: dict = field(default_factory=dict)
    causal: dict | None = None

    def to_dict(self) -> dict:
        return {"target": self.target, "classes": [list(c) if isinstance(c, tuple) else c for c in self.classes],
                "majority_class": self.majority, "rows": self.rows, "causal": self.causal,
                "settings": self.settings}


def _accuracy(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> dict:
    from culture.intervals import share

    return share(int((probe.predict(x) == y).sum()), int(y.numel()))


def _random_model_like(model, seed: int):
    """A randomly initialised MyGPT of ``model``'s shape (the reference
    initialisation, seeded; the global RNG is left as it was)."""
    from culture.mygpt import MyGPT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return MyGPT(model.config).to(next(model.parameters()).device)


def run_probes(
    model,
    target: str,
    *,
    hooks: str | Sequence[str] = "resid_post",
    positions: str = "transform-cells",
    n: int = 1000,
    seed: int = 0,
    test_fraction: float = 0.25,
    structure=CANONICAL_STRUCTURE,
    noise: float = PROMPT_NOISE,
    l2: float = 1e-3,
    random_baseline: bool = True,
    causal: bool = False,
    causal_hook: str | None = None,
    causal_scale: float = 1.0,
    batch_size: int = 100,
    split_draws: int = 0,
    progress: Progress | None = None,
) -> ProbeResults:
    """Linear probes of ``target`` (``"TASK.PARAM"``) at each hook of
    ``model`` (a :class:`culture.mygpt.MyGPT`); see the module docstring.

    ``test_fraction`` of the quizzes are held out; quizzes without any
    probed position (no transform cell) are left out. ``causal_hook``: the
    hook of the causal check (default: the hook whose probe is most
    accurate); ``causal_scale``: the norm of the added vector, in units of
    the mean activation norm at the probed positions. ``split_draws``: further
    train / test splits (and control-label shuffles), each probe refitted; every
    accuracy's interval is then widened by their spread (:func:`_widen`), and
    their accuracies are kept (``"splits"``, the reported split first).
    """
    task, param = parse_target(target)
    if not (isinstance(split_draws, int) and split_draws >= 0):
        raise ProbeError(f"split draws must be a non-negative integer, got {split_draws!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"the held-out fraction must be in (0, 1), got {test_fraction}")
    if batch_size < 1:
        raise ProbeError(f"batch size must be >= 1, got {batch_size}")
    hook_names = resolve_hooks(hooks, model.config.nb_blocks)
    if causal_hook is not None and causal_hook not in hook_names:
        raise ProbeError(f"--causal-hook {causal_hook} is not one of the probed hooks ({', '.join(hook_names)})")
    data = probe_set(task, param, n, seed=seed, structure=structure, noise=noise)
    mask = position_mask(data.sequences, data.targets, positions)
    keep = mask.any(1)
    data, mask = data.subset(keep.nonzero().flatten()), mask[keep]
    if len(data) < 4:
        raise ProbeError(f"only {len(data)} quizzes have positions {positions!r}")

    def tick(phase):
        return (lambda d, t: progress(phase, d, t)) if progress is not None else None

    feats, norms, _ = residual_activations(model, data.sequences, mask, hook_names, batch_size=batch_size,
                                           progress=tick("activations"))
    rand_feats = None
    if random_baseline:
        rand_feats, _, _ = residual_activations(_random_model_like(model, seed + 1), data.sequences, mask,
                                                hook_names, batch_size=batch_size, progress=tick("random model"))
    g = torch.Generator().manual_seed(int(seed) + 2)
    order = torch.randperm(len(data), generator=g)
    n_test = max(1, int(round(test_fraction * len(data))))
    test, train = order[:n_test], order[n_test:]
    y = data.labels
    shuffled = y[torch.randperm(len(y), generator=g)]  # the control task: labels shuffled over quizzes
    C = len(data.classes)
    from culture.intervals import share

    counts = torch.bincount(y[train], minlength=C)
    majority = share(int((y[test] == counts.argmax()).sum()), n_test)
    rows, probes = [], {}
    for i, h in enumerate(hook_names):
        x = feats[h]
        probe = fit_probe(x[train], y[train], C, l2=l2)
        probes[h] = probe
        control = fit_probe(x[train], shuffled[train], C, l2=l2)
        row = {"hook": h, "layer": _hook_label(h), "accuracy": _accuracy(probe, x[test], y[test]),
               "train_accuracy": _accuracy(probe, x[train], y[train]),
               "control_accuracy": _accuracy(control, x[test], shuffled[test]),
               "control_train_accuracy": _accuracy(control, x[train], shuffled[train])}
        row["selectivity"] = row["accuracy"]["value"] - row["control_accuracy"]["value"]
        if rand_feats is not None:
            rp = fit_probe(rand_feats[h][train], y[train], C, l2=l2)
            row["random_model_accuracy"] = _accuracy(rp, rand_feats[h][test], y[test])
        rows.append(row)
        if progress is not None:
            progress("probes", i + 1, len(hook_names))
    for d in range(1, split_draws + 1):
        _add_split(rows, feats, rand_feats, y, n_test, C, l2, torch.Generator().manual_seed(int(seed) + 2 + 1000 * d))
    if split_draws:
        for row in rows:
            for key in _ACCURACIES:
                if key in row:
                    _widen(row[key])
    settings = {
        "task": task, "parameter": param, "positions": positions, "hooks": hook_names,
        "quizzes": len(data), "train": int(train.numel()), "test": n_test, "classes": C,
        "structure": data.structure, "prompt_noise": data.noise, "seed": int(seed), "l2": l2,
        "left_out_without_positions": int((~keep).sum()),
        "probe": "multinomial logistic regression on standardised mean activations (L-BFGS, L2)",
        "control_task": "the same probe on labels shuffled over quizzes (Hewitt & Liang 2019)",
        "random_model": "the same probe on a randomly initialised model of the same shape" if random_baseline
        else None,
        "intervals": "95% Wilson over held-out quizzes" + (
            f", widened by the spread over {split_draws} further train / test splits and control-label shuffles"
            if split_draws else ""),
        "split_draws": int(split_draws),
    }
    res = ProbeResults(target=f"{task}.{param}", rows=rows, classes=data.classes, majority=majority,
                       settings=settings)
    if causal:
        hook = causal_hook or _most_selective(rows)
        res.causal = _causal_check(model, data.subset(test), mask[test], probes[hook], hook, norms[hook],
                                   causal_scale, batch_size, seed)
    return res


#: the accuracies of a row that carry an interval
_ACCURACIES = ("accuracy", "control_accuracy", "random_model_accuracy")


def _add_split(rows: list[dict], feats, rand_feats, y, n_test: int, n_classes: int, l2: float, g) -> None:
    """Refit every probe on another train / test split (and control-label
    shuffle) drawn from ``g``; append each held-out accuracy to its ``"splits"``."""
    order = torch.randperm(len(y), generator=g)
    test, train = order[:n_test], order[n_test:]
    shuffled = y[torch.randperm(len(y), generator=g)]
    for row in rows:
        x = feats[row["hook"]]
        fits = {"accuracy": (x, y), "control_accuracy": (x, shuffled)}
        if rand_feats is not None:
            fits["random_model_accuracy"] = (rand_feats[row["hook"]], y)
        for key, (xs, labels) in fits.items():
            probe = fit_probe(xs[train], labels[train], n_classes, l2=l2)
            acc = float((probe.predict(xs[test]) == labels[test]).float().mean())
            row[key].setdefault("splits", [row[key]["value"]]).append(acc)


def _widen(acc: dict) -> None:
    """Widen ``acc["ci95"]`` (Wilson, the reported split) by how far the other
    splits' accuracies lie below and above the reported one: it still holds the
    reported accuracy, and now the split's chance too."""
    lo, hi = acc["ci95"]
    diffs = [v - acc["value"] for v in acc.get("splits", [])]
    if diffs:
        acc["ci95"] = [max(0.0, lo + min(0.0, min(diffs))), min(1.0, hi + max(0.0, max(diffs)))]


def _most_selective(rows: list[dict]) -> str:
    """The hook whose probe beats the random model's most (else the most
    accurate); ties go to the deepest."""
    def gain(r):
        base = r.get("random_model_accuracy", {}).get("value") or 0.0
        return (r["accuracy"]["value"] - base, r["accuracy"]["value"])
    best = max(gain(r) for r in rows)
    return [r for r in rows if gain(r) == best][-1]["hook"]


def save_probe_png(results: ProbeResults, path):
    """Held-out accuracy per hook: the probe, the control task, the random
    model, with 95% intervals, and the majority-class rate; returns the Path."""
    from culture.figures import new_figure, save_png

    rows = results.rows
    xs = list(range(len(rows)))
    fig = new_figure(max(5.0, 0.9 * len(rows) + 2.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    series = [("probe (trained model)", "accuracy", "tab:blue"),
              ("control task (shuffled labels)", "control_accuracy", "tab:gray"),
              ("probe (random model)", "random_model_accuracy", "tab:orange")]
    for i, (label, key, colour) in enumerate(series):
        pts = [(x, r[key]) for x, r in zip(xs, rows) if r.get(key)]
        if not pts:
            continue
        v = [e["value"] for _, e in pts]
        lo = [e["value"] - e["ci95"][0] for _, e in pts]
        hi = [e["ci95"][1] - e["value"] for _, e in pts]
        ax.errorbar([x + 0.08 * (i - 1) for x, _ in pts], v, yerr=[lo, hi], label=label, color=colour,
                    marker="o", capsize=3, linewidth=1.2)
    ax.axhline(results.majority["value"], color="black", linestyle=":", linewidth=1, label="majority class")
    ax.set_xticks(xs)
    ax.set_xticklabels([r["layer"].replace(".hook_", "\n") for r in rows], fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{results.target} at {results.settings.get('positions')} (95% intervals)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


def _causal_check(model, data: ProbeSet, mask: torch.Tensor, probe: LinearProbe, hook: str, norm: float,
                  scale: float, batch_size: int, seed: int) -> dict:
    """Add ``scale * norm`` along the probe direction (class y -> class c, c
    drawn among the other colour classes) at the probed positions of
    ``hook``; count quizzes whose transform cells mostly become colour c;
    the same with a random direction of that norm."""
    from culture.intervals import share

    colours = [i for i, v in enumerate(data.classes) if isinstance(v, int) and 0 <= v < N_COLORS]
    if len(colours) < 2:
        raise ProbeError(f"the causal check needs a colour parameter (at least two colour classes); "
                         f"{data.task}.{data.param} has classes {data.classes[:8]}")
    g = torch.Generator().manual_seed(int(seed) + 3)
    y = data.labels
    pick = torch.randint(len(colours) - 1, (len(data),), generator=g)
    new = []
    for label, k in zip(y.tolist(), pick.tolist()):
        others = [c for c in colours if c != label]
        new.append(others[k % len(others)])
    new = torch.tensor(new)
    d = probe.weight.shape[1]
    probe_dirs = torch.stack([probe.direction(int(a), int(b)) for a, b in zip(y, new)])
    rand_dirs = torch.randn(len(data), d, generator=g, dtype=torch.float64)
    cells = transform_mask(data.sequences, paired=data.targets)
    painted = torch.tensor([data.classes[int(c)] for c in new])

    def run(directions: torch.Tensor, amount: float) -> torch.Tensor:
        shift = amount * directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)

        def edit(h, rows, act):
            m = mask[rows].unsqueeze(-1).to(act)
            return act + m * shift[rows].to(act).unsqueeze(1)

        _, _, argmax = residual_activations(model, data.sequences, mask, [hook], batch_size=batch_size, edit=edit)
        hit = (argmax == painted.unsqueeze(1)) & cells
        return hit.sum(1) * 2 > cells.sum(1)  # most transform cells painted c

    clean_hits = run(rand_dirs, 0.0)
    probe_hits, random_hits = run(probe_dirs, scale * norm), run(rand_dirs, scale * norm)
    n = len(data)
    return {
        "hook": hook, "layer": _hook_label(hook), "scale": scale, "added_norm": scale * norm,
        "changed_as_predicted": share(int(probe_hits.sum()), n),
        "random_direction": share(int(random_hits.sum()), n),
        "without_edit": share(int(clean_hits.sum()), n),
        "meaning": "share of held-out quizzes whose transform cells are mostly painted the target class c "
                   "(a colour other than the quiz's) after adding the probe direction y -> c at the probed "
                   "positions; random_direction: a random direction of the same norm; without_edit: none",
    }
