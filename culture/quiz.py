"""The quiz format: 404 tokens, four blocks of (marker + 10x10 grid).

A quiz is four grids A, f(A), B, f(B). Each grid is written as one marker token
followed by its 100 cells in row-major order, so a block is 101 tokens and a quiz
404. Cells hold colours 0..10; markers are 11..14. The order in which the four
markers appear is the quiz's *structure*; the canonical structure is
(A, f_A, B, f_B). See REFERENCE.md section 1.

Everything here works on batches: ``quizzes`` is a LongTensor (n, 404), and a
batch may mix structures.
"""

from __future__ import annotations

from culture.defaults import EVAL_STRUCTURE_NUMBERS
from culture.errors import CultureError

from dataclasses import dataclass

import torch

GRID = 10
N_CELLS = GRID * GRID
BLOCK_LEN = N_CELLS + 1
N_BLOCKS = 4
QUIZ_LEN = N_BLOCKS * BLOCK_LEN
N_COLORS = 11
TOKEN_A, TOKEN_FA, TOKEN_B, TOKEN_FB = 11, 12, 13, 14
MARKERS = (TOKEN_A, TOKEN_FA, TOKEN_B, TOKEN_FB)
VOCAB_SIZE = 15

MARKER_NAMES = {TOKEN_A: "A", TOKEN_FA: "f_A", TOKEN_B: "B", TOKEN_FB: "f_B"}
MARKER_LABELS = {TOKEN_A: "A", TOKEN_FA: "f(A)", TOKEN_B: "B", TOKEN_FB: "f(B)"}

COLOR_NAMES = (
    "white", "red", "green", "blue", "yellow", "cyan",
    "violet", "light green", "brown", "light blue", "gray",
)
COLOR_RGB = (
    (255, 255, 255), (255, 0, 0), (0, 192, 0), (0, 0, 255), (255, 224, 0),
    (0, 255, 255), (224, 128, 255), (192, 255, 192), (165, 42, 42),
    (192, 192, 255), (128, 128, 128),
)


class QuizFormatError(CultureError, ValueError):
    """A tensor is not a batch of valid quizzes (shape, token range, markers)."""


@dataclass(frozen=True)
class Structure:
    """A marker order, the blocks a model must predict, and the blocks that get
    prompt noise during training/evaluation (block indices 0..3)."""

    markers: tuple[int, int, int, int]
    predicted: tuple[int, ...] = (3,)
    noised: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return "(" + ", ".join(MARKER_NAMES[m] for m in self.markers) + ")"

    @property
    def deterministic(self) -> bool:
        """True when the predicted block is a function of the prompt (one block)."""
        return len(self.predicted) == 1


CANONICAL = (TOKEN_A, TOKEN_FA, TOKEN_B, TOKEN_FB)

#: The five structures of the published run, in order (REFERENCE section 1).
STRUCTURES: tuple[Structure, ...] = (
    Structure((TOKEN_A, TOKEN_FA, TOKEN_B, TOKEN_FB), (3,), (2,)),
    Structure((TOKEN_FA, TOKEN_A, TOKEN_FB, TOKEN_B), (3,), (2,)),
    Structure((TOKEN_B, TOKEN_FB, TOKEN_A, TOKEN_FA), (3,), ()),
    Structure((TOKEN_FB, TOKEN_B, TOKEN_FA, TOKEN_A), (3,), ()),
    Structure((TOKEN_FB, TOKEN_FA, TOKEN_A, TOKEN_B), (1, 2, 3), ()),
)
#: The four structures used for accuracy (one predicted block each).
EVAL_STRUCTURES: tuple[Structure, ...] = tuple(STRUCTURES[k - 1] for k in EVAL_STRUCTURE_NUMBERS)


def parse_structure(spec: str | int | Structure) -> Structure:
    """A structure from its index (1..5 or "1".."5"), its marker names
    ("A,f_A,B,f_B" or "f_A f_B A B"), or a Structure."""
    if isinstance(spec, Structure):
        return spec
    text = str(spec).strip()
    if text.isdigit():
        k = int(text)
        if 1 <= k <= len(STRUCTURES):
            return STRUCTURES[k - 1]
        raise ValueError(f"structure index must be 1..{len(STRUCTURES)}, got {k}")
    names = {v.lower(): k for k, v in MARKER_NAMES.items()}
    parts = [p for p in text.replace("(", " ").replace(")", " ").replace(",", " ").split() if p]
    try:
        markers = tuple(names[p.lower()] for p in parts)
    except KeyError as exc:
        raise ValueError(f"unknown marker {exc.args[0]!r} in structure {text!r} "
                         f"(markers: A, f_A, B, f_B)") from None
    if sorted(markers) != sorted(MARKERS):
        raise ValueError(f"structure {text!r} must name each of A, f_A, B, f_B once")
    for s in STRUCTURES:
        if s.markers == markers:
            return s
    return Structure(markers, (3,), ())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- grids


def grids_to_quizzes(grids: torch.Tensor, markers: tuple[int, ...] = CANONICAL) -> torch.Tensor:
    """(n, 4, 10, 10) grids, given in the order of ``markers``, to (n, 404) tokens."""
    grids = torch.as_tensor(grids)
    if grids.dim() != 4 or tuple(grids.shape[1:]) != (N_BLOCKS, GRID, GRID):
        raise QuizFormatError(f"grids must have shape (n, 4, 10, 10), got {tuple(grids.shape)}")
    n = grids.shape[0]
    out = torch.empty(n, N_BLOCKS, BLOCK_LEN, dtype=torch.long, device=grids.device)
    out[:, :, 0] = torch.tensor(markers, dtype=torch.long, device=grids.device)
    out[:, :, 1:] = grids.reshape(n, N_BLOCKS, N_CELLS)
    return out.reshape(n, QUIZ_LEN)


def quizzes_to_grids(quizzes: torch.Tensor) -> torch.Tensor:
    """(n, 404) tokens to their (n, 4, 10, 10) cells, block order unchanged."""
    blocks = quizzes.reshape(quizzes.shape[0], N_BLOCKS, BLOCK_LEN)
    return blocks[:, :, 1:].reshape(quizzes.shape[0], N_BLOCKS, GRID, GRID)


def block_markers(quizzes: torch.Tensor) -> torch.Tensor:
    """(n, 4): the marker token of each block."""
    return quizzes.reshape(quizzes.shape[0], N_BLOCKS, BLOCK_LEN)[:, :, 0]


def canonical_grids(quizzes: torch.Tensor) -> torch.Tensor:
    """(n, 4, 10, 10) grids A, f(A), B, f(B) whatever each quiz's structure."""
    return quizzes_to_grids(reconfigure(quizzes, CANONICAL))


# ----------------------------------------------------------------------- validity


def validate_quizzes(quizzes, *, what: str = "quizzes") -> torch.Tensor:
    """Return ``quizzes`` as a LongTensor (n, 404) or raise QuizFormatError.

    Checks: integer tensor of shape (n, 404) (a single quiz (404,) is accepted
    and made (1, 404)), cells in 0..10, one marker per block at its start, and
    each of the four markers exactly once per quiz.
    """
    if not isinstance(quizzes, torch.Tensor):
        try:
            quizzes = torch.as_tensor(quizzes)
        except Exception as exc:  # noqa: BLE001 - any conversion failure
            raise QuizFormatError(f"{what}: not a tensor ({type(quizzes).__name__})") from exc
    if quizzes.dtype.is_floating_point or quizzes.dtype == torch.bool or quizzes.is_complex():
        raise QuizFormatError(f"{what}: expected integer tokens, got dtype {quizzes.dtype}")
    if quizzes.dim() == 1:
        quizzes = quizzes.unsqueeze(0)
    if quizzes.dim() != 2 or quizzes.shape[1] != QUIZ_LEN:
        raise QuizFormatError(f"{what}: expected shape (n, {QUIZ_LEN}), got {tuple(quizzes.shape)}")
    quizzes = quizzes.long()
    if quizzes.numel() == 0:
        return quizzes
    blocks = quizzes.reshape(quizzes.shape[0], N_BLOCKS, BLOCK_LEN)
    cells = blocks[:, :, 1:]
    bad = (cells < 0) | (cells >= N_COLORS)
    if bad.any():
        i = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0])
        raise QuizFormatError(f"{what}: quiz {i} has a cell token outside 0..{N_COLORS - 1}")
    m = blocks[:, :, 0]
    ok = (torch.sort(m, dim=1).values == torch.tensor(MARKERS, device=m.device)).all(1)
    if not ok.all():
        i = int((~ok).nonzero()[0])
        raise QuizFormatError(
            f"{what}: quiz {i} does not have the markers 11..14 once each at positions 0, 101, 202, 303"
        )
    return quizzes


def is_trivial(quizzes: torch.Tensor) -> torch.Tensor:
    """(n,) bool: A == f(A) or B == f(B) (cells only), whatever the structure."""
    g = canonical_grids(quizzes).flatten(2)
    return (g[:, 0] == g[:, 1]).all(1) | (g[:, 2] == g[:, 3]).all(1)


# ---------------------------------------------------------------- restructuring


def _structure_markers(structure, n: int, device) -> torch.Tensor:
    """(n, 4) marker order from a Structure, a marker tuple, or an (n, 4) tensor."""
    if isinstance(structure, Structure):
        structure = structure.markers
    t = torch.as_tensor(structure, dtype=torch.long, device=device)
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(n, N_BLOCKS)
    if tuple(t.shape) != (n, N_BLOCKS):
        raise QuizFormatError(f"structure must be 4 markers or (n, 4), got {tuple(t.shape)}")
    return t


def reconfigure(quizzes: torch.Tensor, structure) -> torch.Tensor:
    """Permute each quiz's blocks (marker and cells together) into ``structure``.

    ``structure`` is a Structure, a tuple of 4 markers, or an (n, 4) tensor of
    markers (one target structure per quiz). Source structures may differ
    between quizzes; they are read from the markers in place.
    """
    n = quizzes.shape[0]
    target = _structure_markers(structure, n, quizzes.device)
    blocks = quizzes.reshape(n, N_BLOCKS, BLOCK_LEN)
    source = blocks[:, :, 0]
    # index[i, j] = position in quiz i of the block whose marker is target[i, j]
    index = (source.unsqueeze(1) == target.unsqueeze(2)).long().argmax(2)
    out = torch.gather(blocks, 1, index.unsqueeze(2).expand(n, N_BLOCKS, BLOCK_LEN))
    return out.reshape(n, QUIZ_LEN)


def structure_index(quizzes: torch.Tensor, structures=STRUCTURES) -> torch.Tensor:
    """(n,) index into ``structures`` of each quiz's marker order, -1 if none."""
    m = block_markers(quizzes)
    table = torch.tensor([s.markers for s in structures], device=quizzes.device)
    eq = (m.unsqueeze(1) == table.unsqueeze(0)).all(2)
    return torch.where(eq.any(1), eq.long().argmax(1), torch.full_like(eq[:, 0], -1, dtype=torch.long))


def random_structures(
    quizzes: torch.Tensor,
    structures=EVAL_STRUCTURES,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconfigure each quiz to a structure drawn uniformly from ``structures``.

    Returns (quizzes, choice) where choice[i] indexes ``structures``.
    """
    n = quizzes.shape[0]
    choice = torch.randint(len(structures), (n,), generator=generator)
    table = torch.tensor([s.markers for s in structures], dtype=torch.long)
    return reconfigure(quizzes, table[choice].to(quizzes.device)), choice.to(quizzes.device)


# ------------------------------------------------------------------------- masks


def block_mask(n: int, blocks, *, cells_only: bool = False, device=None) -> torch.Tensor:
    """(n, 404) bool mask selecting ``blocks`` (per quiz: a list of indices, or an
    (n, 4) bool tensor). With ``cells_only`` the marker tokens are left out."""
    if isinstance(blocks, torch.Tensor) and blocks.dim() == 2:
        sel = blocks.bool().to(device)
    else:
        sel = torch.zeros(n, N_BLOCKS, dtype=torch.bool, device=device)
        sel[:, list(blocks)] = True
    mask = sel.unsqueeze(2).expand(n, N_BLOCKS, BLOCK_LEN).clone()
    if cells_only:
        mask[:, :, 0] = False
    return mask.reshape(n, QUIZ_LEN)


def predicted_blocks(quizzes: torch.Tensor, structures=STRUCTURES) -> torch.Tensor:
    """(n, 4) bool: the blocks to predict for each quiz, from its structure.

    A quiz whose marker order is not in ``structures`` predicts its last block.
    """
    idx = structure_index(quizzes, structures)
    table = torch.zeros(len(structures) + 1, N_BLOCKS, dtype=torch.bool)
    for k, s in enumerate(structures):
        table[k, list(s.predicted)] = True
    table[-1, 3] = True
    return table.to(quizzes.device)[idx]


def ar_mask(quizzes: torch.Tensor, structures=STRUCTURES) -> torch.Tensor:
    """(n, 404) bool autoregression mask: True at the predicted cells (markers
    stay as prompt, as in the reference's masks)."""
    return block_mask(quizzes.shape[0], predicted_blocks(quizzes, structures), cells_only=True,
                      device=quizzes.device)


def partner_marker(marker: int) -> int:
    """The marker of the paired grid: A <-> f_A, B <-> f_B."""
    return {TOKEN_A: TOKEN_FA, TOKEN_FA: TOKEN_A, TOKEN_B: TOKEN_FB, TOKEN_FB: TOKEN_B}[int(marker)]


def transform_mask(quizzes: torch.Tensor, structures=STRUCTURES, *, paired: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """(n, 404) bool: the *transform cells* -- predicted cells (from each quiz's
    structure, as :func:`ar_mask`) whose colour differs from the same cell of
    the paired grid (f(B) vs B, B vs f(B), f(A) vs A...). The other predicted
    cells are copies of the paired grid.

    ``paired``: quizzes to read the paired grids from (same structures) --
    pass the clean quizzes when ``quizzes`` carry prompt noise, so a noised
    input cell is not mistaken for a change; default ``quizzes`` itself.
    """
    n = quizzes.shape[0]
    source = quizzes if paired is None else paired
    if source.shape != quizzes.shape:
        raise QuizFormatError(f"paired quizzes have shape {tuple(source.shape)}, expected {tuple(quizzes.shape)}")
    markers = block_markers(quizzes)  # (n, 4)
    partners = markers.clone()
    for m in MARKERS:
        partners[markers == m] = partner_marker(m)
    # block index of each block's partner: the position of the partner marker
    where = (block_markers(source).unsqueeze(1) == partners.unsqueeze(2)).float().argmax(2)  # (n, 4)
    grids = quizzes.reshape(n, N_BLOCKS, BLOCK_LEN)[:, :, 1:]
    partner_cells = source.reshape(n, N_BLOCKS, BLOCK_LEN)[:, :, 1:].gather(
        1, where.unsqueeze(2).expand(n, N_BLOCKS, N_CELLS))
    differ = grids != partner_cells
    full = torch.zeros(n, N_BLOCKS, BLOCK_LEN, dtype=torch.bool, device=quizzes.device)
    full[:, :, 1:] = differ
    return full.reshape(n, QUIZ_LEN) & ar_mask(quizzes, structures)


# ------------------------------------------------------------------------- noise


def add_prompt_noise(
    quizzes: torch.Tensor,
    proba: float,
    structures=STRUCTURES,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt noise: in each quiz's noised blocks (from its structure), every cell
    is replaced with probability ``proba`` by a uniform colour 0..10. Markers
    never change. Returns a new tensor."""
    if proba <= 0:
        return quizzes.clone()
    n = quizzes.shape[0]
    idx = structure_index(quizzes, structures)
    table = torch.zeros(len(structures) + 1, N_BLOCKS, dtype=torch.bool)
    for k, s in enumerate(structures):
        table[k, list(s.noised)] = True
    where = block_mask(n, table[idx.cpu()], cells_only=True).to(quizzes.device)
    hit = torch.rand(quizzes.shape, generator=generator).to(quizzes.device) < proba
    colours = torch.randint(N_COLORS, quizzes.shape, generator=generator).to(quizzes.device)
    return torch.where(where & hit, colours, quizzes)


def empty_quizzes(n: int, structure: Structure | tuple = CANONICAL) -> torch.Tensor:
    """n quizzes of all-empty grids in ``structure`` (used as generation prompts)."""
    markers = structure.markers if isinstance(structure, Structure) else tuple(structure)
    return grids_to_quizzes(torch.zeros(n, N_BLOCKS, GRID, GRID, dtype=torch.long), markers)
