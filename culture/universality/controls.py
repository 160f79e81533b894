"""Per-token labels of a universality comparison: the confound controls and
the categories features are counted in.

Two models can look alike only because both encode something trivially
shared by every model that reads the same quizzes: the position, the block
layout (structure) or the input token itself. A *control* removes one of
these before correlating: every unit's mean within each group of tokens is
subtracted (correlations *within* groups), so a unit that is a function of
the group alone carries nothing any more (it counts as dead).

* ``none`` - no control (Gurnee et al., 2024, correlate raw activations);
* ``position`` - one group per position of the 404;
* ``position_structure`` - one group per (position, structure): the same
  position holds a different grid (A, f(A), B, f(B)) in each structure;
* ``token`` - one group per input token (the colour or marker read there).

Categories (for firing rates of features): the *role* of the block a
position predicts (A, f(A), B, f(B)), and whether the predicted cell is a
*transform* cell (it differs from the paired grid: the rule changes it), a
*copied* cell (predicted, equal to the paired grid) or a *prompt* position
(not predicted), from :func:`culture.quiz.transform_mask`.
"""

from __future__ import annotations

import torch

from culture.quiz import BLOCK_LEN, MARKER_LABELS, MARKERS, STRUCTURES, VOCAB_SIZE, ar_mask, block_markers
from culture.quiz import structure_index, transform_mask
from culture.universality.stats import float64_sum
from culture.universality_settings import CONTROLS, UniversalityError

#: what each control removes, in words (tables, JSON)
CONTROL_DESCRIPTIONS = {
    "none": "raw activations",
    "position": "per-position means removed",
    "position_structure": "per-(position x structure) means removed",
    "token": "per-input-token means removed",
}
#: roles of the block a position predicts, in marker order A, f(A), B, f(B)
ROLES = tuple(MARKER_LABELS[m] for m in MARKERS)
#: transform classes of a position
CELL_CLASSES = ("transform", "copied", "prompt")
#: structure groups: the five structures, then "other"
N_STRUCTURE_GROUPS = len(STRUCTURES) + 1


def check_controls(controls) -> tuple[str, ...]:
    """Controls as a tuple of distinct names (the first is the primary one)."""
    if isinstance(controls, str):
        controls = (controls,)
    out = tuple(dict.fromkeys(str(c) for c in controls))
    if not out:
        raise UniversalityError("give at least one control")
    for c in out:
        if c not in CONTROLS:
            raise UniversalityError(f"unknown control {c!r} (choose from {', '.join(CONTROLS)})")
    return out


def n_groups(control: str, n_positions: int) -> int:
    """Number of token groups of a control (1 for ``none``)."""
    if control == "none":
        return 1
    if control == "position":
        return n_positions
    if control == "position_structure":
        return n_positions * N_STRUCTURE_GROUPS
    if control == "token":
        return VOCAB_SIZE
    raise UniversalityError(f"unknown control {control!r}")


class TokenLabels:
    """Labels of the tokens of one batch: (n quizzes, P positions) each."""

    def __init__(self, quizzes: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor, clean: torch.Tensor | None):
        n, p = quizzes.shape[0], pos.shape[0]
        dev = tokens.device
        pos = pos.to(dev)
        self.position = torch.arange(p, device=dev).expand(n, p)
        struct = structure_index(quizzes).to(dev)
        self.structure = torch.where(struct < 0, torch.full_like(struct, N_STRUCTURE_GROUPS - 1), struct)
        self.token = tokens[:, pos]
        # role of the block each position predicts (hooked position p predicts quiz token p)
        markers = block_markers(quizzes).to(dev)  # (n, 4)
        block = (pos // BLOCK_LEN).expand(n, p)
        marker = markers.gather(1, block)
        role = torch.zeros_like(marker)
        for k, m in enumerate(MARKERS):
            role[marker == m] = k
        self.role = role
        changed = transform_mask(quizzes, paired=clean).to(dev)[:, pos]
        predicted = ar_mask(quizzes).to(dev)[:, pos]
        self.cell_class = torch.where(changed, 0, torch.where(predicted, 1, 2))

    def groups(self, control: str) -> torch.Tensor | None:
        """(n, P) group ids of ``control`` (None for ``none``)."""
        if control == "none":
            return None
        if control == "position":
            return self.position
        if control == "position_structure":
            return self.structure[:, None] * self.position.shape[1] + self.position
        if control == "token":
            return self.token
        raise UniversalityError(f"unknown control {control!r}")


def add_to_groups(sums, acts: torch.Tensor, labels: "TokenLabels", control: str, rows=None,
                  subset: bool = False) -> None:
    """Add activations (n, P, W) of a batch (its quizzes ``rows`` only, when
    given; ``subset``: ``acts`` holds those quizzes already) to the
    :class:`~culture.universality.stats.GroupSums` of ``control`` ("none":
    one group). Per position the sum over quizzes is a plain reduction (no
    scatter)."""
    a = acts if rows is None or subset else acts[rows]
    n, p = a.shape[:2]
    if control == "position":
        sums.add(float64_sum(a), torch.full((p,), float(n), dtype=torch.float64, device=a.device))
        return
    if control == "position_structure":  # per structure present, a plain reduction over its quizzes
        struct = labels.structure if rows is None else labels.structure[rows]
        for k in struct.unique().tolist():
            sel = struct == k
            sums.add_block(k * p, float64_sum(a, rows=sel.nonzero().flatten().tolist()),
                           torch.full((p,), float(sel.sum()), dtype=torch.float64, device=a.device))
        return
    g = labels.groups(control)
    g = torch.zeros(n * p, dtype=torch.long, device=a.device) if g is None else (g if rows is None else g[rows])
    sums.update(a.reshape(n * p, -1), g.reshape(-1))


__all__ = ["add_to_groups", "CONTROLS", "CONTROL_DESCRIPTIONS", "ROLES", "CELL_CLASSES", "TokenLabels", "check_controls",
           "n_groups"]
