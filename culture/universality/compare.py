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
from dataclasses import dataclass

import numpy as np
import torch

from culture.errors import CultureError
from culture.hooks import act_name, sae_hook_name
from culture.settings import default_of
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
from culture.universality.intervals import METHOD as INTERVAL_METHOD
from culture.universality.intervals import feature_intervals, neuron_intervals, rotation_draw_shares
from culture.universality.neurons import NeuronBlockSums, NeuronMoments, QuizRoller, null_units
from culture.universality.memory import check_memory, limit_heap_growth, memory_plan, settings_memory_plan
from culture.universality.report import CKAResult, NeuronLayer, SAEComparison, UniversalityReport
from culture.universality.runner import (
    ModelRunner,
    baseline_seed,
    load_sae,
    position_index,
    world_quiz_stream,
)
from culture.universality.stats import (Centered, GroupSums, StreamingCorrelation, cka_from_comoments, float64_sum,
                                        release_buffers)
from culture.universality_settings import (
    CONTROLS,
    UniversalityError,
    UniversalitySettings,
    check_quiz_count,
)


def _template(kind: str) -> str:
    """The hook name of ``kind`` with its block left as ``{layer}``."""
    return act_name(kind, 0).replace("blocks.0.", "blocks.{layer}.", 1)


#: MLP neurons compared (``NEURON_HOOK.format(layer=k)``), residual stream read by CKA
NEURON_HOOK = _template("post")
EMBED_HOOK = act_name("resid_pre", 0)
RESID_HOOK = _template("resid_post")
DEFAULT_THRESHOLD = default_of(UniversalitySettings, "threshold")
DEFAULT_CONTROLS = CONTROLS
#: label of every token when quizzes are given without task labels
NO_TASK = "all"
#: activations of one forward batch (all models of a group) are kept under this many floats
BATCH_FLOATS = 32 * 2**20
#: a pass's first forward batch holds at least this many quizzes (when there are as many), so that the
#: shuffled-quiz null never pairs a quiz with itself
FIRST_BATCH_QUIZZES = 2
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
    hooks = [EMBED_HOOK] + [act_name("resid_post", k) for k in chosen]
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
        batch holds at least :data:`FIRST_BATCH_QUIZZES` when there are as many."""
        start = 0
        first = True
        for q, clean, t in self.chunks_fn():
            s = 0
            while s < q.shape[0]:
                size = max(batch_size, FIRST_BATCH_QUIZZES) if first else batch_size
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
        self.neuron_names, self.hooks = _group_hooks(m, layers, cka_hooks, self.entries)
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

    # ---------------------------------------------------------- batches

    def _run(self, tokens, pos, neurons_only: bool = False):
        hooks = self.neuron_names if neurons_only else self.hooks
        return [r.run(tokens, names, pos) for r, names in zip(self.runners, hooks)]

    def _neuron_acts(self, acts):
        return [torch.cat([acts[i][name].float() for name in self.neuron_names[i]], -1) for i in range(len(acts))]

    def _rows(self, acts, i):
        a = [acts[i][h] for h in self.cka_hooks[i]]
        return torch.cat([x.reshape(x.shape[0] * x.shape[1], -1) for x in a], 1)

    def _features(self, acts):
        from culture.sae.evaluation import sae_input

        out = []
        for e in self.entries:
            a = acts[e.model][e.hook]  # (n, P, ...)
            n, p = a.shape[:2]
            x = sae_input(e.sae, a)
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
        """One batch of pass 1; after the first sweep over the quizzes (row blocks,
        :meth:`NeuronMoments.use_row_blocks`) only the neuron co-moments' rows."""
        later = self.neurons.sweep > 0
        acts = self._run(tokens, pos, neurons_only=later)
        neuron = self._neuron_acts(acts)
        half = index % 2
        self.neurons.update(neuron, labels, half, self._nulls(neuron, roller, batch_index))
        if later:
            return
        if self.with_tasks:
            for i, a in enumerate(neuron):
                self.task_fire[i] = _task_add(self.task_fire[i], float64_sum(a > 0, 1), quiz_tasks,
                                              self.n_tasks)
                self.task_sum[i] = _task_add(self.task_sum[i], float64_sum(a, 1), quiz_tasks,
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
        self.analyses.update(self.neurons.analyse_controls(self.controls, threshold))
        for c in self.controls:
            if self.cka_sums is not None:
                self.cka_linear[c] = self._linear_cka(c)
        if self.features is not None:
            self.feature_pairs = self.features.analyse(threshold, seed)

    def start_pass2(self, n_blocks: int) -> None:
        for c in self.controls:
            self.block_sums[c] = NeuronBlockSums(self.analyses[c], self.neurons, n_blocks, self.margin)
        self.neurons.release()  # pass 2 reads none of pass 1's neuron moments
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
                layer=layer, hook=act_name("post", layer), threshold=threshold, control=control,
                baseline_kind=self.baseline, layers=list(chosen), n_neurons=[a.layer_sizes[i][k] for i in range(m)],
                dead=[a.dead[i][sl[i]] for i in range(m)], pair_max=pair_max, pair_layer=pair_layer,
                pair_argmax=pair_arg, same_layer_max=same, baseline_max=base, held_corr=held,
                held_baseline=held_base,
                held_alive=[a.held_alive[i][sl[i]] for i in range(m)] if a.held_alive else None,
                intervals=intervals, task_fire_rate=rate, task_mean=mean))
        return out


def _group_hooks(m: int, layers, cka_hooks, entries) -> tuple[list[list[str]], list[list[str]]]:
    """Per model of a group: the neuron hooks, and every hook a batch reads
    (neurons, CKA rows, the SAEs' inputs)."""
    neuron_names = [[act_name("post", k) for k in layers] for _ in range(m)]
    hooks = []
    for i in range(m):
        names = list(neuron_names[i])
        if cka_hooks:
            names += cka_hooks[i]
        names += [e.hook for e in entries if e.model == i]
        hooks.append(list(dict.fromkeys(names)))
    return neuron_names, hooks


def _hooks_width(runners, hooks, entries) -> int:
    """Floats per token a group's batch reads: its hooks' widths and the SAE features."""
    total = 0
    for r, names in zip(runners, hooks):
        for name in names:
            w = r.hook_width(name)
            total += w if w is not None else r.d_model
    return total + sum(e.d_sae for e in entries)


def _task_add(acc, per_quiz: torch.Tensor, quiz_labels: torch.Tensor, n_tasks: int):
    """Add per-quiz sums (n, H) into per-task sums (K, H)."""
    if acc is None:
        acc = torch.zeros(n_tasks, per_quiz.shape[1], dtype=torch.float64, device=per_quiz.device)
    acc.index_add_(0, quiz_labels.to(per_quiz.device), per_quiz.to(torch.float64))
    return acc


# ---------------------------------------------------------------------- main


def compare_models(models: Sequence, quizzes: torch.Tensor | None = None, *,
                   settings: UniversalitySettings | None = None, task_labels=None, clean: torch.Tensor | None = None,
                   saes: Sequence | None = None, ceiling_sae=None, names: Sequence[str] | None = None, device=None,
                   progress: ProgressFn | None = None, **options) -> UniversalityReport:
    """Universal neurons, residual CKA and (given SAEs) SAE features of two or
    more models, with their baselines and bootstrap intervals; two streaming passes.

    models: MyGPT, HookedTransformer or :class:`ModelRunner` (at least 2;
        different shapes are fine, the neuron layers must exist in all).
    quizzes: (n, 404) quizzes to use (with optional ``task_labels``: (n,) task
        names or indices into :data:`culture.world.TASKS`, and ``clean``: the
        same quizzes before prompt noise, for the transform-cell mask); default:
        world quizzes drawn as ``settings`` say (``tokens``, ``tasks``, ``noise``, ``seed``).
    settings: a :class:`~culture.universality_settings.UniversalitySettings`
        (default: its defaults); ``options`` replace its fields by name
        (``threshold=0.4, controls=("position",)``...; the earlier names
        ``n_tokens``, ``n_resamples`` and ``compute_dtype`` still work).
    saes: one SAELens SAE (or directory, or None) per model; ``ceiling_sae``:
        a second SAE of the first model that has one (another seed): the ceiling.
    names: model names (default: their ``model_id``, else their index).
    progress: ``progress(description, done_tokens, total_tokens)``.

    The steps: :func:`_prepare` (inputs checked, hooks chosen), :func:`_quiz_source`,
    then :func:`_run_group` for the trained models and after them for the
    random-init ones (one group at a time: pass 1, the analysis and the SAE
    families, pass 2, the group's results; its accumulators are dropped before
    the next group starts), then :func:`_assemble` and :func:`_settings_record`.
    ``max_memory`` (a setting): the peak memory allowed; the comparison refuses
    before any work when its :func:`~culture.universality.memory.memory_plan` is over it.
    """
    started = time.perf_counter()
    models = list(models)
    if len(models) < 2:
        raise UniversalityError(f"need at least 2 models to compare, got {len(models)}")
    s = UniversalitySettings.of(settings, **options)
    limit_heap_growth()  # freed temporaries go back to the system (the plan counts live buffers)
    plan = _prepare(models, s, names, device, saes, ceiling_sae)
    source = _quiz_source(s, quizzes, clean, task_labels, plan.pos)
    memory = _memory_plan(plan, s, source)
    run = _Run(plan, s, source, _Stream(source.chunks, source.n_quizzes), memory,
               _batch_size(s.batch_size, plan), progress)
    trained = _run_group(run, 0)
    results = [trained] + ([_run_group(run, 1)] if s.random_init else [])
    neuron_controls, cka_result = _assemble(results, plan, s)
    record = _settings_record(s, plan, source, run.batch_size, time.perf_counter() - started, memory)
    return UniversalityReport(plan.names, record, list(source.task_names), trained.task_counts.numpy(),
                              neuron_controls, cka_result, trained.sae)


#: the groups' names in progress descriptions: trained models, random-init copies
GROUP_NAMES = ("trained", "random init")


@dataclass
class _Run:
    """What every group of a comparison shares: the plan, the settings, the
    replayable quizzes, the memory plan, the batch size, the progress callback."""

    plan: "_Plan"
    s: UniversalitySettings
    source: "_QuizSource"
    stream: _Stream
    memory: object
    batch_size: int
    progress: ProgressFn | None

    def kind(self, what: str, k: int, extra: str = "") -> str:
        """A pass's progress description, naming the group when there are two."""
        tags = ([GROUP_NAMES[k]] if self.s.random_init else []) + ([extra] if extra else [])
        return what + (f" ({', '.join(tags)})" if tags else "")


@dataclass
class _GroupResult:
    """Everything the report takes from one group, computed before its
    accumulators are dropped: neuron layers per control (with intervals), the
    CKA matrices (and the permutation test: trained group), the tokens per
    task (first sweep of pass 1) and the SAE comparison (trained group)."""

    layers: dict[str, list[NeuronLayer]]
    task_counts: torch.Tensor
    cka_linear: dict | None = None
    cka_debiased: dict | None = None
    cka_tests: dict | None = None
    sae: SAEComparison | None = None


def _run_group(run: _Run, k: int) -> _GroupResult:
    """Group ``k`` (0: the trained models; 1: random-init copies, made now) from
    start to results: pass 1 (in its own row-block folder, removed at the
    end), the analysis and the SAE families, pass 2, its results. The group
    and its accumulators are dropped on return."""
    s, plan = run.s, run.plan
    group = _make_group(plan, s, len(run.source.task_names), k)
    group.neurons.tile_rows = run.memory.tile_rows
    row_blocks = None
    if run.memory.block_layers is not None:
        from culture.universality.spill import RowBlocks

        row_blocks = RowBlocks.make(len(plan.layers), run.memory.block_layers)
    try:
        counts = _pass1(run, group, k, row_blocks)
        group.analyse(s.threshold, s.seed, run.source.task_names)
        # the rotation draws re-analyse the moments now, before pass 2's sums exist
        draws = rotation_draw_shares(group.neurons, group.analyses, len(plan.layers), s.rotation_draws, group.seed)
        sae_result = example_store = None
        if k == 0 and plan.entries:
            sae_result = _sae_comparison(group, plan.entries, s.threshold, plan.controls[0], run.source.task_names)
            if sae_result.families:
                example_store = _ExampleStore(sae_result, EXAMPLE_QUIZZES, plan.pos, EXAMPLE_FAMILIES)
        # pass 2: per-block sums (intervals) and the residualised CKA
        group.start_pass2(s.n_blocks)
        _stream(run, group, run.kind("pass 2: intervals, CKA", k), _Pass2(example_store))
        result = _group_result(run, group, k, counts, draws)
        if sae_result is not None:
            _sae_intervals(group, sae_result, s, example_store)
            result.sae = sae_result
        return result
    finally:
        if row_blocks is not None:
            row_blocks.close()
        release_buffers()


def _pass1(run: _Run, group: "_Group", k: int, row_blocks) -> torch.Tensor:
    """Pass 1 of one group (once per row block when ``row_blocks`` is given);
    the tokens per task, counted in its first sweep."""
    task_counts = None
    sweeps = 1 if row_blocks is None else len(row_blocks.blocks)
    group.neurons.use_row_blocks(row_blocks, run.memory.groups_on_disk)
    for sweep in range(sweeps):
        group.neurons.begin_sweep(sweep)
        kind = run.kind("pass 1: moments", k, f"rows {sweep + 1}/{sweeps}" if sweeps > 1 else "")
        counts = _stream(run, group, kind, _Pass1(len(run.source.task_names)))
        task_counts = counts if task_counts is None else task_counts
        group.neurons.end_sweep()
        release_buffers()
    return task_counts


def _group_result(run: _Run, g: "_Group", k: int, task_counts, draws) -> _GroupResult:
    """One group's neuron layers under every control, with their intervals
    (bootstrap seed ``seed + 17 k``, widened by the rotation ``draws`` of each
    control; the trained group's with the tokens per task), and its CKA matrices."""
    s, plan = run.s, run.plan
    for c in plan.controls:
        g.block_sums[c].intervals(s.resamples, s.confidence, s.seed + 17 * k)
        neuron_intervals(g.block_sums[c], g.analyses[c], draws[c], s.confidence)
    counts = task_counts if k == 0 else None
    layers = {c: g.neuron_layers(c, s.threshold, plan.layers, counts) for c in plan.controls}
    result = _GroupResult(layers, task_counts)
    if s.cka:
        first = plan.controls[0]
        result.cka_linear = g.cka_linear
        result.cka_debiased = {first: g.cka_moments[first].matrices(True)}
        result.cka_tests = g.cka_moments[first].p_values() if k == 0 else None
    return result


def _assemble(results: list[_GroupResult], plan: "_Plan", s: UniversalitySettings):
    """Neuron layers under every control (the random models' layers beside
    the trained ones) and the CKA result."""
    trained = results[0]
    rand = results[1] if len(results) > 1 else None
    neuron_controls = {}
    for c in plan.controls:
        layers_c = trained.layers[c]
        if rand is not None:
            for nl, rl in zip(layers_c, rand.layers[c]):
                nl.random = rl
        neuron_controls[c] = layers_c
    cka_result = None
    if s.cka:
        cka_result = CKAResult(
            plan.cka_labels, plan.cka_hooks, linear=trained.cka_linear, debiased=trained.cka_debiased,
            random_linear=rand.cka_linear if rand is not None else None,
            random_debiased=rand.cka_debiased if rand is not None else None,
            tests=trained.cka_tests, primary=plan.controls[0], permutations=s.cka_permutations)
    return neuron_controls, cka_result


# -------------------------------------------------------------- the steps


@dataclass
class _Plan:
    """What a comparison runs: models, names, device, positions, layers, hooks, SAEs."""

    runners: list
    names: list[str]
    device: torch.device
    pos: torch.Tensor
    controls: tuple[str, ...]
    layers: list[int]
    all_layers: bool
    cka_hooks: list[list[str]] | None
    cka_labels: list[list[str]] | None
    entries: list[SAEEntry]


def _prepare(models, s: UniversalitySettings, names, device, saes, ceiling_sae) -> _Plan:
    """Inputs checked: device, distinct names, runners, the layers every model
    has, the CKA hooks, the SAE entries."""
    pos = position_index(s.positions)
    if device is None:
        param = next(iter(models[0].parameters()), None) if hasattr(models[0], "parameters") else None
        device = param.device if param is not None else getattr(models[0], "device", torch.device("cpu"))
    device = torch.device(device)
    names = _model_names(models, names)
    runners = [m if isinstance(m, ModelRunner) else ModelRunner(m, device) for m in models]
    n_layers = [r.n_layers for r in runners]
    chosen = resolve_layers(n_layers, s.layers)
    all_layers = s.layers is None
    cka_hooks = cka_labels = None
    if s.cka:
        made = [_cka_hooks(n, chosen, all_layers) for n in n_layers]
        cka_hooks = [h for h, _ in made]
        cka_labels = [lab for _, lab in made]
    entries = _sae_entries(saes, ceiling_sae, runners, names, device)
    return _Plan(runners, names, device, pos, s.primary_controls(), chosen, all_layers, cka_hooks, cka_labels,
                 entries)


def _model_names(models, names) -> list[str]:
    if names is None:
        names = [str(getattr(m, "model_id", None) if getattr(m, "model_id", None) is not None else k)
                 for k, m in enumerate(models)]
    names = [str(n) for n in names]
    if len(names) != len(models):
        raise UniversalityError(f"{len(names)} names for {len(models)} models")
    if len(set(names)) != len(names):
        raise UniversalityError(f"model names must be distinct, got {names}")
    return names


@dataclass
class _QuizSource:
    """The quizzes of a comparison: ``chunks()`` yields (quizzes, clean, task index) chunks."""

    chunks: Callable
    n_quizzes: int
    task_names: list[str]
    description: str


def _quiz_source(s: UniversalitySettings, quizzes, clean, task_labels, pos) -> _QuizSource:
    """The given quizzes (checked, with their task labels), else world quizzes
    of ``s.tasks``; at least :data:`MIN_QUIZZES` of them."""
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
            for k in range(0, n_quizzes, 256):
                yield quizzes[k:k + 256], clean[k:k + 256], local[k:k + 256]
        description = "given quizzes"
    else:
        try:
            task_names = list(dict.fromkeys(resolve_tasks(s.tasks)))
        except CultureError as exc:
            raise UniversalityError(str(exc)) from None
        lookup = torch.full((len(TASKS),), -1, dtype=torch.long)
        for k, t in enumerate(task_names):
            lookup[TASKS.index(t)] = k
        n_quizzes = math.ceil(s.tokens / len(pos))

        def chunks():
            for q, c, t in world_quiz_stream(n_quizzes, task_names, seed=s.seed, noise=s.noise, with_clean=True):
                yield q, c, lookup[t]
        description = "world quizzes"
    check_quiz_count(n_quizzes, len(pos), UniversalityError)
    return _QuizSource(chunks, n_quizzes, task_names, description)


def _memory_plan(plan: _Plan, s: UniversalitySettings, source: _QuizSource):
    """The comparison's memory plan, refused (one line, before any work) when
    it is over ``s.max_memory`` or the memory available."""
    memory = settings_memory_plan(plan.runners, s, source.n_quizzes, saes=[e.sae for e in plan.entries] or None)
    check_memory(memory)
    return memory


def _make_group(plan: _Plan, s: UniversalitySettings, n_tasks: int, k: int) -> _Group:
    """Group ``k``: the trained models (0), or random-init models of their
    shapes (1, ``s.random_init``; made here)."""
    common = dict(layers=plan.layers, controls=plan.controls, baseline=s.baseline, cka_hooks=plan.cka_hooks,
                  n_tasks=n_tasks, n_positions=len(plan.pos), n_blocks=s.n_blocks,
                  compute_dtype=_dtype(s.precision), permutations=s.cka_permutations, cka_labels=plan.cka_labels,
                  margin=s.bootstrap_margin)
    if k == 0:
        return _Group(plan.runners, entries=plan.entries, seed=s.seed, with_tasks=True, heldout=True, **common)
    base = [r.random_like(baseline_seed(s.seed, i)) for i, r in enumerate(plan.runners)]
    return _Group(base, entries=None, seed=s.seed + 1, with_tasks=False, heldout=False,
                  **{**common, "permutations": 0})


def _dtype(precision: str) -> torch.dtype:
    return getattr(torch, precision)


def _batch_size(given: int | None, plan: _Plan) -> int:
    """Quizzes per forward pass: ``given``, else as many as keep one batch's
    activations under :data:`BATCH_FLOATS` (the trained group's: the random
    models have the same shapes and read a subset of its hooks, no SAE)."""
    if given is not None:
        return given
    _, hooks = _group_hooks(len(plan.runners), plan.layers, plan.cka_hooks, plan.entries)
    return quizzes_per_batch(len(plan.pos), _hooks_width(plan.runners, hooks, plan.entries))


def quizzes_per_batch(positions: int, width: int) -> int:
    """Quizzes per forward batch when none is given: as many as keep one
    batch's activations (``width`` numbers per token, every model of a group)
    under :data:`BATCH_FLOATS`, from 1 to 256."""
    return int(max(1, min(256, BATCH_FLOATS // (positions * max(width, 1)))))


class _Pass1:
    """Pass 1 on one batch: the group's moments; counts tokens per task."""

    def __init__(self, n_tasks: int):
        self.task_counts = torch.zeros(n_tasks, dtype=torch.long)

    def __call__(self, group, b, q, tokens, pos, labels, t, idx, roller):
        self.task_counts.add_(torch.bincount(t.cpu(), minlength=len(self.task_counts)) * len(pos))
        group.pass1(tokens, pos, labels, t, idx, roller, b)

    def result(self):
        return self.task_counts


class _Pass2:
    """Pass 2 on one batch: block sums, CKA, family examples (given an example store: trained group)."""

    def __init__(self, example_store):
        self.example_store = example_store

    def __call__(self, group, b, q, tokens, pos, labels, t, idx, roller):
        slots = self.example_store.collector(q) if self.example_store is not None else None
        group.pass2(tokens, pos, labels, idx, roller, b, slots)

    def result(self):
        return None


def _stream(run: _Run, group: _Group, kind: str, step):
    """One pass of one group over the quizzes: ``step`` on every batch (a fresh
    shuffled-quiz roller, so both passes pair the same quizzes); ``step.result()``."""
    from culture.hooked import to_hooked_tokens

    device = run.plan.device
    pos = run.plan.pos.to(device)
    total = run.stream.n_quizzes * len(pos)
    done = 0
    roller = QuizRoller()
    if run.progress:
        run.progress(kind, 0, total)
    for b, (q, c, t, idx) in enumerate(run.stream.batches(run.batch_size)):
        tokens = to_hooked_tokens(q).to(device)
        labels = TokenLabels(q.to(device), tokens, pos, c.to(device))
        step(group, b, q, tokens, pos, labels, t.to(device), idx.to(device), roller)
        done += q.shape[0] * len(pos)
        if run.progress:
            run.progress(kind, done, total)
    return step.result()


def _sae_intervals(trained: _Group, sae_result: SAEComparison, s: UniversalitySettings, example_store) -> None:
    """The SAE pairs' and families' intervals, and the family examples."""
    trained.feature_sums.intervals(s.resamples, s.confidence, s.seed + 5)
    feature_intervals(trained.feature_sums, sae_result.pairs, s.threshold, s.confidence)
    counts, tokens_per = trained.features.fire_rates()
    family_rates(sae_result.families, counts, tokens_per, sae_result.categories, s.resamples, s.confidence,
                 s.seed + 7)
    if example_store is not None:
        sae_result.examples = example_store.result()


def _settings_record(s: UniversalitySettings, plan: _Plan, source: _QuizSource, batch_size: int,
                     elapsed: float, memory) -> dict:
    """Every setting of the comparison, as the report's JSON records it."""
    given = source.description == "given quizzes"
    controls, entries, n = plan.controls, plan.entries, len(plan.runners)
    return {
        "tokens": int(source.n_quizzes * len(plan.pos)),
        "quizzes": int(source.n_quizzes),
        "quiz_source": source.description,
        "positions": s.positions,
        "positions_per_quiz": len(plan.pos),
        "controls": list(controls),
        "control_descriptions": {c: CONTROL_DESCRIPTIONS[c] for c in controls},
        "primary_control": controls[0],
        "tasks": list(source.task_names),
        "noise": None if given else s.noise,
        "structures": None if given else "uniform over the 4 deterministic structures",
        "seed": int(s.seed),
        "threshold": float(s.threshold),
        "criterion": "universal = mean over other models of max-corr minus mean baseline max-corr > threshold "
                     "(Gurnee et al. 2024)",
        "layers": plan.layers,
        "neuron_hook": NEURON_HOOK,
        "neuron_baseline": s.baseline,
        "heldout": "partners chosen on even-index quizzes, measured on odd-index quizzes",
        "bootstrap": {"blocks": s.n_blocks, "resamples": s.resamples, "confidence": s.confidence,
                      "unit": "blocks of quizzes (quiz k in block k mod blocks)", "intervals": INTERVAL_METHOD,
                      "rotation_draws": s.rotation_draws if s.baseline == "rotation" else 0},
        "cka": bool(s.cka),
        "cka_hooks": [EMBED_HOOK, RESID_HOOK] if s.cka else None,
        "cka_permutations": s.cka_permutations if s.cka else None,
        "random_init": bool(s.random_init),
        "random_seeds": [baseline_seed(s.seed, k) for k in range(n)] if s.random_init else None,
        "random_init_kind": "MyGPT(cfg) reference initialisation, one random model per model, same shape"
        if s.random_init else None,
        "saes": [{"label": e.label, "model": plan.names[e.model], "hook": e.hook, "d_sae": e.d_sae} for e in entries]
        if entries else None,
        "sae_floor": "shuffled quizzes: the other SAE's features on the previous quiz, same positions"
        if entries else None,
        "batch_size": int(batch_size),
        "device": str(plan.device),
        "accumulator_dtype": "float64",
        "compute_dtype": s.precision,
        "accumulator_bytes": memory.buffers,  # what the memory plan adds to the process (one source: the plan)
        "memory_plan": memory.to_dict(),
        "seconds": round(elapsed, 3),
        "model_shapes": [r.shape() for r in plan.runners],
    }


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
