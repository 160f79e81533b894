"""Pictures of quizzes: in the terminal (rich) and as PNG images (Pillow).

A quiz is shown as its four 10x10 grids side by side, in the quiz's own block
order (its structure), each under its label A, f(A), B or f(B). The blocks a
model predicts (from the structure, see :func:`culture.quiz.predicted_blocks`)
get a thick frame; cells marked *wrong* are crossed.

Terminal::

    from rich import print
    from culture.render import render_quiz, render_solution
    print(render_quiz(quiz, index=0, task="contact"))          # true colours
    print(render_quiz(quiz, plain=True))                      # '.', 1-9, 'a'
    print(render_solution(prompt, target, prediction))        # wrong cells marked

PNG::

    from culture.render import save_quizzes_png, save_solutions_png
    save_quizzes_png(quizzes, "quizzes.png")
    save_solutions_png(prompts, targets, predictions, "solutions.png")

Plain characters (one per cell): ``.`` for 0 (white), ``1``..``9`` for colours
1..9, ``a`` for 10 (gray) -- the hex digits of the reference tokenizer with the
empty cell as a dot. A wrong cell is ``x``.

Frames: a predicted block is framed in orange; when wrong cells are given (or
in a solution), a predicted/model block is framed green when it has no wrong
cell and red otherwise. In plain mode frames are ASCII: ``+-|`` for prompt
blocks, ``#=`` for predicted ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from rich.style import Style
from rich.text import Text

from culture.quiz import (
    COLOR_RGB,
    GRID,
    MARKER_LABELS,
    MARKER_NAMES,
    N_BLOCKS,
    QuizFormatError,
    block_markers,
    predicted_blocks,
    quizzes_to_grids,
    structure_index,
    validate_quizzes,
)

__all__ = [
    "CELL_CHARS",
    "WRONG_CHAR",
    "FRAME_RGB",
    "cell_char",
    "grid_to_str",
    "render_quiz",
    "render_quizzes",
    "render_solution",
    "render_solutions",
    "quiz_to_str",
    "print_quizzes",
    "structure_name",
    "PngLayout",
    "quizzes_image",
    "solutions_image",
    "save_quizzes_png",
    "save_solutions_png",
]

#: plain character of each colour 0..10
CELL_CHARS = ".123456789a"
#: plain character of a wrong cell
WRONG_CHAR = "x"
#: the two characters drawn over a wrong cell in colour mode
WRONG_MARK = "><"

#: frame colours by kind: plain prompt block, predicted block, correct / wrong prediction
FRAME_RGB = {
    "plain": (0, 0, 0),
    "predicted": (255, 140, 0),
    "correct": (0, 170, 0),
    "wrong": (220, 0, 0),
}
_GRID_LINE_RGB = (170, 170, 170)
_BACKGROUND_RGB = (255, 255, 255)
_TEXT_RGB = (0, 0, 0)


def cell_char(colour: int) -> str:
    """The plain character of a colour 0..10 ('.', '1'..'9', 'a')."""
    return CELL_CHARS[int(colour)]


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


# ------------------------------------------------------------------ panels


@dataclass
class _Panel:
    """One 10x10 grid to draw, with its label, frame kind and wrong cells."""

    label: str
    cells: list[list[int]]
    frame: str = "plain"  # plain | predicted | correct | wrong
    wrong: list[list[bool]] | None = None


@dataclass
class _Item:
    """One picture row: an optional title and panels; ``breaks`` are the panel
    indices before which a wider gap (an arrow in the terminal) is drawn."""

    title: str | None
    panels: list[_Panel]
    breaks: set[int] = field(default_factory=set)


def _as_quizzes(quizzes, what: str) -> torch.Tensor:
    return validate_quizzes(torch.as_tensor(quizzes).detach().cpu(), what=what)


def _as_mask(mask, n: int, shape_tail: tuple[int, ...], what: str) -> torch.Tensor:
    t = torch.as_tensor(mask).detach().cpu().bool()
    if t.dim() == len(shape_tail):
        t = t.unsqueeze(0)
    if tuple(t.shape) != (n, *shape_tail):
        raise QuizFormatError(f"{what} must have shape ({n}, {', '.join(map(str, shape_tail))}), "
                              f"got {tuple(t.shape)}")
    return t


def structure_name(quiz: torch.Tensor) -> str:
    """'(A, f_A, B, f_B) [structure 1]' for a quiz (404,): its marker order, and
    its number (1..5) when it is one of the published run's structures."""
    q = _as_quizzes(quiz, "quiz")[:1]
    text = "(" + ", ".join(MARKER_NAMES[int(m)] for m in block_markers(q)[0]) + ")"
    k = int(structure_index(q)[0])
    return f"{text} [structure {k + 1}]" if k >= 0 else text


def _predicted_arg(predicted, q: torch.Tensor) -> torch.Tensor:
    """(n, 4) bool from None (auto, from the structure), False (none), or a mask."""
    n = q.shape[0]
    if predicted is None or predicted is True:
        return predicted_blocks(q)
    if predicted is False:
        return torch.zeros(n, N_BLOCKS, dtype=torch.bool)
    return _as_mask(predicted, n, (N_BLOCKS,), "predicted")


def _title(index, task, extra: str | None, quiz: torch.Tensor) -> str:
    parts = []
    if index is not None:
        parts.append(f"#{index}")
    if task:
        parts.append(str(task))
    parts.append(structure_name(quiz))
    if extra:
        parts.append(extra)
    return "  ".join(parts)


def _quiz_item(q: torch.Tensor, predicted: torch.Tensor, wrong: torch.Tensor | None,
               title: str | None) -> _Item:
    """Panels of one quiz q (404,): its four blocks in their own order."""
    grids = quizzes_to_grids(q.unsqueeze(0))[0]
    markers = block_markers(q.unsqueeze(0))[0]
    wrong_grids = None if wrong is None else wrong.reshape(N_BLOCKS, GRID * GRID + 1)[:, 1:].reshape(
        N_BLOCKS, GRID, GRID)
    panels = []
    for b in range(N_BLOCKS):
        w = None if wrong_grids is None else wrong_grids[b]
        frame = "plain"
        if bool(predicted[b]):
            frame = "predicted" if w is None else ("wrong" if bool(w.any()) else "correct")
        panels.append(_Panel(MARKER_LABELS[int(markers[b])], grids[b].tolist(), frame,
                             None if w is None or not bool(w.any()) else w.tolist()))
    return _Item(title, panels)


def _quiz_items(quizzes, *, indices=None, tasks=None, labels=None, predicted=None, wrong=None,
                titles: bool = True) -> list[_Item]:
    q = _as_quizzes(quizzes, "quizzes")
    n = q.shape[0]
    pred = _predicted_arg(predicted, q)
    wr = None if wrong is None else _as_mask(wrong, n, (q.shape[1],), "wrong")
    items = []
    for i in range(n):
        if labels is not None:
            title = None if labels is False else str(labels[i])
        elif titles:
            index = indices[i] if indices is not None else i
            task = tasks[i] if tasks is not None and not isinstance(tasks, str) else tasks
            nw = None if wr is None else int(wr[i].sum())
            title = _title(index, task, None if nw is None else
                           ("all correct" if nw == 0 else f"{nw} wrong cell{'s' * (nw != 1)}"), q[i])
        else:
            title = None
        items.append(_quiz_item(q[i], pred[i], None if wr is None else wr[i], title))
    return items


def _solution_items(prompts, targets, predictions, *, indices=None, tasks=None, labels=None,
                    titles: bool = True) -> list[_Item]:
    p = _as_quizzes(prompts, "prompts")
    t = _as_quizzes(targets, "targets")
    m = _as_quizzes(predictions, "predictions")
    if not (p.shape == t.shape == m.shape):
        raise QuizFormatError(f"prompts, targets and predictions differ in shape: "
                              f"{tuple(p.shape)}, {tuple(t.shape)}, {tuple(m.shape)}")
    same = (block_markers(p) == block_markers(t)).all(1) & (block_markers(m) == block_markers(t)).all(1)
    if not bool(same.all()):
        i = int((~same).nonzero()[0])
        raise QuizFormatError(f"quiz {i}: prompt, target and prediction are not in the same structure")
    pred = predicted_blocks(t)
    gp, gt, gm = quizzes_to_grids(p), quizzes_to_grids(t), quizzes_to_grids(m)
    markers = block_markers(t)
    wrong = (gm != gt) & pred[:, :, None, None]
    items = []
    for i in range(t.shape[0]):
        given = [b for b in range(N_BLOCKS) if not bool(pred[i, b])]
        asked = [b for b in range(N_BLOCKS) if bool(pred[i, b])]
        panels = [_Panel(MARKER_LABELS[int(markers[i, b])], gp[i, b].tolist()) for b in given]
        breaks = {len(panels)}
        for b in asked:
            name = MARKER_LABELS[int(markers[i, b])]
            w = wrong[i, b]
            panels.append(_Panel(f"{name} target", gt[i, b].tolist(), "predicted"))
            panels.append(_Panel(f"{name} model", gm[i, b].tolist(),
                                 "wrong" if bool(w.any()) else "correct",
                                 w.tolist() if bool(w.any()) else None))
        nw = int(wrong[i].sum())
        if labels is not None:
            title = None if labels is False else str(labels[i])
        elif titles:
            index = indices[i] if indices is not None else i
            task = tasks[i] if tasks is not None and not isinstance(tasks, str) else tasks
            title = _title(index, task, "correct" if nw == 0 else f"{nw} wrong cell{'s' * (nw != 1)}", t[i])
        else:
            title = None
        items.append(_Item(title, panels, breaks))
    return items


# ---------------------------------------------------------------- terminal

_BOX = {  # corners tl, tr, bl, br, horizontal, vertical
    "light": ("┌", "┐", "└", "┘", "─", "│"),
    "heavy": ("┏", "┓", "┗", "┛", "━", "┃"),
    "ascii": ("+", "+", "+", "+", "-", "|"),
    "ascii_heavy": ("#", "#", "#", "#", "=", "#"),
}
_ARROW = ("  → ", "  -> ")


def _rgb_style(rgb, *, bg: bool = True, bold: bool = False) -> Style:
    colour = "rgb({},{},{})".format(*rgb)
    return Style(bgcolor=colour, bold=bold) if bg else Style(color=colour, bold=bold)


def _panel_lines(panel: _Panel, plain: bool) -> list[list[tuple[str, Style | None]]]:
    """13 lines (label, top border, 10 rows, bottom border) of equal width."""
    cw = 1 if plain else 2
    inner = cw * GRID
    heavy = panel.frame != "plain"
    box = _BOX[("ascii_heavy" if heavy else "ascii") if plain else ("heavy" if heavy else "light")]
    frame_style = None if plain else (
        Style(color="grey50") if not heavy else _rgb_style(FRAME_RGB[panel.frame], bg=False, bold=True))
    label = panel.label[: inner + 2].center(inner + 2)
    lines = [[(label, None if plain else Style(bold=heavy))]]
    lines.append([(box[0] + box[4] * inner + box[1], frame_style)])
    for r in range(GRID):
        line = [(box[5], frame_style)]
        for c in range(GRID):
            v = panel.cells[r][c]
            bad = panel.wrong is not None and panel.wrong[r][c]
            if plain:
                line.append((WRONG_CHAR if bad else CELL_CHARS[v], None))
            else:
                rgb = COLOR_RGB[v]
                if bad:
                    line.append((WRONG_MARK, Style(bgcolor="rgb({},{},{})".format(*rgb),
                                                   color="rgb({},{},{})".format(*_contrast(rgb)), bold=True)))
                else:
                    line.append(("  ", _rgb_style(rgb)))
        line.append((box[5], frame_style))
        lines.append(line)
    lines.append([(box[2] + box[4] * inner + box[3], frame_style)])
    return lines


def _item_text(item: _Item, plain: bool, width: int | None) -> Text:
    panel_w = (1 if plain else 2) * GRID + 2
    gap = "  "
    arrow = _ARROW[1] if plain else _ARROW[0]
    # split the panels into lines of panels that fit in ``width``
    chunks: list[list[int]] = [[]]
    used = 0
    for k in range(len(item.panels)):
        sep = (len(arrow) if k in item.breaks else len(gap)) if chunks[-1] else 0
        if chunks[-1] and width is not None and used + sep + panel_w > width:
            chunks.append([])
            used, sep = 0, 0
        chunks[-1].append(k)
        used += sep + panel_w
    text = Text(no_wrap=True, overflow="ignore", end="")
    if item.title is not None:
        text.append(item.title, None if plain else Style(bold=True))
        text.append("\n")
    for ci, chunk in enumerate(chunks):
        if ci:
            text.append("\n")
        blocks = [_panel_lines(item.panels[k], plain) for k in chunk]
        for row in range(len(blocks[0])):
            for j, k in enumerate(chunk):
                if j:
                    if k in item.breaks:
                        text.append(arrow if row == 7 else " " * len(arrow))
                    else:
                        text.append(gap)
                for s, style in blocks[j][row]:
                    text.append(s, style)
            # no trailing spaces: plain output stays diff-friendly
            text.rstrip()
            if row < len(blocks[0]) - 1:
                text.append("\n")
    return text


def _items_text(items: list[_Item], plain: bool, width: int | None) -> Text:
    out = Text(no_wrap=True, overflow="ignore", end="\n")
    for i, item in enumerate(items):
        if i:
            out.append("\n\n")
        out.append_text(_item_text(item, plain, width))
    return out


def render_quiz(quiz, *, index: int | None = None, task: str | None = None, predicted=None,
                wrong=None, plain: bool = False, width: int | None = None, title: bool = True) -> Text:
    """A rich Text of one quiz (404,): title line, then its four grids side by side.

    ``predicted``: None (from the structure), False (no frame) or 4 bools;
    ``wrong``: (404,) bool mask of cells to mark; ``plain``: one character per
    cell and no colour; ``width``: wrap the grids onto several lines to fit
    (None: one line). ``render_quiz(...).plain`` is the text without colours.
    """
    q = _as_quizzes(quiz, "quiz")
    if q.shape[0] != 1:
        raise QuizFormatError(f"render_quiz takes one quiz, got {q.shape[0]} (use render_quizzes)")
    if predicted is not None and predicted is not False and predicted is not True:
        predicted = torch.as_tensor(predicted).reshape(1, N_BLOCKS)
    if wrong is not None:
        wrong = torch.as_tensor(wrong).reshape(1, -1)
    return render_quizzes(q, indices=[index], tasks=None if task is None else [task], predicted=predicted,
                          wrong=wrong, plain=plain, width=width, titles=title)


def render_quizzes(quizzes, *, indices: Sequence | None = None, tasks: Sequence[str] | str | None = None,
                   labels: Sequence[str] | None = None, predicted=None, wrong=None, plain: bool = False,
                   width: int | None = None, titles: bool = True) -> Text:
    """A rich Text of quizzes (n, 404), one after the other (blank line between).

    Titles show ``indices[i]`` (default i), ``tasks[i]`` and the structure, or
    ``labels[i]`` when given (``titles=False``: none). ``predicted``: None (from
    each structure), False, or (n, 4) bool; ``wrong``: (n, 404) bool.
    """
    items = _quiz_items(quizzes, indices=indices, tasks=tasks, labels=labels, predicted=predicted,
                        wrong=wrong, titles=titles)
    return _items_text(items, plain, width)


def render_solution(prompt, target, prediction, *, index: int | None = None, task: str | None = None,
                    plain: bool = False, width: int | None = None, title: bool = True) -> Text:
    """A rich Text comparing a model's answer with the target, for one quiz.

    Shows the prompt's given blocks, an arrow, then for each predicted block
    (from the target's structure) the target ("f(B) target", orange frame) and
    the prediction ("f(B) model", green frame when right, red when wrong, with
    the wrong cells marked). The title says how many cells are wrong.
    """
    return render_solutions(_as_quizzes(prompt, "prompt"), _as_quizzes(target, "target"),
                            _as_quizzes(prediction, "prediction"),
                            indices=[index], tasks=None if task is None else [task], plain=plain,
                            width=width, titles=title)


def render_solutions(prompts, targets, predictions, *, indices: Sequence | None = None,
                     tasks: Sequence[str] | str | None = None, labels: Sequence[str] | None = None,
                     plain: bool = False, width: int | None = None, titles: bool = True) -> Text:
    """:func:`render_solution` for batches (n, 404), one quiz after the other."""
    items = _solution_items(prompts, targets, predictions, indices=indices, tasks=tasks, labels=labels,
                            titles=titles)
    return _items_text(items, plain, width)


def quiz_to_str(quiz, **kwargs) -> str:
    """Plain text of one quiz (or a batch): one character per cell, no colour."""
    q = _as_quizzes(quiz, "quiz")
    kwargs["plain"] = True
    return render_quizzes(q, **kwargs).plain


def grid_to_str(grid) -> str:
    """Plain text of one 10x10 grid of colours: 10 lines of 10 characters."""
    g = torch.as_tensor(grid).reshape(GRID, GRID).tolist()
    return "\n".join("".join(CELL_CHARS[int(v)] for v in row) for row in g)


def print_quizzes(quizzes, *, console: Console | None = None, plain: bool | None = None, **kwargs) -> None:
    """Print quizzes (n, 404) or one quiz: colours on a terminal (or notebook),
    plain characters when ``plain`` or when NO_COLOR is set / output is a pipe."""
    console = console or Console()
    if plain is None:
        plain = bool(os.environ.get("NO_COLOR")) or not (console.is_terminal or console.is_jupyter)
    width = None if plain else console.width
    console.print(render_quizzes(quizzes, plain=plain, width=width, **kwargs), crop=False, soft_wrap=True)


# --------------------------------------------------------------------- PNG


@dataclass(frozen=True)
class PngLayout:
    """Geometry of a quiz picture (all in pixels; origin top-left).

    A grid is ``10 * cell_px + 1`` pixels wide: one-pixel lines at multiples of
    ``cell_px``, the cell (r, c) filling the square between them. Items (quizzes)
    are laid out in ``ncols`` columns; each item has an optional title line,
    then a label line, then its grids side by side.
    """

    cell_px: int
    n_items: int
    ncols: int
    panels: tuple[int, ...]  # panels per item
    breaks: tuple[frozenset, ...]  # per item: panel indices preceded by a wide gap
    titles: bool
    text_h: int

    @property
    def grid_px(self) -> int:
        return GRID * self.cell_px + 1

    @property
    def gap(self) -> int:
        return self.cell_px

    @property
    def wide_gap(self) -> int:
        return 3 * self.cell_px

    @property
    def margin(self) -> int:
        return self.cell_px

    @property
    def frame_px(self) -> int:
        return max(2, self.cell_px // 4)

    def item_width(self, item: int) -> int:
        k = self.panels[item]
        seps = sum(self.wide_gap if j in self.breaks[item] else self.gap for j in range(1, k))
        return k * self.grid_px + seps

    @property
    def column_width(self) -> int:
        return max((self.item_width(i) for i in range(self.n_items)), default=self.grid_px)

    @property
    def item_height(self) -> int:
        return (self.text_h if self.titles else 0) + self.text_h + self.frame_px + self.grid_px

    @property
    def nrows(self) -> int:
        return max(1, -(-self.n_items // self.ncols))

    @property
    def size(self) -> tuple[int, int]:
        ncols = min(self.ncols, max(1, self.n_items))
        w = 2 * self.margin + ncols * self.column_width + (ncols - 1) * 2 * self.cell_px
        h = 2 * self.margin + self.nrows * self.item_height + (self.nrows - 1) * self.cell_px
        return w, h

    def item_origin(self, item: int) -> tuple[int, int]:
        r, c = divmod(item, self.ncols)
        x = self.margin + c * (self.column_width + 2 * self.cell_px)
        y = self.margin + r * (self.item_height + self.cell_px)
        return x, y

    def grid_origin(self, item: int, panel: int) -> tuple[int, int]:
        """Top-left pixel of the grid of ``panel`` (block position) in ``item``."""
        x, y = self.item_origin(item)
        for j in range(1, panel + 1):
            x += self.grid_px + (self.wide_gap if j in self.breaks[item] else self.gap)
        y += (self.text_h if self.titles else 0) + self.text_h + self.frame_px
        return x, y

    def cell_box(self, item: int, panel: int, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) inclusive pixel box of the inside of a cell."""
        gx, gy = self.grid_origin(item, panel)
        x0, y0 = gx + col * self.cell_px + 1, gy + row * self.cell_px + 1
        return x0, y0, x0 + self.cell_px - 2, y0 + self.cell_px - 2

    def cell_center(self, item: int, panel: int, row: int, col: int) -> tuple[int, int]:
        x0, y0, x1, y1 = self.cell_box(item, panel, row, col)
        return (x0 + x1) // 2, (y0 + y1) // 2


def _font(cell_px: int):
    from PIL import ImageFont

    size = max(9, int(round(cell_px * 0.8)))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font only
        return ImageFont.load_default()


def _layout(items: list[_Item], cell_px: int, ncols: int, font) -> PngLayout:
    asc, desc = font.getmetrics() if hasattr(font, "getmetrics") else (11, 3)
    text_h = asc + desc + max(2, cell_px // 4)
    return PngLayout(cell_px=cell_px, n_items=len(items), ncols=max(1, ncols),
                     panels=tuple(len(it.panels) for it in items),
                     breaks=tuple(frozenset(it.breaks) for it in items),
                     titles=any(it.title is not None for it in items), text_h=text_h)


def draw_spaced_text(draw, xy, text: str, font, fill=_TEXT_RGB) -> None:
    """``draw.text`` with visible spaces: Pillow's default font draws a space
    a pixel or two wide at small sizes ("#3frame feature 12max"); here each
    space is as wide as an "n"."""
    x, y = xy
    gap = max(draw.textlength(" ", font=font), draw.textlength("n", font=font))
    for k, word in enumerate(text.split(" ")):
        if k:
            x += gap
        if word:
            draw.text((x, y), word, fill=fill, font=font)
            x += draw.textlength(word, font=font)


def _draw_items(items: list[_Item], cell_px: int, ncols: int):
    from PIL import Image, ImageDraw

    if cell_px < 4:
        raise ValueError(f"cell_px must be at least 4, got {cell_px}")
    font = _font(cell_px)
    lay = _layout(items, cell_px, ncols, font)
    img = Image.new("RGB", lay.size, _BACKGROUND_RGB)
    draw = ImageDraw.Draw(img)
    c, gpx, fp = cell_px, lay.grid_px, lay.frame_px
    cross_w = max(1, cell_px // 8)
    for i, item in enumerate(items):
        ix, iy = lay.item_origin(i)
        if item.title is not None:
            draw_spaced_text(draw, (ix, iy), item.title, font)
        for k, panel in enumerate(item.panels):
            gx, gy = lay.grid_origin(i, k)
            # label, centred over the grid
            tw = draw.textlength(panel.label, font=font)
            draw.text((gx + (gpx - tw) / 2, gy - fp - lay.text_h), panel.label, fill=_TEXT_RGB, font=font)
            # cells
            for r in range(GRID):
                for col in range(GRID):
                    rgb = COLOR_RGB[panel.cells[r][col]]
                    x0, y0 = gx + col * c, gy + r * c
                    draw.rectangle((x0, y0, x0 + c, y0 + c), fill=rgb)
            # grid lines, then the outer border
            for t in range(GRID + 1):
                draw.line((gx + t * c, gy, gx + t * c, gy + GRID * c), fill=_GRID_LINE_RGB)
                draw.line((gx, gy + t * c, gx + GRID * c, gy + t * c), fill=_GRID_LINE_RGB)
            draw.rectangle((gx, gy, gx + GRID * c, gy + GRID * c), outline=(0, 0, 0))
            # wrong cells: a cross in a contrasting colour
            if panel.wrong is not None:
                for r in range(GRID):
                    for col in range(GRID):
                        if panel.wrong[r][col]:
                            x0, y0 = gx + col * c + 2, gy + r * c + 2
                            x1, y1 = gx + (col + 1) * c - 2, gy + (r + 1) * c - 2
                            ink = _contrast(COLOR_RGB[panel.cells[r][col]])
                            draw.line((x0, y0, x1, y1), fill=ink, width=cross_w)
                            draw.line((x0, y1, x1, y0), fill=ink, width=cross_w)
            # thick frame around predicted / model blocks, outside the grid
            if panel.frame != "plain":
                draw.rectangle((gx - fp, gy - fp, gx + GRID * c + fp, gy + GRID * c + fp),
                               outline=FRAME_RGB[panel.frame], width=fp)
            # arrow in the wide gap before the answers
            if k in item.breaks and k > 0:
                ax0 = gx - lay.wide_gap + c // 2 + fp
                ax1 = gx - c // 2 - fp
                ay = gy + GRID * c // 2
                draw.line((ax0, ay, ax1, ay), fill=_TEXT_RGB, width=max(1, c // 8))
                h = max(2, c // 3)
                draw.polygon([(ax1 + 1, ay), (ax1 - h, ay - h), (ax1 - h, ay + h)], fill=_TEXT_RGB)
    return img, lay


def quizzes_image(quizzes, *, predicted=None, wrong=None, labels=None, indices=None, tasks=None,
                  cell_px: int = 16, ncols: int = 1):
    """A PIL image of quizzes (n, 404): one quiz per row (``ncols`` per row),
    each as its four grids side by side under their labels.

    ``predicted``: None (from each structure), False, or (n, 4) bool;
    ``wrong``: (n, 404) bool, cells crossed (predicted blocks then get a green
    frame when right, red when wrong); ``labels``: a title per quiz, None for
    "#index task structure", False for no titles. Returns (image, PngLayout).
    """
    items = _quiz_items(quizzes, indices=indices, tasks=tasks,
                        labels=labels, predicted=predicted, wrong=wrong)
    return _draw_items(items, cell_px, ncols)


def solutions_image(prompts, targets, predictions, *, labels=None, indices=None, tasks=None,
                    cell_px: int = 16, ncols: int = 1):
    """A PIL image comparing predictions with targets (all (n, 404), same
    structures): given blocks of the prompt, an arrow, then per predicted block
    the target (orange frame) and the prediction (green/red frame, wrong cells
    crossed). Returns (image, PngLayout)."""
    items = _solution_items(prompts, targets, predictions, indices=indices, tasks=tasks, labels=labels)
    return _draw_items(items, cell_px, ncols)


def _save(img, path) -> Path:
    from culture.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_quizzes_png(quizzes, path: str | os.PathLike, *, predicted=None, wrong=None, labels=None,
                     indices=None, tasks=None, cell_px: int = 16, ncols: int = 1) -> Path:
    """Write :func:`quizzes_image` to ``path`` (PNG, atomically); returns the path."""
    img, _ = quizzes_image(quizzes, predicted=predicted, wrong=wrong, labels=labels, indices=indices,
                           tasks=tasks, cell_px=cell_px, ncols=ncols)
    return _save(img, path)


def save_solutions_png(prompts, targets, predictions, path: str | os.PathLike, *, labels=None,
                       indices=None, tasks=None, cell_px: int = 16, ncols: int = 1) -> Path:
    """Write :func:`solutions_image` to ``path`` (PNG, atomically); returns the path."""
    img, _ = solutions_image(prompts, targets, predictions, labels=labels, indices=indices, tasks=tasks,
                             cell_px=cell_px, ncols=ncols)
    return _save(img, path)
