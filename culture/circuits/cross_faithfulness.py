"""Cross-model faithfulness: how much of model k's behaviour the circuit of
model j, carried over to k through the head matching, explains.

A circuit is a set of edges of :class:`culture.circuits.discovery.Graph`
(its top edges by edge attribution score). Carried to model k, each head
``l.h`` of j becomes its matched head ``l.perm[l, h]`` of k (the embedding,
the MLPs and the readout map to themselves; graphs of equal shape). Its
faithfulness *in k* is the recovery of k's logit difference when every edge
outside the mapped circuit is patched from the corrupted run
(:func:`culture.circuits.discovery.circuit_logit_diffs`, the same patching
as ``culture-interp circuit``): 1 = k's clean run, 0 = k's corrupted run.
Model j = k with the identity matching gives k's own circuit's faithfulness,
exactly.

**Intervals** carry both sources of chance: each bootstrap replicate
resamples the pairs (the recovery's numerator and denominator jointly) *and*
uses the matching re-done on that replicate's resampled role data
(:meth:`culture.circuits.head_roles.HeadRoleData.vectors`); the circuits of
the distinct matchings are run once each. A percentile interval that misses
its estimate is widened to contain it (said in ``widened``).

**Null** (shuffled matching): the circuit carried over by random
permutations of the heads within each layer.
"""

from __future__ import annotations

import numpy as np

from culture.circuits.discovery import Graph, circuit_logit_diffs
from culture.circuits.metric import Baseline, CircuitError, QuizPairs

__all__ = ["map_circuit", "circuit_heads", "interval", "replicates", "evaluate_mapped"]


def _map_node(name: str, perm: np.ndarray) -> str:
    if not name.startswith("head "):
        return name
    layer, head = (int(x) for x in name[5:].split("."))
    return f"head {layer}.{int(perm[layer, head])}"


def map_circuit(edges, graph: Graph, perm: np.ndarray) -> list[int]:
    """Edge indices of ``graph`` of the circuit ``edges`` with every head
    renamed through ``perm`` (L, H) (head l.h -> head l.perm[l, h])."""
    perm = np.asarray(perm)
    if perm.shape != (graph.n_layers, graph.n_heads):
        raise CircuitError(f"perm must be ({graph.n_layers}, {graph.n_heads}), got {perm.shape}")
    up = {n: i for i, n in enumerate(graph.upstream)}
    down = {n: i for i, n in enumerate(graph.downstream)}
    index = {e: k for k, e in enumerate(graph.edges)}
    out = []
    for e in edges:
        u, v = graph.edges[e]
        out.append(index[(up[_map_node(graph.upstream[u], perm)], down[_map_node(graph.downstream[v], perm)])])
    return sorted(out)


def circuit_heads(edges, graph: Graph) -> list[str]:
    """The heads an edge set touches (upstream or downstream), in L.H order."""
    names = {n for e in edges for n in graph.edge_name(e) if n.startswith("head ")}
    return sorted((n[5:] for n in names), key=lambda s: tuple(int(x) for x in s.split(".")))


def interval(value: float, stats, confidence: float = 0.95) -> dict:
    """{"value", "ci95", "widened"}: percentile interval of bootstrap ``stats``,
    widened to contain ``value`` when it misses it (said in ``widened``)."""
    stats = np.asarray(stats, float)
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return {"value": value, "ci95": [value, value], "widened": False}
    alpha = (1 - confidence) / 2
    lo, hi = (float(x) for x in np.quantile(stats, [alpha, 1 - alpha]))
    return {"value": value, "ci95": [min(lo, value), max(hi, value)], "widened": not lo <= value <= hi}


def replicates(ld: np.ndarray, baseline: Baseline, draws: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Faithfulness (recovery) per bootstrap replicate r: pair weights
    ``draws[r]`` (R, n), row ``which[r]`` of ``ld`` (M, n) (the circuit of
    that replicate's matching)."""
    num = np.einsum("rn,rn->r", draws, ld[which] - baseline.corrupted_ld)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / (draws @ baseline.gap)


def evaluate_mapped(hooked, pairs: QuizPairs, circuits: list[list[int]], *, batch_size: int = 25,
                    progress=None) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Per-pair logit differences (distinct circuits, n) of ``hooked`` with
    each distinct circuit of ``circuits``, and the distinct circuits (the
    row of circuit i is ``distinct.index(tuple(sorted(circuits[i])))``)."""
    distinct = list(dict.fromkeys(tuple(sorted(c)) for c in circuits))
    graph = Graph(hooked.cfg.n_layers, hooked.cfg.n_heads)
    ld = circuit_logit_diffs(hooked, pairs, [list(c) for c in distinct], graph=graph, batch_size=batch_size,
                             progress=progress)
    return ld, distinct
