"""culture.render: terminal (colour and plain) and PNG pictures of quizzes."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from rich.console import Console

from culture.errors import CultureError
from culture.quiz import (
    COLOR_RGB,
    MARKER_LABELS,
    STRUCTURES,
    block_markers,
    grids_to_quizzes,
    quizzes_to_grids,
    reconfigure,
)
from culture.render import (
    CELL_CHARS,
    FRAME_RGB,
    WRONG_CHAR,
    grid_to_str,
    quiz_to_str,
    quizzes_image,
    render_quiz,
    render_quizzes,
    render_solution,
    save_quizzes_png,
    save_solutions_png,
    solutions_image,
)
from tests import helpers_sources

PANEL_W_PLAIN = 12  # 10 cells + 2 border characters
GAP = 2


def random_quizzes(n, seed=0, structure=None):
    q = helpers_sources.random_quizzes(n, seed)
    return q if structure is None else reconfigure(q, structure.markers)


def ansi(renderable, width=200) -> str:
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="truecolor", width=width).print(renderable)
    return buf.getvalue()


def plain_rows(text: str, block: int) -> list[str]:
    """The 10 cell rows of ``block`` in a plain rendering with a title line."""
    lines = text.split("\n")
    x = block * (PANEL_W_PLAIN + GAP) + 1
    return [line[x: x + 10] for line in lines[3:13]]


# ------------------------------------------------------------------ terminal


def test_plain_characters_map_cells():
    q = random_quizzes(1, seed=1)[0]
    text = render_quiz(q, plain=True).plain
    grids = quizzes_to_grids(q.unsqueeze(0))[0]
    for b in range(4):
        want = ["".join(CELL_CHARS[int(v)] for v in row) for row in grids[b]]
        assert plain_rows(text, b) == want
    assert CELL_CHARS == ".123456789a"
    assert grid_to_str(grids[0]).split("\n") == plain_rows(text, 0)


def test_plain_has_no_escape_codes_and_no_trailing_spaces():
    text = quiz_to_str(random_quizzes(2))
    assert "\x1b" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))


@pytest.mark.parametrize("k", range(5))
def test_labels_follow_structure_order(k):
    s = STRUCTURES[k]
    q = random_quizzes(1, structure=s)[0]
    text = render_quiz(q, plain=True).plain
    labels = text.split("\n")[1].split()
    assert labels == [MARKER_LABELS[m] for m in s.markers]
    assert f"[structure {k + 1}]" in text.split("\n")[0]
    # the cells under each label are that block's cells
    grids = quizzes_to_grids(q.unsqueeze(0))[0]
    for b in range(4):
        assert plain_rows(text, b)[0] == "".join(CELL_CHARS[int(v)] for v in grids[b, 0])


def test_predicted_blocks_framed_from_structure():
    for s in STRUCTURES:
        text = render_quiz(random_quizzes(1, structure=s)[0], plain=True).plain
        top = text.split("\n")[2]
        for b in range(4):
            seg = top[b * (PANEL_W_PLAIN + GAP): b * (PANEL_W_PLAIN + GAP) + PANEL_W_PLAIN]
            assert seg == ("#" + "=" * 10 + "#" if b in s.predicted else "+" + "-" * 10 + "+")
    # predicted=False: no frame; explicit mask
    q = random_quizzes(1)[0]
    assert "#" not in render_quiz(q, plain=True, predicted=False, title=False).plain
    top = render_quiz(q, plain=True, predicted=[True, False, False, False]).plain.split("\n")[2]
    assert top.startswith("#==========#  +----------+")


def test_title_line():
    q = random_quizzes(1)[0]
    title = render_quiz(q, index=7, task="contact", plain=True).plain.split("\n")[0]
    assert title == "#7  contact  (A, f_A, B, f_B) [structure 1]"
    assert render_quiz(q, plain=True).plain.split("\n")[0] == "(A, f_A, B, f_B) [structure 1]"


def test_colour_mode_uses_true_colours():
    q = grids_to_quizzes(torch.arange(400).reshape(1, 4, 10, 10) % 11)
    out = ansi(render_quiz(q[0]))
    for rgb in COLOR_RGB:
        assert "48;2;{};{};{}".format(*rgb) in out
    # each cell is two characters wide
    line = render_quiz(q[0]).plain.split("\n")[3]
    assert len(line) == 4 * 22 + 3 * GAP
    # predicted frame in the predicted colour
    assert "38;2;{};{};{}".format(*FRAME_RGB["predicted"]) in out


def test_wrong_cells_marked():
    q = random_quizzes(1)[0]
    wrong = torch.zeros(404, dtype=torch.bool)
    wrong[303 + 1 + 12] = True  # block 3, row 1, col 2
    text = render_quiz(q, plain=True, wrong=wrong).plain
    rows = plain_rows(text, 3)
    assert rows[1][2] == WRONG_CHAR
    assert sum(r.count(WRONG_CHAR) for r in rows) == 1
    assert "1 wrong cell" in text.split("\n")[0]
    out = ansi(render_quiz(q, wrong=wrong))
    assert "><" in out
    assert "38;2;{};{};{}".format(*FRAME_RGB["wrong"]) in out


def test_render_solution():
    target = random_quizzes(1, structure=STRUCTURES[1])[0]
    prompt = target.clone()
    prompt[304:] = 0
    pred = target.clone()
    pred[303 + 1 + 5] = (pred[303 + 1 + 5] + 1) % 11
    text = render_solution(prompt, target, pred, index=3, task="frame", plain=True).plain
    lines = text.split("\n")
    assert lines[0].startswith("#3  frame  (f_A, A, f_B, B)")
    assert lines[0].endswith("1 wrong cell")
    assert lines[1].split() == ["f(A)", "A", "f(B)", "B", "target", "B", "model"]
    assert "->" in text
    model_row0 = lines[3][-11:-1]
    target_row0 = lines[3][-25:-15]
    assert model_row0[5] == WRONG_CHAR and target_row0[5] != WRONG_CHAR
    right = render_solution(prompt, target, target, plain=True).plain
    assert right.split("\n")[0].endswith("correct") and WRONG_CHAR not in right
    out = ansi(render_solution(prompt, target, target))
    assert "38;2;{};{};{}".format(*FRAME_RGB["correct"]) in out
    # structure 5: three predicted blocks, each with target and model
    t5 = random_quizzes(1, structure=STRUCTURES[4])[0]
    labels = render_solution(t5, t5, t5, plain=True).plain.split("\n")[1]
    assert labels.count("target") == 3 and labels.count("model") == 3


def test_render_solution_needs_same_structure():
    a = random_quizzes(1)[0]
    b = reconfigure(a.unsqueeze(0), STRUCTURES[1].markers)[0]
    with pytest.raises(CultureError):
        render_solution(a, a, b)


def test_width_wraps_panels():
    q = random_quizzes(1)[0]
    text = render_quiz(q, plain=True, width=30).plain
    assert max(len(line) for line in text.split("\n")) <= 30
    assert text.count("f(B)") == 1 and text.count("+----------+") == 6  # 3 plain panels, top+bottom


def test_render_quizzes_batch_and_bad_input():
    q = random_quizzes(3)
    text = render_quizzes(q, indices=[5, 6, 7], tasks=["a", "b", "c"], plain=True).plain
    assert "#5  a" in text and "#7  c" in text
    with pytest.raises(CultureError):
        render_quiz(torch.zeros(404, dtype=torch.long))  # no markers
    with pytest.raises(CultureError):
        render_quiz(q)  # three quizzes


# ----------------------------------------------------------------------- PNG


def test_png_size_and_pixels(tmp_path):
    q = random_quizzes(2, seed=3, structure=STRUCTURES[4])  # predicts blocks 1, 2, 3
    path = tmp_path / "sub" / "q.png"
    img, lay = quizzes_image(q, cell_px=10)
    assert save_quizzes_png(q, path, cell_px=10) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["q.png"]  # no temp file left
    im = Image.open(path).convert("RGB")
    assert im.size == lay.size == img.size
    grid = 10 * 10 + 1
    assert im.size[0] == 2 * 10 + 4 * grid + 3 * 10
    grids = quizzes_to_grids(q)
    for i in range(2):
        for b in range(4):
            for r, c in [(0, 0), (3, 7), (9, 9)]:
                assert im.getpixel(lay.cell_center(i, b, r, c)) == COLOR_RGB[int(grids[i, b, r, c])]
            gx, gy = lay.grid_origin(i, b)
            frame = im.getpixel((gx - 1, gy + 50))
            assert frame == (FRAME_RGB["predicted"] if b in (1, 2, 3) else (255, 255, 255))


def test_png_wrong_cells_crossed_and_frames(tmp_path):
    q = random_quizzes(1, seed=4)
    wrong = torch.zeros(1, 404, dtype=torch.bool)
    wrong[0, 303 + 1 + 44] = True
    img, lay = quizzes_image(q, wrong=wrong, cell_px=16, labels=False)
    x0, y0, x1, y1 = lay.cell_box(0, 3, 4, 4)
    colour = COLOR_RGB[int(q[0, 303 + 1 + 44])]
    inside = {img.getpixel((x, y)) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}
    assert colour in inside and len(inside) > 1  # a cross over the cell colour
    gx, gy = lay.grid_origin(0, 3)
    assert img.getpixel((gx - 1, gy + 50)) == FRAME_RGB["wrong"]
    ok, lay2 = quizzes_image(q, wrong=torch.zeros(1, 404, dtype=torch.bool), cell_px=16, labels=False)
    assert ok.getpixel((gx - 1, gy + 50)) == FRAME_RGB["correct"]
    # no titles: smaller picture
    titled, _ = quizzes_image(q, cell_px=16)
    assert titled.size[1] > img.size[1] and titled.size[0] == img.size[0]


def test_png_ncols(tmp_path):
    q = random_quizzes(5)
    img, lay = quizzes_image(q, cell_px=8, ncols=2)
    one, _ = quizzes_image(q[:1], cell_px=8)
    assert lay.nrows == 3
    # two columns of one quiz's width, 2 * cell_px apart, one margin each side
    assert img.size[0] == 2 * one.size[0] - 2 * lay.margin + 2 * lay.cell_px


def test_solutions_png(tmp_path):
    t = random_quizzes(2, seed=5, structure=STRUCTURES[2])
    p = t.clone()
    p[:, 304:] = 0
    m = t.clone()
    m[1, 304] = (m[1, 304] + 1) % 11
    img, lay = solutions_image(p, t, m, cell_px=10)
    assert lay.panels == (5, 5)
    gx, gy = lay.grid_origin(1, 4)
    assert img.getpixel((gx - 1, gy + 50)) == FRAME_RGB["wrong"]
    gx, gy = lay.grid_origin(0, 4)
    assert img.getpixel((gx - 1, gy + 50)) == FRAME_RGB["correct"]
    gx, gy = lay.grid_origin(0, 3)
    assert img.getpixel((gx - 1, gy + 50)) == FRAME_RGB["predicted"]
    # panel 3 is the target block, panel 4 the model's
    assert img.getpixel(lay.cell_center(0, 3, 2, 2)) == COLOR_RGB[int(quizzes_to_grids(t)[0, 3, 2, 2])]
    path = save_solutions_png(p, t, m, tmp_path / "s.png", cell_px=10)
    assert Image.open(path).size == img.size
    assert block_markers(t).shape == (2, 4)
