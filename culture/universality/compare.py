"""Compare models trained side by side: universal neurons, residual CKA, SAE features.

The question (Gurnee et al., 2024, "Universal Neurons in GPT2 Language
Models"): do models trained on the same data learn the same units? For every
pair of models and every chosen layer we stream the same quiz tokens through
both and accumulate, in one pass and in float64:

* **neurons** (``blocks.{L}.mlp.hook_post``): the Pearson correlation of every
  neuron of one model with every neuron of the other. A neuron's *max
  correlation* with a model is its best partner there; averaged over the other
  models it is the neuron's *mean max-correlation*; a neuron is **universal**
  when that mean exceeds the threshold (0.5 in Gurnee et al.).
* **representations**: linear CKA between the residual streams of two models,
  every layer of one against every layer of the other (``blocks.0.hook_resid_pre``
  as "embed", then ``blocks.{L}.hook_resid_post``).
* **SAE features** (given SAELens SAEs, one per model): feature-activation
  correlations, a one-to-one Hungarian matching, the decoder cosine of
  matched pairs.
* **tasks**: per neuron / feature, how often it fires and how strongly, by the
  task of the quiz each token comes from.

Every figure comes with a **baseline**: the same computation on randomly
initialised models of the same shapes (``MyGPT(cfg)``, seeded) over the same
tokens - the chance level to read each number against.

    >>> from culture.universality import compare_models
    >>> report = compare_models(load_culture([0, 1, 2, 3], "bundled"), n_tokens=50_000)
    >>> report.summary_rows()          # per layer: share universal vs baseline...
    >>> report.to_dict()               # every number, JSON-ready

Memory grows with (neurons per layer)^2 per model pair and layer, never with
the number of tokens; see :func:`estimate_memory`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from culture.errors import CultureError
from culture.universality.report import CKAResult, NeuronLayer, SAEComparison, SAEPair, UniversalityReport
from culture.universality.runner import (
    DEFAULT_NOISE,
    ModelRunner,
    UniversalityError,
    baseline_seed,
    load_sae,
    position_index,
    sae_hook_name,
    sae_input,
    world_quiz_stream,
)
from culture.universality.stats import Centered, GroupSums, StreamingCorrelation, cka_from_comoments, match_features

NEURON_HOOK = "blocks.{layer}.mlp.hook_post"
EMBED_HOOK = "blocks.0.hook_resid_pre"
RESID_HOOK = "blocks.{layer}.hook_resid_post"
DEFAULT_THRESHOLD = 0.5
#: label of every token when quizzes are given without task labels
NO_TASK = "all"
#: activations of one forward batch (all models of a group) are kept under this many floats
BATCH_FLOATS = 64 * 2**20

ProgressFn = Callable[[str, int, int], None]


# ----------------------------------------------------------------- streaming


class _Group:
    """Accumulators for one group of models (the trained ones, or the baseline)."""

    def __init__(self, runners: list[ModelRunner], layers, cka_hooks, saes, n_tasks, compute_dtype, with_tasks,
                 n_positions: int | None = None):
        self.runners = runners
        self.n_positions = n_positions  # not None: also keep per-position sums (within-position moments)
        self.layers = list(layers)
        self.cka_hooks = cka_hooks  # per model list of hook names, or None
        self.saes = saes  # per model SAE or None, or None
        self.n_tasks = n_tasks
        self.with_tasks = with_tasks
        m = len(runners)
        self.pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]

        def mk():
            return StreamingCorrelation(compute_dtype=compute_dtype)

        self.neuron = {layer: {p: mk() for p in self.pairs} for layer in self.layers}
        self.task_fire = [{layer: None for layer in self.layers} for _ in range(m)]
        self.task_sum = [{layer: None for layer in self.layers} for _ in range(m)]
        self.cka_self = [[mk() for _ in hooks] for hooks in cka_hooks] if cka_hooks else None
        self.cka_cross = {p: mk() for p in self.pairs} if cka_hooks else None
        self.sae_members: list[int] = []
        if saes is not None:
            self.sae_members = [i for i, s in enumerate(saes) if s is not None]
            self.sae_acc = {(i, j): mk() for i in self.sae_members for j in self.sae_members if i < j}
            self.sae_fire = {i: None for i in self.sae_members}
            self.sae_sum = {i: None for i in self.sae_members}
        self.hooks = []
        for i in range(m):
            names = [NEURON_HOOK.format(layer=layer) for layer in self.layers]
            if cka_hooks:
                names += cka_hooks[i]
            if saes is not None and saes[i] is not None:
                names.append(sae_hook_name(saes[i]))
            self.hooks.append(list(dict.fromkeys(names)))
        if n_positions:
            self.pos_sums = [{name: GroupSums(n_positions) for name in names} for names in self.hooks]
            self.sae_pos_sums = {i: GroupSums(n_positions) for i in self.sae_members}

    def width(self) -> int:
        """Floats per token of one batch's activations (to size the batches)."""
        total = 0
        for r, names in zip(self.runners, self.hooks):
            for name in names:
                w = r.hook_width(name)
                total += w if w is not None else r.d_model
        return total

    def _task_add(self, acc, per_quiz: torch.Tensor, quiz_labels: torch.Tensor):
        """Add per-quiz sums (n, H) into per-task sums (K, H)."""
        if acc is None:
            acc = torch.zeros(self.n_tasks, per_quiz.shape[1], dtype=torch.float64, device=per_quiz.device)
        acc.index_add_(0, quiz_labels, per_quiz.to(torch.float64))
        return acc

    def _task_stats(self, a: torch.Tensor, quiz_labels: torch.Tensor, fire, sums):
        """a (n, P, H): firing counts and activation sums by task."""
        fire = self._task_add(fire, (a > 0).sum(1, dtype=torch.float64), quiz_labels)
        sums = self._task_add(sums, a.sum(1, dtype=torch.float64), quiz_labels)
        return fire, sums

    def update(self, tokens: torch.Tensor, pos: torch.Tensor, quiz_labels: torch.Tensor) -> None:
        m = len(self.runners)
        acts = [r.run(tokens, names, pos) for r, names in zip(self.runners, self.hooks)]
        n = tokens.shape[0]

        def flat(a):
            return a.reshape(a.shape[0] * a.shape[1], -1)

        if self.n_positions:
            for i in range(m):
                for name, gs in self.pos_sums[i].items():
                    a = acts[i][name]
                    gs.add(a.reshape(a.shape[0], a.shape[1], -1).sum(0, dtype=torch.float64),
                           torch.full((a.shape[1],), float(n), dtype=torch.float64))
        for layer in self.layers:
            name = NEURON_HOOK.format(layer=layer)
            prepared = [Centered.of(flat(acts[i][name])) for i in range(m)]  # once per model, shared by its pairs
            for (i, j), acc in self.neuron[layer].items():
                acc.update(prepared[i], prepared[j])
            del prepared
            if self.with_tasks:
                for i in range(m):
                    self.task_fire[i][layer], self.task_sum[i][layer] = self._task_stats(
                        acts[i][name], quiz_labels, self.task_fire[i][layer], self.task_sum[i][layer])
        if self.cka_hooks:
            stacked = []
            for i in range(m):
                parts = [flat(acts[i][h]) for h in self.cka_hooks[i]]
                for acc, x in zip(self.cka_self[i], parts):
                    acc.update(x)
                stacked.append(Centered.of(torch.cat(parts, 1)))
            for (i, j), acc in self.cka_cross.items():
                acc.update(stacked[i], stacked[j])
            del stacked
        if self.sae_members:
            feats = {}
            for i in self.sae_members:
                sae = self.saes[i]
                a = acts[i][sae_hook_name(sae)]
                p = a.shape[1]
                x = sae_input(sae, a.reshape(n * p, *a.shape[2:]))
                with torch.no_grad():
                    f = sae.encode(x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))
                f = f.reshape(n * p, -1).to(device=quiz_labels.device, dtype=torch.float32)
                feats[i] = Centered.of(f)
                if self.n_positions:
                    self.sae_pos_sums[i].add(f.reshape(n, p, -1).sum(0, dtype=torch.float64),
                                             torch.full((p,), float(n), dtype=torch.float64))
                if self.with_tasks:
                    self.sae_fire[i], self.sae_sum[i] = self._task_stats(f.reshape(n, p, -1), quiz_labels,
                                                                         self.sae_fire[i], self.sae_sum[i])
            for (i, j), acc in self.sae_acc.items():
                acc.update(feats[i], feats[j])

    # ----------------------------------------------------------- results

    def neuron_results(self, threshold: float, task_counts: torch.Tensor | None) -> list[NeuronLayer]:
        out = []
        m = len(self.runners)
        for layer in self.layers:
            pair_max, pair_arg, dead = {}, {}, [None] * m
            name = NEURON_HOOK.format(layer=layer)
            for (i, j), acc in self.neuron[layer].items():
                if self.n_positions:
                    acc = acc.within_groups(self.pos_sums[i][name], self.pos_sums[j][name])
                corr = acc.corr()
                a_max, b_max = corr.max(1), corr.max(0)
                pair_max[(i, j)] = a_max.values.cpu().numpy()
                pair_arg[(i, j)] = a_max.indices.cpu().numpy()
                pair_max[(j, i)] = b_max.values.cpu().numpy()
                pair_arg[(j, i)] = b_max.indices.cpu().numpy()
                if dead[i] is None:
                    dead[i] = acc.dead_x().cpu().numpy()
                if dead[j] is None:
                    dead[j] = acc.dead_y().cpu().numpy()
                del corr
            n_neurons = [len(d) for d in dead]
            rate = mean = None
            if self.with_tasks and task_counts is not None:
                denom = task_counts.clamp(min=1).to(torch.float64)[:, None]
                rate = [(self.task_fire[i][layer].cpu() / denom).numpy() for i in range(m)]
                mean = [(self.task_sum[i][layer].cpu() / denom).numpy() for i in range(m)]
            out.append(NeuronLayer(layer, name, threshold, n_neurons, dead, pair_max, pair_arg, rate, mean))
        return out

    def cka_results(self) -> dict[tuple[int, int], np.ndarray]:
        out = {}
        selfs = self.cka_self
        if self.n_positions:
            selfs = [[acc.within_groups(self.pos_sums[i][h]) for acc, h in zip(self.cka_self[i], self.cka_hooks[i])]
                     for i in range(len(self.runners))]
        for (i, j), acc in self.cka_cross.items():
            if self.n_positions:
                acc = acc.within_groups(GroupSums.cat([self.pos_sums[i][h] for h in self.cka_hooks[i]]),
                                        GroupSums.cat([self.pos_sums[j][h] for h in self.cka_hooks[j]]))
            widths_i = [a.comoment.shape[0] for a in self.cka_self[i]]
            widths_j = [a.comoment.shape[0] for a in self.cka_self[j]]
            oi = np.concatenate([[0], np.cumsum(widths_i)])
            oj = np.concatenate([[0], np.cumsum(widths_j)])
            mat = np.zeros((len(widths_i), len(widths_j)))
            for a in range(len(widths_i)):
                for b in range(len(widths_j)):
                    block = acc.comoment[oi[a]:oi[a + 1], oj[b]:oj[b + 1]]
                    mat[a, b] = cka_from_comoments(block, selfs[i][a].comoment, selfs[j][b].comoment)
            out[(i, j)] = mat
        return out

    def sae_results(self, threshold: float, task_counts) -> SAEComparison:
        m = len(self.runners)
        hooks = [sae_hook_name(s) if s is not None else None for s in self.saes]
        d_sae = [int(s.cfg.d_sae) if s is not None else 0 for s in self.saes]
        dead: list = [None] * m
        pairs = {}
        for (i, j), acc in self.sae_acc.items():
            if self.n_positions:
                acc = acc.within_groups(self.sae_pos_sums[i], self.sae_pos_sums[j])
            corr = acc.corr()
            da, db = acc.dead_x(), acc.dead_y()
            if dead[i] is None:
                dead[i] = da.cpu().numpy()
            if dead[j] is None:
                dead[j] = db.cpu().numpy()
            matching = match_features(corr, ~da, ~db)
            a_max = corr.max(1).values.cpu().numpy()
            b_max = corr.max(0).values.cpu().numpy()
            wa, wb = self.saes[i].W_dec.detach(), self.saes[j].W_dec.detach()
            cos = None
            if wa.shape[1] == wb.shape[1]:
                ia = torch.as_tensor(matching.a_index, device=wa.device)
                ib = torch.as_tensor(matching.b_index, device=wb.device)
                va = torch.nn.functional.normalize(wa[ia].double(), dim=1)
                vb = torch.nn.functional.normalize(wb[ib].to(wa.device).double(), dim=1)
                cos = (va * vb).sum(1).cpu().numpy()
            pairs[(i, j)] = SAEPair(i, j, matching, a_max, b_max, cos)
            del corr
        rate: list = [None] * m
        mean: list = [None] * m
        if self.with_tasks and task_counts is not None:
            denom = task_counts.clamp(min=1).to(torch.float64)[:, None]
            for i in self.sae_members:
                rate[i] = (self.sae_fire[i].cpu() / denom).numpy()
                mean[i] = (self.sae_sum[i].cpu() / denom).numpy()
        return SAEComparison(threshold, hooks, d_sae, dead, pairs, rate, mean)


# ------------------------------------------------------------------ checks


def resolve_layers(n_layers: Sequence[int], layers=None) -> list[int]:
    """Neuron layers: all layers present in every model by default; given ones
    must exist in every model (UniversalityError otherwise)."""
    common = min(n_layers)
    if layers is None:
        return list(range(common))
    out = []
    for layer in layers:
        try:
            k = int(layer)
        except (TypeError, ValueError):
            raise UniversalityError(f"layer must be an integer, got {layer!r}") from None
        if not 0 <= k < common:
            detail = "every model has" if len(set(n_layers)) == 1 else "the smallest model has"
            raise UniversalityError(f"layer {k} out of range: {detail} {common} layer(s) (valid: 0..{common - 1})")
        out.append(k)
    if not out:
        raise UniversalityError("no layer given")
    return sorted(dict.fromkeys(out))


def _cka_hooks(n_layers: int, layers, all_layers: bool) -> tuple[list[str], list[str]]:
    chosen = range(n_layers) if all_layers else layers
    hooks = [EMBED_HOOK] + [RESID_HOOK.format(layer=k) for k in chosen]
    labels = ["embed"] + [str(k) for k in chosen]
    return hooks, labels


def _dims(model) -> tuple[int, int, int]:
    """(n_layers, d_mlp, d_model) of a MyGPT, HookedTransformer or ModelRunner."""
    if isinstance(model, ModelRunner):
        return model.n_layers, model.d_mlp, model.d_model
    if hasattr(model, "cfg") and hasattr(model.cfg, "d_mlp"):
        c = model.cfg
        return int(c.n_layers), int(c.d_mlp), int(c.d_model)
    c = model.config
    return c.nb_blocks, c.dim_hidden, c.dim_model


def estimate_memory(models, layers=None, cka: bool = True, saes=None, baseline: bool = True) -> int:
    """Bytes the float64 accumulators of :func:`compare_models` will hold (not
    counting models and one batch of activations). Independent of the tokens:

    neurons: layers x pairs x d_mlp^2; CKA: pairs x ((1 + layers) d_model)^2 +
    models x (1 + layers) x d_model^2; SAEs: SAE pairs x d_sae^2; x2 with the
    baseline (SAEs excepted)."""
    dims = [_dims(m) for m in models]
    chosen = resolve_layers([d[0] for d in dims], layers)
    total = 0
    n = len(dims)

    def cka_rows(d):
        return 1 + (d[0] if layers is None else len(chosen))

    for i in range(n):
        for j in range(i + 1, n):
            total += len(chosen) * dims[i][1] * dims[j][1]
            if cka:
                total += cka_rows(dims[i]) * dims[i][2] * cka_rows(dims[j]) * dims[j][2]
    if cka:
        total += sum(cka_rows(d) * d[2] ** 2 for d in dims)
    total *= 2 if baseline else 1
    if saes is not None:
        d = [int(s.cfg.d_sae) for s in saes if s is not None]
        total += sum(d[a] * d[b] for a in range(len(d)) for b in range(a + 1, len(d)))
    return 8 * total


# -------------------------------------------------------------------- main


def compare_models(
    models: Sequence,
    quizzes: torch.Tensor | None = None,
    *,
    task_labels=None,
    n_tokens: int = 100_000,
    tasks=None,
    layers: Sequence[int] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    positions: str = "all",
    within_position: bool = False,
    noise: float = DEFAULT_NOISE,
    baseline: bool = True,
    cka: bool = True,
    saes: Sequence | None = None,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device=None,
    compute_dtype: torch.dtype = torch.float64,
    progress: ProgressFn | None = None,
) -> UniversalityReport:
    """Universal neurons, residual CKA and (given SAEs) SAE features of two or
    more models, with a random-init baseline. One streaming pass.

    models: MyGPT or HookedTransformer (at least 2; different shapes are fine,
        the neuron layers must exist in all of them). MyGPT models are moved to
        ``device``.
    quizzes: (n, 404) quizzes to use (with optional ``task_labels``: (n,) task
        names or indices into :data:`culture.world.TASKS`); default: generate
        ``ceil(n_tokens / positions)`` world quizzes of ``tasks`` (default the
        eight published tasks) in random deterministic structures with prompt
        noise ``noise``, from ``seed``.
    layers: MLP layers for neurons (default: every layer all models have). CKA
        uses the residual stream at "embed" + every layer of each model by
        default, "embed" + ``layers`` when given.
    threshold: a neuron is universal when its mean max-correlation > threshold.
    positions: "all" (404 positions) or "cells" (positions whose input is a cell).
    within_position: correlate (and CKA) within position: each unit's mean
        at each position is removed first, so positional coding shared by all
        models (sinusoidal positions, fixed block layout) cannot make units look
        alike; units that depend on position alone count as dead.
    baseline: also run randomly initialised models of the same shapes.
    cka: compute the layer x layer CKA.
    saes: one SAELens SAE (or local directory, or None) per model; features of
        the models that have one are compared.
    batch_size: quizzes per forward pass (default: sized to ~256 MB of activations).
    compute_dtype: dtype of the per-batch products (accumulation is float64).
    progress: ``progress(description, done_tokens, total_tokens)``.
    """
    started = time.perf_counter()
    models = list(models)
    if len(models) < 2:
        raise UniversalityError(f"need at least 2 models to compare, got {len(models)}")
    if not (isinstance(threshold, (int, float)) and -1.0 <= float(threshold) <= 1.0):
        raise UniversalityError(f"threshold must be a correlation in [-1, 1], got {threshold!r}")
    threshold = float(threshold)
    if not (isinstance(noise, (int, float)) and 0.0 <= float(noise) <= 1.0):
        raise UniversalityError(f"noise must be a probability in [0, 1], got {noise!r}")
    pos = position_index(positions)
    if device is None:
        param = next(iter(models[0].parameters()), None) if hasattr(models[0], "parameters") else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)

    if names is None:
        names = [str(getattr(m, "model_id", k)) for k, m in enumerate(models)]
    names = [str(n) for n in names]
    if len(names) != len(models):
        raise UniversalityError(f"{len(names)} names for {len(models)} models")
    if len(set(names)) != len(names):
        raise UniversalityError(f"model names must be distinct, got {names}")

    runners = [ModelRunner(m, device) for m in models]
    n_layers = [r.n_layers for r in runners]
    chosen = resolve_layers(n_layers, layers)
    all_layers = layers is None
    cka_hooks = cka_labels = None
    if cka:
        made = [_cka_hooks(n, chosen, all_layers) for n in n_layers]
        cka_hooks = [h for h, _ in made]
        cka_labels = [lab for _, lab in made]

    # SAEs: one entry per model, at least two present
    sae_list = None
    if saes is not None:
        saes = list(saes)
        if len(saes) != len(models):
            raise UniversalityError(f"give one SAE per model (None for none): {len(saes)} SAE(s) for "
                                    f"{len(models)} models")
        sae_list = [(load_sae(s, device) if isinstance(s, (str, os.PathLike)) else s) for s in saes]
        present = [i for i, s in enumerate(sae_list) if s is not None]
        if len(present) < 2:
            raise UniversalityError("SAE comparison needs SAEs for at least 2 models")
        for i in present:
            s = sae_list[i]
            hook = sae_hook_name(s)
            if not hook:
                raise UniversalityError(f"the SAE of model {names[i]} does not name its hook (cfg.metadata.hook_name)")
            if not runners[i].has_hook(hook):
                raise UniversalityError(f"the SAE of model {names[i]} reads {hook}, which model {names[i]} does not "
                                        f"have")
            d_in = int(s.cfg.d_in)
            width = runners[i].hook_width(hook)
            if width is not None and width != d_in:
                raise UniversalityError(f"the SAE of model {names[i]} expects d_in={d_in} but {hook} has {width} "
                                        f"features")

    # tokens
    from culture.world import TASKS, resolve_tasks

    if quizzes is not None:
        from culture.quiz import validate_quizzes

        try:
            quizzes = validate_quizzes(quizzes)
        except CultureError as exc:
            raise UniversalityError(str(exc)) from None
        n_quizzes = int(quizzes.shape[0])
        if n_quizzes == 0:
            raise UniversalityError("no quiz given")
        if task_labels is None:
            task_names = [NO_TASK]
            local = torch.zeros(n_quizzes, dtype=torch.long)
        else:
            task_names, local = _labels_from(task_labels, n_quizzes, TASKS)

        def stream():
            for s in range(0, n_quizzes, 256):
                yield quizzes[s:s + 256], local[s:s + 256]
        source_desc = "given quizzes"
    else:
        if not (isinstance(n_tokens, int) and n_tokens >= 1):
            raise UniversalityError(f"n_tokens must be a positive integer, got {n_tokens!r}")
        try:
            task_names = list(dict.fromkeys(resolve_tasks(tasks)))
        except CultureError as exc:
            raise UniversalityError(str(exc)) from None
        lookup = torch.full((len(TASKS),), -1, dtype=torch.long)
        for k, t in enumerate(task_names):
            lookup[TASKS.index(t)] = k
        n_quizzes = math.ceil(n_tokens / len(pos))

        def stream():
            for q, t in world_quiz_stream(n_quizzes, task_names, seed=seed, noise=noise):
                yield q, lookup[t]
        source_desc = "world quizzes"

    n_tasks = len(task_names)
    total_tokens = n_quizzes * len(pos)
    n_pos = len(pos) if within_position else None
    groups = [_Group(runners, chosen, cka_hooks, sae_list, n_tasks, compute_dtype, with_tasks=True,
                     n_positions=n_pos)]
    if baseline:
        base = [r.random_like(baseline_seed(seed, k)) for k, r in enumerate(runners)]
        groups.append(_Group(base, chosen, cka_hooks, None, n_tasks, compute_dtype, with_tasks=False,
                             n_positions=n_pos))

    if batch_size is None:
        width = max(g.width() for g in groups) or 1
        batch_size = int(max(1, min(256, BATCH_FLOATS // (len(pos) * width))))
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UniversalityError(f"batch_size must be a positive integer, got {batch_size!r}")

    from culture.hooked import to_hooked_tokens

    task_counts = torch.zeros(n_tasks, dtype=torch.long)
    done = 0
    pos_d = pos.to(device)
    if progress:
        progress("streaming tokens", 0, total_tokens)
    for chunk_q, chunk_t in stream():
        for s in range(0, chunk_q.shape[0], batch_size):
            q = chunk_q[s:s + batch_size]
            t = chunk_t[s:s + batch_size]
            tokens = to_hooked_tokens(q).to(device)
            task_counts += torch.bincount(t, minlength=n_tasks) * len(pos)
            t_d = t.to(device)
            for g in groups:
                g.update(tokens, pos_d, t_d)
            done += q.shape[0] * len(pos)
            if progress:
                progress("streaming tokens", done, total_tokens)

    neurons = groups[0].neuron_results(threshold, task_counts)
    if len(groups) > 1:
        for nl, bl in zip(neurons, groups[1].neuron_results(threshold, None)):
            nl.baseline = bl
    cka_result = None
    if cka:
        cka_result = CKAResult(cka_labels, cka_hooks, groups[0].cka_results(),
                               groups[1].cka_results() if len(groups) > 1 else None)
    sae_result = groups[0].sae_results(threshold, task_counts) if sae_list is not None else None

    elapsed = time.perf_counter() - started
    settings = {
        "tokens": int(total_tokens),
        "quizzes": int(n_quizzes),
        "quiz_source": source_desc,
        "positions": positions,
        "positions_per_quiz": len(pos),
        "within_position": bool(within_position),
        "tasks": list(task_names),
        "noise": noise if quizzes is None else None,
        "structures": "uniform over the 4 deterministic structures" if quizzes is None else None,
        "seed": int(seed),
        "threshold": threshold,
        "layers": chosen,
        "neuron_hook": NEURON_HOOK,
        "cka": bool(cka),
        "cka_hooks": [EMBED_HOOK, RESID_HOOK] if cka else None,
        "baseline": bool(baseline),
        "baseline_seeds": [baseline_seed(seed, k) for k in range(len(models))] if baseline else None,
        "baseline_init": "MyGPT(cfg) reference initialisation, one random model per model, same shape"
        if baseline else None,
        "sae_hooks": [sae_hook_name(s) if s is not None else None for s in sae_list] if sae_list else None,
        "batch_size": int(batch_size),
        "device": str(device),
        "accumulator_dtype": "float64",
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "accumulator_bytes": estimate_memory(runners, None if all_layers else chosen, cka, sae_list, baseline),
        "seconds": round(elapsed, 3),
        "model_shapes": [r.shape() for r in runners],
    }
    return UniversalityReport(names, settings, list(task_names), task_counts.numpy(), neurons, cka_result,
                              sae_result)


def _labels_from(task_labels, n: int, tasks_all) -> tuple[list[str], torch.Tensor]:
    labels = list(task_labels.tolist() if hasattr(task_labels, "tolist") else task_labels)
    if len(labels) != n:
        raise UniversalityError(f"{len(labels)} task labels for {n} quizzes")
    as_names = []
    for v in labels:
        if isinstance(v, str):
            as_names.append(v)
        else:
            try:
                as_names.append(tasks_all[int(v)])
            except (IndexError, TypeError, ValueError):
                raise UniversalityError(f"task label {v!r} is neither a task name nor an index into TASKS") from None
    present = set(as_names)
    names = [t for t in tasks_all if t in present]
    names += [t for t in dict.fromkeys(as_names) if t not in names]
    index = {t: k for k, t in enumerate(names)}
    return names, torch.tensor([index[t] for t in as_names], dtype=torch.long)


__all__ = [
    "compare_models", "resolve_layers", "estimate_memory", "NEURON_HOOK", "EMBED_HOOK", "RESID_HOOK",
    "DEFAULT_THRESHOLD", "NO_TASK",
]
