"""``culture-interp show-quiz``: options, files, PNG, errors, and no heavy imports."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from rich.console import Console

from culture.quiz import COLOR_RGB, STRUCTURES, quizzes_to_grids, reconfigure
from culture.render import CELL_CHARS, quiz_to_str
from tests.cli import run_cli

world = pytest.importorskip("culture.world")

PANEL = 14  # plain panel width 12 + gap 2


def quiz_blocks(text: str, quiz: int = 0) -> list[list[str]]:
    """Cell rows of each of the four blocks of the ``quiz``-th quiz (plain)."""
    chunks = text.strip("\n").split("\n\n")
    lines = chunks[quiz].split("\n")
    return [[line[b * PANEL + 1: b * PANEL + 11] for line in lines[3:13]] for b in range(4)]


def grid_rows(grid) -> list[str]:
    return ["".join(CELL_CHARS[int(v)] for v in row) for row in grid]


@pytest.fixture
def cq_file(tmp_path):
    """A c_quizzes.pth: (train_list, test_list) of canonical world quizzes."""
    train = world.generate_quizzes(5, ["frame"], seed=1)
    test = world.generate_quizzes(3, ["contact"], seed=2)
    path = tmp_path / "c_quizzes.pth"
    torch.save(([train[:2], train[2:]], [test]), path)
    return path, train, test


# --------------------------------------------------------------------- basics


def test_help(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "show-quiz" in out
    code, out, _ = run_cli(capsys, "show-quiz", "--help")
    assert code == 0 and "--structure" in out and "--png" in out


def test_show_contact(capsys):
    code, out, err = run_cli(capsys, "show-quiz", "--task", "contact")
    assert code == 0, err
    lines = out.split("\n")
    assert lines[0] == "#0  contact  (A, f_A, B, f_B) [structure 1]"
    assert lines[1].split() == ["A", "f(A)", "B", "f(B)"]
    assert "\x1b" not in out  # not a terminal: plain characters
    q = world.generate_quizzes(1, ["contact"], seed=0)
    assert quiz_blocks(out) == [grid_rows(g) for g in quizzes_to_grids(q)[0]]


def test_tasks_n_seed(capsys):
    code, out, err = run_cli(capsys, "show-quiz", "--task", "contact", "frame", "--n", "4", "--seed", "3")
    assert code == 0, err
    titles = [line for line in out.split("\n") if line.startswith("#")]
    assert len(titles) == 4
    assert {t.split()[1] for t in titles} == {"contact", "frame"}
    assert run_cli(capsys, "show-quiz", "--task", "contact", "frame", "--n", "4", "--seed", "3")[1] == out
    assert run_cli(capsys, "show-quiz", "--task", "contact", "frame", "--n", "4", "--seed", "4")[1] != out
    # default: the eight default tasks, each once for --n 8
    code, out, _ = run_cli(capsys, "show-quiz", "--n", "8")
    names = sorted(line.split()[1] for line in out.split("\n") if line.startswith("#"))
    assert code == 0 and names == sorted(world.DEFAULT_TASKS)


def test_structure_and_noise(capsys):
    code, out, err = run_cli(capsys, "show-quiz", "--task", "frame", "--structure", "2")
    assert code == 0, err
    assert out.split("\n")[1].split() == ["f(A)", "A", "f(B)", "B"]
    q = reconfigure(world.generate_quizzes(1, ["frame"], seed=0), STRUCTURES[1].markers)
    assert quiz_blocks(out) == [grid_rows(g) for g in quizzes_to_grids(q)[0]]
    code, out, _ = run_cli(capsys, "show-quiz", "--task", "frame", "--structure", "f_B,f_A,A,B")
    assert code == 0 and out.split("\n")[2].count("#==========#") == 3
    code, out, _ = run_cli(capsys, "show-quiz", "--task", "frame", "--noise", "0.5")
    assert code == 0 and "noise 0.5:" in out.split("\n")[0]
    clean = run_cli(capsys, "show-quiz", "--task", "frame")[1]
    noisy = quiz_blocks(out)
    assert noisy[2] != quiz_blocks(clean)[2]  # block B (noised in structure 1)
    assert noisy[3] == quiz_blocks(clean)[3]
    code, out, err = run_cli(capsys, "show-quiz", "--task", "frame", "--structure", "3", "--noise", "0.5")
    assert code == 0 and "no prompt noise" in err


def test_colour_output(capsys, monkeypatch):
    import culture_cli.commands.show_quiz as sq

    buf = io.StringIO()
    monkeypatch.setattr(sq, "plain_output", lambda: False)
    monkeypatch.setattr(sq, "console", Console(file=buf, force_terminal=True, color_system="truecolor",
                                               width=120))
    code, _, err = run_cli(capsys, "show-quiz", "--task", "contact")
    assert code == 0, err
    assert "48;2;255;255;255" in buf.getvalue()
    buf.truncate(0)
    code, out, _ = run_cli(capsys, "show-quiz", "--task", "contact", "--plain")
    assert code == 0 and buf.getvalue() == "" and out.startswith("#0  contact")


# ---------------------------------------------------------------------- files


def test_file_c_quizzes(capsys, cq_file):
    path, train, test = cq_file
    code, out, err = run_cli(capsys, "show-quiz", "--file", str(path))
    assert code == 0, err
    assert out.startswith("#0  c_quizzes.pth  (A, f_A, B, f_B)")
    assert quiz_blocks(out) == [grid_rows(g) for g in quizzes_to_grids(train)[0]]
    code, out, err = run_cli(capsys, "show-quiz", "--file", str(path), "--split", "test", "--index", "2")
    assert code == 0, err
    assert out.startswith("#2  c_quizzes.pth[test]")
    assert quiz_blocks(out) == [grid_rows(g) for g in quizzes_to_grids(test)[2]]
    code, out, _ = run_cli(capsys, "show-quiz", "--file", str(path), "--split", "train", "--index", "1,4")
    assert code == 0 and [line.split()[0] for line in out.split("\n") if line.startswith("#")] == ["#1", "#4"]
    assert quiz_blocks(out, 1) == [grid_rows(g) for g in quizzes_to_grids(train)[4]]
    code, out, _ = run_cli(capsys, "show-quiz", "--file", str(path), "--index", "0", "--index", "7")
    assert code == 0 and quiz_blocks(out, 1) == [grid_rows(g) for g in quizzes_to_grids(test)[2]]
    code, out, _ = run_cli(capsys, "show-quiz", "--file", str(path), "--n", "3", "--split", "test")
    assert code == 0 and out.count("c_quizzes.pth[test]") == 3


def test_file_tensor_keeps_structures(capsys, tmp_path):
    q = world.generate_quizzes(2, ["grow"], seed=0)
    q = reconfigure(q, torch.tensor([STRUCTURES[3].markers, STRUCTURES[0].markers]))
    path = tmp_path / "q.pt"
    torch.save(q, path)
    code, out, err = run_cli(capsys, "show-quiz", "--file", str(path), "--n", "2")
    assert code == 0, err
    assert "[structure 4]" in out.split("\n")[0]
    assert out.split("\n")[1].split() == ["f(B)", "B", "f(A)", "A"]
    assert quiz_to_str(q[0], titles=False).split("\n") == out.split("\n")[1:14]


def test_png(capsys, tmp_path):
    path = tmp_path / "pics" / "quiz.png"
    code, out, err = run_cli(capsys, "show-quiz", "--task", "contact", "--n", "2", "--png", str(path))
    assert code == 0, err
    assert out == "" and err.strip() == f"wrote {path}"
    im = Image.open(path).convert("RGB")
    from culture.render import quizzes_image

    q = world.generate_quizzes(2, ["contact"], seed=0)
    _, lay = quizzes_image(q, labels=["x", "y"])
    assert im.size == lay.size
    assert im.getpixel(lay.cell_center(1, 2, 5, 5)) == COLOR_RGB[int(quizzes_to_grids(q)[1, 2, 5, 5])]


# --------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    torch.save(torch.zeros(3, 5, dtype=torch.long), d / "malformed.pt")
    (d / "garbage.pt").write_bytes(b"this is not a torch file")
    torch.save(torch.zeros(2, 404, dtype=torch.long), d / "nomarkers.pt")
    torch.save(world.generate_quizzes(3, ["frame"], seed=0), d / "good.pt")
    torch.save(([], []), d / "empty_cq.pth")
    names = dict(missing="missing.pt", malformed="malformed.pt", garbage="garbage.pt",
                 nomarkers="nomarkers.pt", good="good.pt", empty="empty_cq.pth", dir=".")
    return {k: str(d / v) for k, v in names.items()}


@pytest.mark.parametrize("case", [
    ["--task", "nope"],
    ["--task", "contact", "nope"],
    ["--file", "{missing}"],
    ["--file", "{malformed}"],
    ["--file", "{garbage}"],
    ["--file", "{nomarkers}"],
    ["--file", "{good}", "--index", "3"],
    ["--file", "{good}", "--index", "-1"],
    ["--file", "{good}", "--index", "two"],
    ["--file", "{good}", "--split", "test"],
    ["--file", "{empty}", "--split", "test"],
    ["--file", "{good}", "--task", "frame"],
    ["--structure", "7"],
    ["--structure", "A,A,B,B"],
    ["--structure", "A,f_A,B,g"],
    ["--noise", "1.5"],
    ["--noise", "-0.1"],
    ["--noise", "nan"],
    ["--n", "0"],
    ["--seed", "-1"],
    ["--index", "1"],
    ["--split", "train"],
    ["--task", "contact", "--png", "{dir}"],
])
def test_bad_input_one_line_exit_2(capsys, bad_files, case):
    args = [a.format(**bad_files) for a in case]
    code, out, err = run_cli(capsys, "show-quiz", *args)
    assert code == 2, (out, err)
    assert len(err.strip().split("\n")) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and out == ""


# -------------------------------------------------------------- heavy imports

HEAVY = ("transformer_lens", "sae_lens", "transformers", "datasets")
PROBE = (
    "import json, sys\n"
    "from culture_cli.main import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "    code = 0\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "heavy = sorted(m for m in {heavy!r} if m in sys.modules)\n"
    "print('PROBE=' + json.dumps([code, heavy]))\n"
)


@pytest.mark.parametrize("args", [["--help"], ["show-quiz", "--task", "contact"]])
def test_no_heavy_imports(args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
                          capture_output=True, text=True, timeout=120)
    line = [x for x in proc.stdout.split("\n") if x.startswith("PROBE=")]
    assert line, proc.stderr
    code, heavy = json.loads(line[-1][len("PROBE="):])
    assert code == 0, proc.stderr
    assert heavy == [], f"{' '.join(args)} imported {heavy}"
