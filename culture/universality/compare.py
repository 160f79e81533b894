"""Compare models trained side by side: universal neurons, residual CKA, SAE
features, each against its baselines and with intervals.

The question (Gurnee et al., 2024, "Universal Neurons in GPT2 Language
Models"): do models trained on the same data learn the same units? Every
model reads the same quiz tokens; two streaming passes over them (memory
grows with the widths, never with the tokens):

1. **moments** (float64): neuron co-moments of every model pair over all
   compared layers, on the even- and odd-index quizzes separately; per-group
   sums for every control; SAE feature co-moments and their shuffled-quiz
   null; firing counts per block of quizzes. From them, under every control:
   max-corr, baseline max-corr (rotation / permutation / gaussian), excess,
   universal neurons, the held-out replication, SAE matchings and families.
2. **intervals and CKA**: per block of quizzes, the sums that give each
   chosen pair's correlation (bootstrap intervals over quizzes); linear and
   debiased CKA of the residualised residual streams with a permutation test.

Every figure has its baselines beside it: the null version of the other
model (neurons), random-initialised models of the same shapes (neurons and
CKA), the permutation null (CKA), the shuffled-quiz floor and the
second-seed ceiling (SAE features).

    >>> from culture.universality import compare_models
    >>> report = compare_models(load_culture([0, 1, 2, 3], "bundled"), n_tokens=40_000)
    >>> report.summary_rows()          # per layer: excess, share universal [CI], held-out, random...
    >>> report.to_dict()               # every number, JSON-ready
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from culture.errors import CultureError
from culture.universality.cka import CKAMoments
from culture.universality.controls import (
    CONTROL_DESCRIPTIONS,
    TokenLabels,
    add_to_groups,
    check_controls,
    n_groups,
)
from culture.universality.features import (
    FeatureBlockSums,
    FeatureMoments,
    SAEEntry,
    category_names,
    family_rates,
    find_families,
)
from culture.universality.memory import check_memory, memory_plan
from culture.universality.neurons import BASELINES, NeuronBlockSums, NeuronMoments, QuizRoller, null_units
from culture.universality.report import CKAResult, NeuronLayer, SAEComparison, UniversalityReport
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
from culture.universality.stats import Centered, GroupSums, StreamingCorrelation, cka_from_comoments, release_buffers

NEURON_HOOK = "blocks.{layer}.mlp.hook_post"
EMBED_HOOK = "blocks.0.hook_resid_pre"
RESID_HOOK = "blocks.{layer}.hook_resid_post"
DEFAULT_THRESHOLD = 0.5
DEFAULT_CONTROLS = ("none", "position", "position_structure", "token")
#: label of every token when quizzes are given without task labels
NO_TASK = "all"
#: activations of one forward batch (all models of a group) are kept under this many floats
BATCH_FLOATS = 32 * 2**20
#: quizzes drawn for the family pictures of the dashboard, and families drawn
EXAMPLE_QUIZZES = 64
EXAMPLE_FAMILIES = 12

ProgressFn = Callable[[str, int, int], None]


# ------------------------------------------------------------------ helpers


def resolve_layers(n_layers: Sequence[int], layers) -> list[int]:
    """The MLP layers to compare: every layer all models have by default."""
    common = min(n_layers)
    if layers is None:
        return list(range(common))
    out = []
    for k in layers:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise UniversalityError(f"layer must be an integer, got {k!r}") from None
        if not 0 <= k < common:
            detail = "the models have" if len(set(n_layers)) == 1 else "every model has at least"
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


def estimate_memory(models, layers=None, cka: bool = True, saes=None, baseline: bool = True,
                    controls=DEFAULT_CONTROLS, positions: int = 404, n_blocks: int = 32) -> int:
    """Bytes :func:`compare_models` adds to the process (``baseline``: with
    the random-init models): :func:`~culture.universality.memory.memory_plan`'s
    buffers, every accumulator, one batch and the analysis temporaries.
    Independent of the tokens."""
    return memory_plan(models, layers, cka=cka, saes=saes, random_init=baseline, controls=controls,
                       positions=positions, n_blocks=n_blocks, process=0).buffers


class _Stream:
    """The quizzes of a comparison, replayable: (quizzes, clean, task) chunks."""

    def __init__(self, chunks_fn, n_quizzes: int):
        self.chunks_fn = chunks_fn
        self.n_quizzes = n_quizzes

    def batches(self, batch_size: int):
        """(quizzes, clean, tasks, global quiz index) per forward batch; the first
        batch holds at least 2 quizzes when there are 2 (so the shuffled-quiz
        null never pairs a quiz with itself)."""
        start = 0
        first = True
        for q, clean, t in self.chunks_fn():
            s = 0
            while s < q.shape[0]:
                size = max(batch_size, 2) if first else batch_size
                first = False
                e = min(s + size, q.shape[0])
                yield q[s:e], clean[s:e], t[s:e], torch.arange(start + s, start + e)
                s = e
            start += q.shape[0]


# ------------------------------------------------------------ one group


class _Group:
    """One group of models (trained, or random-init): their runners and every
    accumulator of both passes."""

    def __init__(self, runners, layers, controls, baseline, cka_hooks, entries, n_tasks, n_positions, n_blocks,
                 compute_dtype, seed, with_tasks, heldout, permutations, cka_labels, margin):
        self.runners = runners
        self.layers = layers
        self.controls = controls
        self.baseline = baseline
        self.cka_hooks = cka_hooks
        self.entries = entries or []
        self.n_tasks = n_tasks
        self.n_positions = n_positions
        self.n_blocks = n_blocks
        self.compute_dtype = compute_dtype
        self.seed = seed
        self.with_tasks = with_tasks
        self.permutations = permutations
        self.cka_labels = cka_labels
        self.margin = margin
        m = len(runners)
        self.neuron_names = [[NEURON_HOOK.format(layer=k) for k in layers] for _ in runners]
        self.hooks = []
        for i in range(m):
            names = list(self.neuron_names[i])
            if cka_hooks:
                names += cka_hooks[i]
            names += [e.hook for e in self.entries if e.model == i]
            self.hooks.append(list(dict.fromkeys(names)))
        sizes = [[r.d_mlp] * len(layers) for r in runners]
        self.neurons = NeuronMoments(sizes, controls, n_positions, baseline, compute_dtype, seed, heldout=heldout)
        self.task_fire = [None] * m
        self.task_sum = [None] * m
        # CKA: co-moments and per-control group sums of the stacked rows (pass 1: linear CKA under
        # every control), sums of the residualised rows (pass 2: debiased CKA and the test, primary control)
        self.cka_sums = None
        if cka_hooks:
            self.cka_sums = {c: [GroupSums(n_groups(c, n_positions) if c != "none" else 1) for _ in runners]
                             for c in controls}
            self.cka_widths = [[r.hook_width(h) or r.d_model for h in hooks] for r, hooks in zip(runners, cka_hooks)]
            self.cka_cross = {(i, j): StreamingCorrelation(compute_dtype=compute_dtype)
                              for i in range(m) for j in range(i + 1, m)}
            self.cka_self = [[StreamingCorrelation(compute_dtype=compute_dtype) for _ in w] for w in self.cka_widths]
        self.cka_linear = {}
        self.features = None
        if self.entries:
            cross = [(a, b) for a in range(len(self.entries)) for b in range(a + 1, len(self.entries))
                     if self._is_pair(a, b)]
            self.features = FeatureMoments(self.entries, cross, controls[0], n_positions, n_tasks, n_blocks,
                                           compute_dtype)
        self.analyses = {}
        self.block_sums = {}
        self.cka_moments = {}
        self.feature_pairs = None
        self.feature_sums = None
        self.examples = None

    def _is_pair(self, a: int, b: int) -> bool:
        """SAE pairs compared: the primary SAE of every model with each other,
        and every further SAE of a model with that model's primary one (ceiling)."""
        ea, eb = self.entries[a], self.entries[b]
        primary = {}
        for k, e in enumerate(self.entries):
            primary.setdefault(e.model, k)
        if ea.model == eb.model:
            return primary[ea.model] in (a, b)
        return primary[ea.model] == a and primary[eb.model] == b

    def width(self) -> int:
        total = 0
        for r, names in zip(self.runners, self.hooks):
            for name in names:
                w = r.hook_width(name)
                total += w if w is not None else r.d_model
        total += sum(e.d_sae for e in self.entries)
        return total

    # ---------------------------------------------------------- batches

    def _run(self, tokens, pos):
        return [r.run(tokens, names, pos) for r, names in zip(self.runners, self.hooks)]

    def _neuron_acts(self, acts):
        return [torch.cat([acts[i][name].float() for name in self.neuron_names[i]], -1) for i in range(len(acts))]

    def _rows(self, acts, i):
        a = [acts[i][h] for h in self.cka_hooks[i]]
        return torch.cat([x.reshape(x.shape[0] * x.shape[1], -1) for x in a], 1)

    def _features(self, acts):
        out = []
        for e in self.entries:
            a = acts[e.model][e.hook]
            n, p = a.shape[:2]
            x = sae_input(e.sae, a.reshape(n * p, *a.shape[2:]))
            with torch.no_grad():
                f = e.sae.encode(x.to(device=e.sae.W_dec.device, dtype=e.sae.W_dec.dtype))
            out.append(f.reshape(n, p, -1).to(device=a.device, dtype=torch.float32))
        return out

    def _nulls(self, neuron, roller, batch_index):
        if self.baseline == "rotation":
            return None
        g = torch.Generator().manual_seed(int(self.seed) * 100_003 + batch_index)
        return [null_units(self.baseline, ("neurons", i), a, roller, g) for i, a in enumerate(neuron)]

    def pass1(self, tokens, pos, labels, quiz_tasks, index, roller, batch_index):
        acts = self._run(tokens, pos)
        neuron = self._neuron_acts(acts)
        half = index % 2
        self.neurons.update(neuron, labels, half, self._nulls(neuron, roller, batch_index))
        if self.with_tasks:
            for i, a in enumerate(neuron):
                self.task_fire[i] = _task_add(self.task_fire[i], (a > 0).sum(1, dtype=torch.float64), quiz_tasks,
                                              self.n_tasks)
                self.task_sum[i] = _task_add(self.task_sum[i], a.sum(1, dtype=torch.float64), quiz_tasks,
                                             self.n_tasks)
        if self.cka_sums is not None:
            stacked = []
            n, p = tokens.shape[0], pos.shape[0]
            for i in range(len(self.runners)):
                rows = self._rows(acts, i)
                for c, sums in self.cka_sums.items():
                    add_to_groups(sums[i], rows.reshape(n, p, -1), labels, c)
                off = np.concatenate([[0], np.cumsum(self.cka_widths[i])])
                prepared = Centered.of(rows, compute_dtype=self.compute_dtype)
                for r, acc in enumerate(self.cka_self[i]):
                    acc.update(prepared.columns(int(off[r]), int(off[r + 1])))
                stacked.append(prepared)
            for (i, j), acc in self.cka_cross.items():
                acc.update(stacked[i], stacked[j])
        if self.features is not None:
            feats = self._features(acts)
            nulls = [roller(("features", e), f) for e, f in enumerate(feats)]
            self.features.update(feats, nulls, labels, quiz_tasks, index % self.n_blocks)

    def analyse(self, threshold: float, seed: int, task_names) -> None:
        self.threshold = threshold
        for c in self.controls:
            self.analyses[c] = self.neurons.analyse(c, threshold)
            if self.cka_sums is not None:
                self.cka_linear[c] = self._linear_cka(c)
        if self.features is not None:
            self.feature_pairs = self.features.analyse(threshold, seed)

    def start_pass2(self, n_blocks: int) -> None:
        for c in self.controls:
            self.block_sums[c] = NeuronBlockSums(self.analyses[c], self.neurons, n_blocks, self.margin)
        if self.cka_hooks:
            diagonal = {}
            if self.permutations:
                m = len(self.runners)
                for i in range(m):
                    for j in range(i + 1, m):
                        li, lj = self.cka_labels[i], self.cka_labels[j]
                        diagonal[(i, j)] = [(li.index(x), lj.index(x)) for x in li if x in lj]
            c = self.controls[0]
            self.cka_moments[c] = CKAMoments(self.cka_widths, self.compute_dtype, self.permutations, diagonal,
                                             self.seed)
        if self.feature_pairs is not None:
            self.feature_sums = FeatureBlockSums(self.features, self.feature_pairs, self.threshold, self.margin)

    def pass2(self, tokens, pos, labels, index, roller, batch_index, example_slots):
        acts = self._run(tokens, pos)
        neuron = self._neuron_acts(acts)
        nulls = self._nulls(neuron, roller, batch_index)
        blocks = index % self.n_blocks
        for c in self.controls:
            self.block_sums[c].update(neuron, labels, blocks, nulls, index % 2)
        if self.cka_moments:
            rows = [self._rows(acts, i).double() for i in range(len(self.runners))]
            for c, mom in self.cka_moments.items():  # the primary control
                res = []
                for i, x in enumerate(rows):
                    sums = self.cka_sums[c][i]
                    if c == "none":
                        res.append(x - (sums.sums[0] / sums.counts[0]).to(x))
                    else:
                        res.append(x - sums.means().to(x)[labels.groups(c).reshape(-1)])
                mom.update(res)
        if self.feature_sums is not None:
            feats = self._features(acts)
            self.feature_sums.update(feats, labels, blocks)
            if example_slots is not None:
                example_slots(feats)

    # ---------------------------------------------------------- results

    def _linear_cka(self, control: str) -> dict[tuple[int, int], np.ndarray]:
        """Linear CKA of every pair of rows, per model pair, from the pass-1 co-moments under ``control``."""
        m = len(self.runners)
        offs = [np.concatenate([[0], np.cumsum(w)]).astype(int) for w in self.cka_widths]
        sums = self.cka_sums[control]
        selfs = []
        for i in range(m):
            per = []
            for r, acc in enumerate(self.cka_self[i]):
                if control != "none":
                    acc = acc.within_groups(sums[i].columns(offs[i][r], offs[i][r + 1]))
                per.append(acc.comoment)
            selfs.append(per)
        out = {}
        for (i, j), acc in self.cka_cross.items():
            if control != "none":
                acc = acc.within_groups(sums[i], sums[j])
            oi, oj = offs[i], offs[j]
            mat = np.zeros((len(oi) - 1, len(oj) - 1))
            for a in range(len(oi) - 1):
                for b in range(len(oj) - 1):
                    mat[a, b] = cka_from_comoments(acc.comoment[oi[a]:oi[a + 1], oj[b]:oj[b + 1]], selfs[i][a],
                                                   selfs[j][b])
            out[(i, j)] = mat
        return out

    def neuron_layers(self, control: str, threshold: float, chosen: list[int], task_counts) -> list[NeuronLayer]:
        a = self.analyses[control]
        m = len(self.runners)
        out = []
        for k, layer in enumerate(chosen):
            sl = [slice(*a.offsets(i)[k:k + 2]) for i in range(m)]
            pair_max, pair_layer, pair_arg, same, base, held, held_base = {}, {}, {}, {}, {}, {}, {}
            for i in range(m):
                for j in range(m):
                    if i == j:
                        continue
                    pair_max[(i, j)] = a.pair_max[(i, j)][sl[i]]
                    flat = a.pair_arg[(i, j)][sl[i]]
                    h = a.layer_sizes[j][0]
                    pair_layer[(i, j)] = np.asarray(chosen)[flat // h]
                    pair_arg[(i, j)] = flat % h
                    same[(i, j)] = a.same_layer_max[(i, j)][sl[i]]
                    base[(i, j)] = a.base_max[(i, j)][sl[i]]
                    if a.held_corr:
                        held[(i, j)] = a.held_corr[(i, j)][sl[i]]
                        held_base[(i, j)] = a.held_base[(i, j)][sl[i]]
            intervals = {name: v[k] for name, v in a.intervals.items() if isinstance(v, list) and v[k] is not None}
            intervals.update({name: v for name, v in a.intervals.items() if not isinstance(v, list)})
            rate = mean = None
            if self.with_tasks and task_counts is not None and control == self.controls[0]:
                denom = task_counts.clamp(min=1).to(torch.float64)[:, None]
                rate = [(self.task_fire[i].cpu() / denom).numpy()[:, sl[i]] for i in range(m)]
                mean = [(self.task_sum[i].cpu() / denom).numpy()[:, sl[i]] for i in range(m)]
            out.append(NeuronLayer(
                layer=layer, hook=NEURON_HOOK.format(layer=layer), threshold=threshold, control=control,
                baseline_kind=self.baseline, layers=list(chosen), n_neurons=[a.layer_sizes[i][k] for i in range(m)],
                dead=[a.dead[i][sl[i]] for i in range(m)], pair_max=pair_max, pair_layer=pair_layer,
                pair_argmax=pair_arg, same_layer_max=same, baseline_max=base, held_corr=held,
                held_baseline=held_base,
                held_alive=[a.held_alive[i][sl[i]] for i in range(m)] if a.held_alive else None,
                intervals=intervals, task_fire_rate=rate, task_mean=mean))
        return out


def _task_add(acc, per_quiz: torch.Tensor, quiz_labels: torch.Tensor, n_tasks: int):
    """Add per-quiz sums (n, H) into per-task sums (K, H)."""
    if acc is None:
        acc = torch.zeros(n_tasks, per_quiz.shape[1], dtype=torch.float64, device=per_quiz.device)
    acc.index_add_(0, quiz_labels.to(per_quiz.device), per_quiz.to(torch.float64))
    return acc


# ---------------------------------------------------------------------- main


def compare_models(
    models: Sequence,
    quizzes: torch.Tensor | None = None,
    *,
    task_labels=None,
    clean: torch.Tensor | None = None,
    n_tokens: int = 100_000,
    tasks=None,
    layers: Sequence[int] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    positions: str = "all",
    controls: Sequence[str] | str = DEFAULT_CONTROLS,
    within_position: bool = False,
    baseline: str = "rotation",
    random_init: bool = True,
    noise: float = DEFAULT_NOISE,
    cka: bool = True,
    cka_permutations: int = 99,
    saes: Sequence | None = None,
    ceiling_sae=None,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
    n_blocks: int = 32,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    bootstrap_margin: float = 0.15,
    seed: int = 0,
    device=None,
    compute_dtype: torch.dtype = torch.float64,
    progress: ProgressFn | None = None,
    max_memory=None,
) -> UniversalityReport:
    """Universal neurons, residual CKA and (given SAEs) SAE features of two or
    more models, with their baselines and bootstrap intervals; two streaming passes.

    models: MyGPT, HookedTransformer or :class:`ModelRunner` (at least 2;
        different shapes are fine, the neuron layers must exist in all).
    quizzes: (n, 404) quizzes to use (with optional ``task_labels``: (n,) task
        names or indices into :data:`culture.world.TASKS`, and ``clean``: the
        same quizzes before prompt noise, for the transform-cell mask); default:
        ``ceil(n_tokens / positions)`` world quizzes of ``tasks`` in random
        deterministic structures with prompt noise ``noise``, from ``seed``.
    layers: MLP layers compared (default every layer all models have); a
        neuron's partner is searched in all of them. CKA uses "embed" + every
        layer by default, "embed" + ``layers`` when given.
    threshold: universal = excess (max-corr - baseline max-corr) > threshold.
    positions: "all" (404 positions) or "cells" (positions whose input is a cell).
    controls: confound controls (:data:`~culture.universality.controls.CONTROLS`),
        each computed; the first is the primary one (tables, CKA test, SAEs).
        ``within_position=True`` is ``controls=("position",)``.
    baseline: the null version of the other model for neurons: "rotation",
        "permutation" (shuffled quizzes) or "gaussian".
    random_init: also run randomly initialised models of the same shapes.
    cka, cka_permutations: residual CKA, and the permutation test's size (0: none).
    saes: one SAELens SAE (or directory, or None) per model; ``ceiling_sae``:
        a second SAE of the first model that has one (another seed): the ceiling.
    n_blocks, n_resamples, confidence: the bootstrap (quizzes in ``n_blocks``
        blocks by index; even blocks hold even quizzes, so the odd blocks are
        the held-out half). ``bootstrap_margin``: neurons whose excess is
        further than this from the threshold keep their side in every resample
        (:class:`~culture.universality.neurons.NeuronBlockSums`).
    compute_dtype: dtype of the per-batch products (accumulation is float64).
    progress: ``progress(description, done_tokens, total_tokens)``.
    max_memory: peak memory allowed (4.5G, bytes; default: what the system has
        available): the comparison refuses before any work when its
        :func:`~culture.universality.memory.memory_plan` is over it.
    """
    started = time.perf_counter()
    models = list(models)
    if len(models) < 2:
        raise UniversalityError(f"need at least 2 models to compare, got {len(models)}")
    if not (isinstance(threshold, (int, float)) and -1.0 <= float(threshold) <= 2.0):
        raise UniversalityError(f"threshold must be an excess correlation in [-1, 2], got {threshold!r}")
    threshold = float(threshold)
    if not (isinstance(noise, (int, float)) and 0.0 <= float(noise) <= 1.0):
        raise UniversalityError(f"noise must be a probability in [0, 1], got {noise!r}")
    if baseline not in BASELINES:
        raise UniversalityError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    controls = check_controls(("position",) if within_position else controls)
    if not (isinstance(n_blocks, int) and n_blocks >= 2 and n_blocks % 2 == 0):
        raise UniversalityError(f"n_blocks must be an even integer >= 2, got {n_blocks!r}")
    if not (isinstance(n_resamples, int) and n_resamples >= 1):
        raise UniversalityError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not (isinstance(cka_permutations, int) and cka_permutations >= 0):
        raise UniversalityError(f"cka_permutations must be a non-negative integer, got {cka_permutations!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise UniversalityError(f"confidence must be in (0, 1), got {confidence!r}")
    pos = position_index(positions)
    if device is None:
        param = next(iter(models[0].parameters()), None) if hasattr(models[0], "parameters") else None
        device = param.device if param is not None else getattr(models[0], "device", torch.device("cpu"))
    device = torch.device(device)

    if names is None:
        names = [str(getattr(m, "model_id", None) if getattr(m, "model_id", None) is not None else k)
                 for k, m in enumerate(models)]
    names = [str(n) for n in names]
    if len(names) != len(models):
        raise UniversalityError(f"{len(names)} names for {len(models)} models")
    if len(set(names)) != len(names):
        raise UniversalityError(f"model names must be distinct, got {names}")

    runners = [m if isinstance(m, ModelRunner) else ModelRunner(m, device) for m in models]
    n_layers = [r.n_layers for r in runners]
    chosen = resolve_layers(n_layers, layers)
    all_layers = layers is None
    cka_hooks = cka_labels = None
    if cka:
        made = [_cka_hooks(n, chosen, all_layers) for n in n_layers]
        cka_hooks = [h for h, _ in made]
        cka_labels = [lab for _, lab in made]
    entries = _sae_entries(saes, ceiling_sae, runners, names, device)

    # ------------------------------------------------------------- tokens
    from culture.world import TASKS, resolve_tasks

    if quizzes is not None:
        from culture.quiz import validate_quizzes

        try:
            quizzes = validate_quizzes(quizzes)
            clean = quizzes if clean is None else validate_quizzes(clean, what="clean quizzes")
        except CultureError as exc:
            raise UniversalityError(str(exc)) from None
        if clean.shape != quizzes.shape:
            raise UniversalityError(f"clean quizzes {tuple(clean.shape)} and quizzes {tuple(quizzes.shape)} differ")
        n_quizzes = int(quizzes.shape[0])
        if n_quizzes == 0:
            raise UniversalityError("no quiz given")
        if task_labels is None:
            task_names = [NO_TASK]
            local = torch.zeros(n_quizzes, dtype=torch.long)
        else:
            task_names, local = _labels_from(task_labels, n_quizzes, TASKS)

        def chunks():
            for s in range(0, n_quizzes, 256):
                yield quizzes[s:s + 256], clean[s:s + 256], local[s:s + 256]
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

        def chunks():
            for q, c, t in world_quiz_stream(n_quizzes, task_names, seed=seed, noise=noise, with_clean=True):
                yield q, c, lookup[t]
        source_desc = "world quizzes"
    stream = _Stream(chunks, n_quizzes)
    n_tasks = len(task_names)
    total_tokens = n_quizzes * len(pos)
    plan = memory_plan(runners, None if all_layers else chosen, cka=cka, saes=[e.sae for e in entries] or None,
                       random_init=random_init, controls=controls, positions=len(pos), n_blocks=n_blocks,
                       baseline=baseline, cka_permutations=cka_permutations, batch_size=batch_size,
                       n_quizzes=n_quizzes, compute_dtype=compute_dtype, max_memory=max_memory)
    check_memory(plan)

    common = dict(layers=chosen, controls=controls, baseline=baseline, cka_hooks=cka_hooks, n_tasks=n_tasks,
                  n_positions=len(pos), n_blocks=n_blocks, compute_dtype=compute_dtype,
                  permutations=cka_permutations, cka_labels=cka_labels, margin=bootstrap_margin)
    groups = [_Group(runners, entries=entries, seed=seed, with_tasks=True, heldout=True, **common)]
    if random_init:
        base = [r.random_like(baseline_seed(seed, k)) for k, r in enumerate(runners)]
        groups.append(_Group(base, entries=None, seed=seed + 1, with_tasks=False, heldout=False,
                             **{**common, "permutations": 0}))

    for g in groups:
        g.neurons.tile_rows = plan.tile_rows
    if batch_size is None:
        width = max(g.width() for g in groups) or 1
        batch_size = int(max(1, min(256, BATCH_FLOATS // (len(pos) * width))))
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UniversalityError(f"batch_size must be a positive integer, got {batch_size!r}")

    from culture.hooked import to_hooked_tokens

    pos_d = pos.to(device)

    def passes(kind: str, fn) -> None:
        done = 0
        rollers = [QuizRoller() for _ in groups]
        if progress:
            progress(kind, 0, total_tokens)
        for b, (q, c, t, idx) in enumerate(stream.batches(batch_size)):
            tokens = to_hooked_tokens(q).to(device)
            labels = TokenLabels(q.to(device), tokens, pos_d, c.to(device))
            fn(b, q, tokens, labels, t.to(device), idx.to(device), rollers)
            done += q.shape[0] * len(pos)
            if progress:
                progress(kind, done, total_tokens)

    # ------------------------------------------------------------- pass 1
    task_counts = torch.zeros(n_tasks, dtype=torch.long)

    def first(b, q, tokens, labels, t, idx, rollers):
        task_counts.add_(torch.bincount(t.cpu(), minlength=n_tasks) * len(pos))
        for g, roller in zip(groups, rollers):
            g.pass1(tokens, pos_d, labels, t, idx, roller, b)

    passes("pass 1: moments", first)
    release_buffers()
    for g in groups:
        g.analyse(threshold, seed, task_names)

    # families (before pass 2, which records their example activations)
    trained = groups[0]
    sae_result = None
    example_store = None
    if entries:
        sae_result = _sae_comparison(trained, entries, threshold, controls[0], task_names)
        if sae_result.families:
            example_store = _ExampleStore(sae_result, EXAMPLE_QUIZZES, pos, EXAMPLE_FAMILIES)

    # ------------------------------------------------------------- pass 2
    for g in groups:
        g.start_pass2(n_blocks)

    def second(b, q, tokens, labels, t, idx, rollers):
        for k, (g, roller) in enumerate(zip(groups, rollers)):
            slots = None
            if k == 0 and example_store is not None:
                slots = example_store.collector(q)
            g.pass2(tokens, pos_d, labels, idx, roller, b, slots)

    passes("pass 2: intervals, CKA", second)

    # ------------------------------------------------------------ results
    for k, g in enumerate(groups):
        for c in controls:
            g.block_sums[c].intervals(n_resamples, confidence, seed + 17 * k)
    neuron_controls = {}
    for c in controls:
        layers_c = trained.neuron_layers(c, threshold, chosen, task_counts)
        if random_init:
            for nl, rl in zip(layers_c, groups[1].neuron_layers(c, threshold, chosen, None)):
                nl.random = rl
        neuron_controls[c] = layers_c
    cka_result = None
    if cka:
        first_c = controls[0]
        cka_result = CKAResult(
            cka_labels, cka_hooks, linear=trained.cka_linear,
            debiased={first_c: trained.cka_moments[first_c].matrices(True)},
            random_linear=groups[1].cka_linear if random_init else None,
            random_debiased={first_c: groups[1].cka_moments[first_c].matrices(True)} if random_init else None,
            tests=trained.cka_moments[first_c].p_values(), primary=first_c, permutations=cka_permutations)
    if sae_result is not None:
        trained.feature_sums.intervals(n_resamples, confidence, seed + 5)
        counts, tokens_per = trained.features.fire_rates()
        family_rates(sae_result.families, counts, tokens_per, sae_result.categories, n_resamples, confidence,
                     seed + 7)
        if example_store is not None:
            sae_result.examples = example_store.result()

    elapsed = time.perf_counter() - started
    settings = {
        "tokens": int(total_tokens),
        "quizzes": int(n_quizzes),
        "quiz_source": source_desc,
        "positions": positions,
        "positions_per_quiz": len(pos),
        "controls": list(controls),
        "control_descriptions": {c: CONTROL_DESCRIPTIONS[c] for c in controls},
        "primary_control": controls[0],
        "tasks": list(task_names),
        "noise": noise if quizzes is None else None,
        "structures": "uniform over the 4 deterministic structures" if quizzes is None else None,
        "seed": int(seed),
        "threshold": threshold,
        "criterion": "universal = mean over other models of max-corr minus mean baseline max-corr > threshold "
                     "(Gurnee et al. 2024)",
        "layers": chosen,
        "neuron_hook": NEURON_HOOK,
        "neuron_baseline": baseline,
        "heldout": "partners chosen on even-index quizzes, measured on odd-index quizzes",
        "bootstrap": {"blocks": n_blocks, "resamples": n_resamples, "confidence": confidence,
                      "unit": "blocks of quizzes (quiz k in block k mod blocks)"},
        "cka": bool(cka),
        "cka_hooks": [EMBED_HOOK, RESID_HOOK] if cka else None,
        "cka_permutations": cka_permutations if cka else None,
        "random_init": bool(random_init),
        "random_seeds": [baseline_seed(seed, k) for k in range(len(models))] if random_init else None,
        "random_init_kind": "MyGPT(cfg) reference initialisation, one random model per model, same shape"
        if random_init else None,
        "saes": [{"label": e.label, "model": names[e.model], "hook": e.hook, "d_sae": e.d_sae} for e in entries]
        if entries else None,
        "sae_floor": "shuffled quizzes: the other SAE's features on the previous quiz, same positions"
        if entries else None,
        "batch_size": int(batch_size),
        "device": str(device),
        "accumulator_dtype": "float64",
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "accumulator_bytes": estimate_memory(runners, None if all_layers else chosen, cka,
                                             [e.sae for e in entries] or None, random_init, controls, len(pos),
                                             n_blocks),
        "memory_plan": plan.to_dict(),
        "seconds": round(elapsed, 3),
        "model_shapes": [r.shape() for r in runners],
    }
    return UniversalityReport(names, settings, list(task_names), task_counts.numpy(), neuron_controls, cka_result,
                              sae_result)


# --------------------------------------------------------------------- SAEs


def _sae_entries(saes, ceiling_sae, runners, names, device) -> list[SAEEntry]:
    if saes is None:
        if ceiling_sae is not None:
            raise UniversalityError("a ceiling SAE needs the models' SAEs (saes=...)")
        return []
    saes = list(saes)
    if len(saes) != len(runners):
        raise UniversalityError(f"give one SAE per model (None for none): {len(saes)} SAE(s) for "
                                f"{len(runners)} models")
    loaded = [(load_sae(s, device) if isinstance(s, (str, os.PathLike)) else s) for s in saes]
    present = [i for i, s in enumerate(loaded) if s is not None]
    if len(present) < 2:
        raise UniversalityError("SAE comparison needs SAEs for at least 2 models")
    entries = [SAEEntry(i, loaded[i], names[i], "") for i in present]
    if ceiling_sae is not None:
        c = load_sae(ceiling_sae, device) if isinstance(ceiling_sae, (str, os.PathLike)) else ceiling_sae
        entries.append(SAEEntry(present[0], c, f"{names[present[0]]} (2nd SAE)", ""))
    for e in entries:
        hook = sae_hook_name(e.sae)
        if not hook:
            raise UniversalityError(f"the SAE of model {names[e.model]} does not name its hook "
                                    "(cfg.metadata.hook_name)")
        if not runners[e.model].has_hook(hook):
            raise UniversalityError(f"the SAE of model {names[e.model]} reads {hook}, which model "
                                    f"{names[e.model]} does not have")
        d_in = int(e.sae.cfg.d_in)
        width = runners[e.model].hook_width(hook)
        if width is not None and width != d_in:
            raise UniversalityError(f"the SAE of model {names[e.model]} expects d_in={d_in} but {hook} has "
                                    f"{width} features")
        e.hook = hook
    return entries


def _sae_comparison(group: _Group, entries, threshold, control, task_names) -> SAEComparison:
    primary = {}
    for k, e in enumerate(entries):
        primary.setdefault(e.model, k)
    anchor = primary[entries[0].model]
    members = [k for m, k in primary.items() if k != anchor]
    pairs = group.feature_pairs
    fams = find_families(pairs, anchor, members, threshold)
    null = find_families(pairs, anchor, members, threshold, use_null=True)
    return SAEComparison(threshold=threshold, control=control, labels=[e.label for e in entries],
                         models=[e.model for e in entries], hooks=[e.hook for e in entries],
                         d_sae=[e.d_sae for e in entries], pairs=pairs, anchor=anchor, family_members=members,
                         families=fams, null_families=len(null), categories=category_names(list(task_names)))


class _ExampleStore:
    """Family members' activations on the first quizzes of pass 2 (dashboard)."""

    def __init__(self, sae: SAEComparison, n: int, pos: torch.Tensor, families: int = 12):
        self.sae = sae
        self.n = n
        # the strongest families (those the page shows)
        self.shown = sorted(range(len(sae.families)), key=lambda k: -sae.families[k].min_corr)[:families]
        self.pos = pos.cpu()
        self.quizzes: list[torch.Tensor] = []
        self.acts: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.have = 0

    def collector(self, quizzes: torch.Tensor):
        if self.have >= self.n:
            return None

        def collect(feats):
            take = min(self.n - self.have, quizzes.shape[0])
            self.quizzes.append(quizzes[:take].cpu())
            for k in self.shown:
                fam = self.sae.families[k]
                for e, f in fam.members.items():
                    full = torch.zeros(take, 404)
                    full[:, self.pos] = feats[e][:take, :, f].cpu().float()
                    self.acts.setdefault((k, e), []).append(full)
            self.have += take
        return collect

    def result(self) -> dict:
        """{"quizzes": (k, 404), "acts": {(family, entry): (k, 404) activations per hooked position}}."""
        if not self.quizzes:
            return {}
        return {"quizzes": torch.cat(self.quizzes), "acts": {key: torch.cat(v) for key, v in self.acts.items()}}


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
    "DEFAULT_THRESHOLD", "DEFAULT_CONTROLS", "NO_TASK",
]
