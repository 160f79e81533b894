"""Circuit discovery: edge attribution patching (Syed et al. 2023) and a
faithfulness check by edge patching (the ACDC semantics of Conmy et al. 2023).

Graph: upstream nodes write into the residual stream -- ``embed`` (token +
position embeddings), every head ``head L.H`` (its ``hook_result``) and every
MLP ``mlp L``; downstream nodes read it -- every head (its query, key and value
inputs together, ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``),
every MLP (``hook_mlp_in``) and the ``readout`` (the residual after the last
block). An edge u -> v exists when u is computed before v reads the stream.

**Edge scores**: the first-order estimate of what the logit difference loses
when the edge carries the corrupted value instead of the clean one,
``(out_u(clean) - out_u(corrupted)) . dLD/d in_v``, summed over positions and
averaged over pairs, divided by the mean gap LD_clean - LD_corrupted (so a
score reads in recovery units). Edges are ranked by |score|. The gradient is
taken at the clean run (EAP, Syed et al. 2023; ``ig_steps=0``: one forward on
each side, one backward), or -- the default -- averaged over token embeddings
interpolated between the corrupted and the clean run (EAP-IG, Hanna et al.
2024, ``ig_steps`` backward passes): on the zoo, plain gradients miss most of
the effect of the first layer, whose heads act through saturated attention
(activation patching of head 0.0 recovers far more than its attribution
estimate), and a circuit without the edges that carry the clean tokens in
recovers nothing.

**Faithfulness** of a circuit (a set of edges): the model runs on the clean
quiz, and every edge *outside* the circuit is patched from the corrupted run:
each downstream node reads ``in_v = residual - sum over the non-circuit edges
u -> v of (out_u(this run) - out_u(corrupted run))``, so a node sees its
circuit inputs as computed in this run and the rest as in the corrupted run.
The rest of the model is therefore **patched from the corrupted run, not
mean-ablated**. Faithfulness = the recovery of the logit difference
(:func:`culture.circuits.metric.recovery`): the full graph gives the clean run
(1), the empty circuit the corrupted run (0). Constant terms (attention output
biases, the unembedding bias) are not nodes: they are the same in both runs.

:func:`discover_circuit` scores the edges, evaluates the top-k circuits for a
grid of sizes k (and random circuits of the same sizes as a baseline), then
bisects between the last size below the threshold and the first above it for
the smallest size that reaches it. The curve need not be monotone: "smallest"
is the smallest size found that way, checked, not a proof that no smaller
circuit of top edges reaches the threshold.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from culture.circuits.metric import Baseline, CircuitError, QuizPairs, recovery, recovery_interval, require_gap
from culture.circuits.runs import (
    BaselineBuilder,
    Progress,
    check_batch_size,
    check_hook_names,
    frozen_parameters,
    n_batches,
    pair_batches,
)
from culture.hooks import act_name

__all__ = ["Graph", "CircuitReport", "edge_scores", "circuit_logit_diffs", "discover_circuit", "size_grid",
           "split_hooks"]

DEFAULT_BATCH_SIZE = 25
#: the per-head query / key / value inputs of a block (``blocks.L.hook_q_input``...)
QKV_INPUTS = ("q_input", "k_input", "v_input")


@dataclass
class Graph:
    """Nodes and edges of a model's computational graph (see the module docstring)."""

    n_layers: int
    n_heads: int
    upstream: list[str] = field(init=False)
    downstream: list[str] = field(init=False)
    edges: list[tuple[int, int]] = field(init=False)  # (upstream index, downstream index)

    def __post_init__(self):
        L, H = self.n_layers, self.n_heads
        self.upstream = ["embed"]
        self.downstream = []
        for layer in range(L):
            self.upstream += [f"head {layer}.{h}" for h in range(H)] + [f"mlp {layer}"]
            self.downstream += [f"head {layer}.{h}" for h in range(H)] + [f"mlp {layer}"]
        self.downstream.append("readout")
        # upstream index u feeds downstream index v when u comes before v in the forward
        order_up = {name: k for k, name in enumerate(self.upstream)}
        self.edges = []
        for v, dst in enumerate(self.downstream):
            for u, src in enumerate(self.upstream):
                if self._before(src, dst):
                    self.edges.append((u, v))
        self._order_up = order_up

    @staticmethod
    def _rank(name: str, reading: bool) -> float:
        """Forward order: heads of layer L read at 2L and write at 2L + 0.5,
        MLP L reads at 2L + 1 and writes at 2L + 1.5, readout reads last."""
        if name == "embed":
            return -1.0
        if name == "readout":
            return 1e9
        kind, rest = name.split(" ")
        layer = int(rest.split(".")[0])
        base = 2 * layer + (1 if kind == "mlp" else 0)
        return base if reading else base + 0.5

    def _before(self, src: str, dst: str) -> bool:
        return self._rank(src, reading=False) < self._rank(dst, reading=True)

    @property
    def nodes(self) -> list[str]:
        return list(dict.fromkeys(self.upstream + self.downstream))

    def edge_name(self, e: int) -> tuple[str, str]:
        u, v = self.edges[e]
        return self.upstream[u], self.downstream[v]

    def keep_matrix(self, chosen) -> torch.Tensor:
        """(upstream, downstream) float: 1 for edges *outside* ``chosen`` (edge
        indices), i.e. the ones patched from the corrupted run."""
        m = torch.zeros(len(self.upstream), len(self.downstream))
        for e, (u, v) in enumerate(self.edges):
            m[u, v] = 1.0
        for e in chosen:
            u, v = self.edges[e]
            m[u, v] = 0.0
        return m


@contextmanager
def split_hooks(hooked):
    """Turn on the TransformerLens hooks the graph needs (per-head results,
    per-head q/k/v inputs, MLP inputs); restored afterwards."""
    cfg = hooked.cfg
    old = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    try:
        hooked.set_use_attn_result(True)
        hooked.set_use_split_qkv_input(True)
        hooked.set_use_hook_mlp_in(True)
        yield hooked
    finally:
        hooked.set_use_attn_result(old[0])
        hooked.set_use_split_qkv_input(old[1])
        hooked.set_use_hook_mlp_in(old[2])


def _output_hooks(n_layers: int) -> list[str]:
    return [act_name("embed")] + [act_name(k, L) for L in range(n_layers) for k in ("result", "mlp_out")]


def _input_hooks(n_layers: int) -> list[str]:
    """The hooks where downstream nodes read: per-head q / k / v inputs, MLP inputs, the readout."""
    return [act_name(k, L) for L in range(n_layers) for k in (*QKV_INPUTS, "mlp_in")] + \
        [act_name("resid_post", n_layers - 1)]


def graph_hooks(n_layers: int) -> list[str]:
    """Every hook the graph's edges need (written to and read from)."""
    return _output_hooks(n_layers) + _input_hooks(n_layers)


def _stack_outputs(acts: dict[str, torch.Tensor], n_layers: int) -> torch.Tensor:
    """(b, pos, upstream, d) node outputs in Graph.upstream order."""
    parts = [acts[act_name("embed")].unsqueeze(2)]
    for L in range(n_layers):
        parts += [acts[act_name("result", L)], acts[act_name("mlp_out", L)].unsqueeze(2)]
    return torch.cat(parts, 2)


def _outputs(hooked, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, node outputs (b, pos, upstream, d)) of one no-grad run."""
    names = _output_hooks(hooked.cfg.n_layers)
    with torch.inference_mode():
        logits, cache = hooked.run_with_cache(tokens, names_filter=lambda n: n in names)
    return logits, _stack_outputs({n: cache[n] for n in names}, hooked.cfg.n_layers)


def _input_grads(hooked, tokens, metric, embed=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, node outputs, d metric / d node input (b, pos, downstream, d))
    of one forward + backward with grad (token embeddings replaced by ``embed``)."""
    from culture.circuits.attribution import activations_and_gradients

    n = hooked.cfg.n_layers
    ins = _input_hooks(n)
    outs = _output_hooks(n)
    acts, grads, logits = activations_and_gradients(hooked, tokens, ins + outs, metric, embed=embed)
    parts = []
    for L in range(n):
        g = sum(grads[act_name(k, L)] for k in QKV_INPUTS)
        parts += [g, grads[act_name("mlp_in", L)].unsqueeze(2)]
    parts.append(grads[act_name("resid_post", n - 1)].unsqueeze(2))
    return logits, _stack_outputs(acts, n), torch.cat(parts, 2)


def edge_scores(hooked, pairs: QuizPairs, *, ig_steps: int = 5, batch_size: int = DEFAULT_BATCH_SIZE,
                progress: Progress | None = None) -> tuple[np.ndarray, Baseline, Graph]:
    """Edge attribution scores (E,) in recovery units (see the module
    docstring), the unpatched runs' Baseline, and the Graph. ``ig_steps``
    0: the gradient at the clean run (EAP, Syed et al. 2023); m >= 1: its
    mean over m token embeddings interpolated between the corrupted and the
    clean ones, at the midpoints (k - 1/2) / m (EAP-IG, Hanna et al. 2024),
    which follows the metric along the way instead of at one end."""
    if not (isinstance(ig_steps, int) and ig_steps >= 0):
        raise CircuitError(f"ig_steps must be an integer >= 0, got {ig_steps!r}")
    graph = Graph(hooked.cfg.n_layers, hooked.cfg.n_heads)
    hooked.eval()
    total = torch.zeros(len(graph.upstream), len(graph.downstream), dtype=torch.float64)
    base = BaselineBuilder()
    done = 0
    alphas = [(k + 0.5) / ig_steps for k in range(ig_steps)] if ig_steps else [None]
    with split_hooks(hooked), frozen_parameters(hooked):
        for batch in pair_batches(hooked, pairs, "noise", batch_size):
            corr_logits, corr_out = _outputs(hooked, batch.corrupted_tokens)
            clean_logits, clean_out = _outputs(hooked, batch.clean_tokens)
            base.add("clean", batch, clean_logits)
            base.add("corrupted", batch, corr_logits)
            grad_in = None
            for a in alphas:
                embed = None if a is None else corr_out[:, :, 0] + a * (clean_out[:, :, 0] - corr_out[:, :, 0])
                _, _, g = _input_grads(hooked, batch.clean_tokens, lambda lg: batch.readouts(lg)["ld"], embed)
                grad_in = g if grad_in is None else grad_in + g
            with torch.no_grad():
                total += torch.einsum("bpud,bpvd->uv", (clean_out - corr_out).double(),
                                      grad_in.double() / len(alphas))
            done += 1
            if progress is not None:
                progress("edge scores", done, n_batches(pairs, batch_size))
    baseline = base.build()
    gap = baseline.mean_gap
    if gap == 0:
        raise CircuitError("the clean and corrupted runs have the same mean logit difference: no circuit to find")
    scores = np.array([float(total[u, v]) for u, v in graph.edges]) / len(pairs) / gap
    return scores, baseline, graph


def _circuit_logits(hooked, tokens, corr_out: torch.Tensor, keep: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Logits of the clean run with the edges marked in ``keep`` (upstream x
    downstream, 1 = patched from the corrupted run) patched."""
    n, H = graph.n_layers, graph.n_heads
    keep = keep.to(corr_out)
    outs: list[torch.Tensor] = []  # this run's node outputs so far, Graph.upstream order
    state: dict = {}

    def correction(n_up: int, cols: slice) -> torch.Tensor:
        """sum over patched edges u -> v (v in cols) of out_u(run) - out_u(corrupted): (b, pos, |cols|, d)."""
        diff = torch.stack(outs, 2) - corr_out[:, :, :n_up]
        return torch.einsum("bpud,uv->bpvd", diff, keep[:n_up, cols])

    def on_embed(act, hook):
        outs.append(act)

    def on_result(act, hook):
        outs.extend(act.unbind(2))

    def on_mlp_out(act, hook):
        outs.append(act)

    def on_qkv(act, hook):
        layer = int(hook.name.split(".")[1])
        if state.get("qkv_layer") != layer:  # one correction serves q, k and v of the layer
            first = layer * (H + 1)
            state["qkv_layer"], state["qkv"] = layer, correction(len(outs), slice(first, first + H))
        return act - state["qkv"]

    def on_mlp_in(act, hook):
        layer = int(hook.name.split(".")[1])
        v = layer * (H + 1) + H
        return act - correction(len(outs), slice(v, v + 1))[:, :, 0]

    def on_readout(act, hook):
        return act - correction(len(outs), slice(len(graph.downstream) - 1, len(graph.downstream)))[:, :, 0]

    hooks = [(act_name("embed"), on_embed)]
    for L in range(n):
        hooks += [(act_name(k, L), on_qkv) for k in QKV_INPUTS]
        hooks += [(act_name("result", L), on_result), (act_name("mlp_in", L), on_mlp_in),
                  (act_name("mlp_out", L), on_mlp_out)]
    hooks.append((act_name("resid_post", n - 1), on_readout))
    with torch.inference_mode():
        return hooked.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")


def circuit_logit_diffs(hooked, pairs: QuizPairs, circuits: list, *, graph: Graph | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> np.ndarray:
    """Per-pair logit difference (len(circuits), n) of the clean run with
    every edge outside each circuit (a collection of edge indices) patched
    from the corrupted run."""
    graph = graph or Graph(hooked.cfg.n_layers, hooked.cfg.n_heads)
    hooked.eval()
    keeps = [graph.keep_matrix(c) for c in circuits]
    parts: list[list[np.ndarray]] = [[] for _ in circuits]
    total, done = n_batches(pairs, batch_size) * max(len(circuits), 1), 0
    with split_hooks(hooked):
        for batch in pair_batches(hooked, pairs, "noise", batch_size):
            _, corr_out = _outputs(hooked, batch.corrupted_tokens)
            for k, keep in enumerate(keeps):
                logits = _circuit_logits(hooked, batch.clean_tokens, corr_out, keep, graph)
                parts[k].append(batch.readouts(logits)["ld"].double().cpu().numpy())
                done += 1
                if progress is not None:
                    progress("circuits", done, total)
    return np.stack([np.concatenate(p) for p in parts]) if circuits else np.zeros((0, len(pairs)))


def size_grid(n_edges: int, points: int = 12) -> list[int]:
    """About ``points`` circuit sizes from 1 to n_edges, geometrically spaced."""
    if n_edges < 1:
        raise CircuitError("the graph has no edges")
    grid = np.unique(np.round(np.geomspace(1, n_edges, max(points, 2))).astype(int))
    return [int(k) for k in grid]


@dataclass
class CircuitReport:
    """Edge scores, the faithfulness curve and the chosen circuit."""

    graph: Graph
    scores: np.ndarray
    baseline: Baseline
    threshold: float
    curve: list[dict]
    random_curve: list[dict]
    chosen_size: int | None
    settings: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.graph.n_layers

    @property
    def n_heads(self) -> int:
        return self.graph.n_heads

    @property
    def nodes(self) -> list[str]:
        return self.graph.nodes

    @property
    def edges(self) -> list[tuple[int, int]]:
        return self.graph.edges

    def order(self) -> list[int]:
        return [int(i) for i in np.argsort(-np.abs(self.scores), kind="stable")]

    def edge_rows(self, k: int | None = None) -> list[dict]:
        rows = []
        for rank, e in enumerate(self.order()[:k]):
            src, dst = self.graph.edge_name(e)
            rows.append({"rank": rank + 1, "src": src, "dst": dst, "score": float(self.scores[e])})
        return rows

    def chosen_edges(self) -> list[dict]:
        """The edges of the chosen circuit (the smallest reaching the
        threshold; the largest evaluated size when none does)."""
        size = self.chosen_size if self.chosen_size is not None else max(p["size"] for p in self.curve)
        return self.edge_rows(size)

    def chosen_faithfulness(self) -> dict:
        size = self.chosen_size if self.chosen_size is not None else max(p["size"] for p in self.curve)
        return next(p["faithfulness"] for p in self.curve if p["size"] == size)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "baseline": self.baseline.to_dict(), "threshold": self.threshold,
                "n_edges": len(self.graph.edges), "chosen_size": self.chosen_size,
                "reached": self.chosen_size is not None,
                "chosen_faithfulness": self.chosen_faithfulness(), "curve": self.curve,
                "random_curve": self.random_curve, "chosen_edges": self.chosen_edges(),
                "edges": self.edge_rows()}


def _faithfulness(ld: np.ndarray, baseline: Baseline) -> list[dict]:
    v = recovery(ld, baseline)
    lo, hi = recovery_interval(ld, baseline)
    return [{"value": float(v[i]), "ci95": [float(lo[i]), float(hi[i])]} for i in range(len(v))]


def discover_circuit(hooked, pairs: QuizPairs, *, threshold: float = 0.8, sizes=None, random_circuits: int = 3,
                     random_sizes: int = 5, ig_steps: int = 5, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                     progress: Progress | None = None) -> CircuitReport:
    """Score the edges, evaluate the top-k circuits for ``sizes`` (default
    :func:`size_grid`), ``random_circuits`` random edge sets at ``random_sizes``
    of those sizes (spread over the grid), and bisect for the smallest size
    reaching ``threshold`` (see the module docstring)."""
    if not 0 < threshold <= 1:
        raise CircuitError(f"threshold must be in (0, 1], got {threshold}")
    if random_circuits < 0:
        raise CircuitError(f"random circuits must be >= 0, got {random_circuits}")
    if not (isinstance(ig_steps, int) and ig_steps >= 0):
        raise CircuitError(f"ig_steps must be an integer >= 0, got {ig_steps!r}")
    check_batch_size(batch_size)
    # preconditions that cost a forward pass or less, before the loops: sizes, hooks, the clean run
    # prefers the clean answer (else there is no circuit to find)
    graph = Graph(hooked.cfg.n_layers, hooked.cfg.n_heads)
    n_edges = len(graph.edges)
    grid = size_grid(n_edges) if sizes is None else sorted({int(s) for s in sizes})
    if not grid or grid[0] < 0 or grid[-1] > n_edges:
        raise CircuitError(f"circuit sizes must be in 0..{n_edges}, got {sizes}")
    check_hook_names(hooked, graph_hooks(hooked.cfg.n_layers))
    if progress is not None:
        progress("unpatched runs", 0, 1)
    from culture.circuits.activation import baseline_runs

    require_gap(baseline_runs(hooked, pairs, batch_size=batch_size), "no circuit to find")
    if progress is not None:
        progress("unpatched runs", 1, 1)
    scores, baseline, graph = edge_scores(hooked, pairs, ig_steps=ig_steps, batch_size=batch_size,
                                          progress=progress)
    order = [int(i) for i in np.argsort(-np.abs(scores), kind="stable")]
    rng = np.random.default_rng(seed)
    picks = [grid[int(i)] for i in np.unique(np.linspace(0, len(grid) - 1, min(random_sizes, len(grid))).round())]
    randoms = [(k, rng.choice(n_edges, size=k, replace=False).tolist()) for k in picks
               for _ in range(random_circuits)]
    circuits = [order[:k] for k in grid] + [c for _, c in randoms]
    ld = circuit_logit_diffs(hooked, pairs, circuits, graph=graph, batch_size=batch_size, progress=progress)
    faith = _faithfulness(ld[:len(grid)], baseline)
    curve = [{"size": k, "faithfulness": f} for k, f in zip(grid, faith)]
    random_curve = []
    if randoms:
        rld = ld[len(grid):].reshape(len(picks), random_circuits, -1).mean(1)
        random_curve = [{"size": k, "faithfulness": f} for k, f in zip(picks, _faithfulness(rld, baseline))]
    # bisection between the last grid size below the threshold and the first reaching it
    reached = [p["size"] for p in curve if p["faithfulness"]["value"] >= threshold]
    chosen = None
    if reached:
        hi = reached[0]
        below = [p["size"] for p in curve if p["size"] < hi]
        lo = below[-1] if below else 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            f = _faithfulness(circuit_logit_diffs(hooked, pairs, [order[:mid]], graph=graph,
                                                  batch_size=batch_size), baseline)[0]
            curve.append({"size": mid, "faithfulness": f})
            if f["value"] >= threshold:
                hi = mid
            else:
                lo = mid
            if progress is not None:
                progress("bisection", 1, 1)
        chosen = hi
        curve.sort(key=lambda p: p["size"])
    settings = {"n_pairs": len(pairs), "task": pairs.task, "vary": pairs.vary, "threshold": threshold,
                "random_circuits": random_circuits, "seed": seed, "ig_steps": ig_steps,
                "rest_of_model": "patched from the corrupted run (not mean-ablated)",
                "edge_score": "(out_u(clean) - out_u(corrupted)) . dLD/d in_v (at the clean run, or its mean over "
                              "ig_steps embeddings interpolated from the corrupted to the clean run), mean over pairs, "
                              "divided by the mean gap"}
    return CircuitReport(graph, scores, baseline, threshold, curve, random_curve, chosen, settings)
