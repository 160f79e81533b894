"""``culture-interp show-quiz``: look at world quizzes or quizzes from a file.

Light on purpose: torch, rich and Pillow only (no TransformerLens, SAELens,
transformers or datasets), so it starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from culture_cli.common import check_min, check_noise, console, err_console, fail, one_of, plain_output


#: the most quizzes one show-quiz prints / draws (a PNG of N quizzes is about N x 180 pixels tall)
MAX_SHOWN = 10_000
MAX_SHOWN_PNG = 250


def _check_count(option: str, count: int, png: bool) -> None:
    """Refuse a count of quizzes no one means to look at (memory grows with it)."""
    limit = MAX_SHOWN_PNG if png else MAX_SHOWN
    if count > limit:
        where = "in one PNG" if png else "at once"
        fail(f"{option} {count:,} is more quizzes than show-quiz shows {where} (at most {limit:,}); "
             "use `culture-interp dataset build` for many quizzes")


def _parse_indices(values: list[str]) -> list[int]:
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                fail(f"--index: not an integer: {part!r}")
    return out


def _world_quizzes(tasks: list[str] | None, n: int, seed: int):
    """n world quizzes and their task names: the tasks follow concatenated
    random permutations of ``tasks`` (default: the 8 default tasks), so
    n = len(tasks) shows each once. When all n quizzes come from one task they
    are exactly ``culture.world.generate_quizzes(n, [task], seed)``."""
    import torch

    try:
        from culture import world
    except ImportError as exc:
        fail(f"the world quiz generator (culture.world) is not available: {exc}")
    if not tasks:
        tasks = list(world.DEFAULT_TASKS)
    valid = list(world.TASKS)
    unknown = [t for t in tasks if t not in valid]
    if unknown:
        fail(f"unknown task {unknown[0]!r} (tasks: {', '.join(valid)})")
    g = torch.Generator().manual_seed(seed)
    order: list[str] = []
    while len(order) < n:
        order += [tasks[int(k)] for k in torch.randperm(len(tasks), generator=g)]
    order = order[:n]
    groups = list(dict.fromkeys(order))
    # one task: generate_quizzes(n, [task], seed) exactly; several: one seed per
    # task (the same seed would give every task the same placements)
    seeds = [seed] if len(groups) == 1 else [int(s) for s in torch.randint(2**31 - 1, (len(groups),), generator=g)]
    quizzes = torch.empty(n, 404, dtype=torch.long)
    for task, task_seed in zip(groups, seeds):
        rows = [i for i, t in enumerate(order) if t == task]
        try:
            q = world.generate_quizzes(len(rows), tasks=[task], seed=task_seed)
        except ValueError as exc:
            fail(str(exc))
        quizzes[rows] = torch.as_tensor(q).long().reshape(len(rows), 404)
    return quizzes, order


def show_quiz(
    task: Annotated[Optional[list[str]], typer.Option(
        "--task", "--tasks", help="World task(s) to draw from (repeatable, or several after one flag); "
        "default: the 8 tasks of the published models.", show_default=False)] = None,
    n: Annotated[int, typer.Option(
        "--n", help=f"How many quizzes (at most {MAX_SHOWN:,}; {MAX_SHOWN_PNG} with --png).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (quizzes, task order, noise).")] = 0,
    structure: Annotated[Optional[str], typer.Option(
        "--structure", help="Reconfigure to a structure: 1..5 or markers like \"f_A,A,f_B,B\".",
        show_default=False)] = None,
    noise: Annotated[float, typer.Option(
        "--noise", help="Prompt-noise probability on the structure's noised blocks (0..1).")] = 0.0,
    file: Annotated[Optional[Path], typer.Option(
        "--file", help="Quizzes from a tensor file (n, 404) or a c_quizzes.pth.", show_default=False,
        dir_okay=True)] = None,
    split: Annotated[Optional[str], typer.Option(
        "--split", metavar=one_of("train", "test"), help="With a c_quizzes file: train or test (default both).", show_default=False)] = None,
    index: Annotated[Optional[list[str]], typer.Option(
        "--index", help="With --file: quiz index (repeatable, or \"3,7\"); default the first --n.",
        show_default=False)] = None,
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Write a PNG picture here instead of printing.", show_default=False)] = None,
    plain: Annotated[bool, typer.Option(
        "--plain", help="Plain characters, no colour ('.' empty, 1-9, 'a' gray). Automatic when stdout "
        "is not a terminal or NO_COLOR is set.")] = False,
) -> None:
    """Show quizzes: the four grids A, f(A), B, f(B) in each quiz's own block order, the predicted block(s) framed.

    World quizzes (--task, --n, --seed) or quizzes from a file (--file, --split,
    --index), optionally reconfigured (--structure) and noised (--noise); printed
    in colour on a terminal, in plain characters otherwise, or drawn to --png.
    """
    import torch

    from culture.errors import CultureError
    from culture.quiz import add_prompt_noise, parse_structure, reconfigure, structure_index, STRUCTURES
    from culture.render import render_quizzes, save_quizzes_png, structure_name

    check_min("--n", n, 1)
    _check_count("--n", n, png is not None)
    check_min("--seed", seed, 0)
    check_noise(noise)
    target = None
    if structure is not None:
        try:
            target = parse_structure(structure)
        except ValueError as exc:
            fail(f"--structure: {exc}")

    if file is not None:
        from culture.quizfile import load_quizzes

        if task:
            fail("--task applies to generated quizzes, not to --file")
        if split is not None and split not in ("train", "test"):
            fail(f"--split must be train or test, got {split!r}")
        quizzes = load_quizzes(file, split=split)
        total = quizzes.shape[0]
        if total == 0:
            fail(f"{file}: no quizzes{f' in the {split} split' if split else ''}")
        if index:
            picked = _parse_indices(index)
            _check_count("--index", len(picked), png is not None)
            bad = [i for i in picked if not 0 <= i < total]
            if bad:
                fail(f"--index {bad[0]} out of range: {file} has {total} quizzes (0..{total - 1})")
        else:
            picked = list(range(min(n, total)))
        quizzes = quizzes[picked]
        source = file.name + (f"[{split}]" if split else "")
        names = [source] * len(picked)
    else:
        if split is not None or index:
            fail("--split and --index apply to --file only")
        quizzes, names = _world_quizzes(list(task) if task else None, n, seed)
        picked = list(range(n))

    if target is not None:
        quizzes = reconfigure(quizzes, target.markers)
    noisy_cells = None
    if noise > 0:
        clean = quizzes
        quizzes = add_prompt_noise(quizzes, noise, generator=torch.Generator().manual_seed(seed))
        noisy_cells = (quizzes != clean).sum(1)
        idx = structure_index(quizzes)
        if not any(int(k) >= 0 and STRUCTURES[int(k)].noised for k in idx):
            err_console.print(f"note: no prompt noise in structure {structure_name(quizzes[0])} "
                              f"(only structures 1 and 2 have a noised block)", highlight=False)

    titles = []
    for k, (i, name) in enumerate(zip(picked, names)):
        title = f"#{i}  {name}  {structure_name(quizzes[k])}"
        if noisy_cells is not None:
            title += f"  noise {noise:g}: {int(noisy_cells[k])} cells changed"
        titles.append(title)

    if png is not None:
        try:
            save_quizzes_png(quizzes, png, labels=titles)
        except CultureError:
            raise
        except OSError as exc:
            fail(f"cannot write {png}: {exc.strerror or exc}")
        err_console.print(f"wrote {png}", highlight=False)
        return

    if plain or plain_output():
        sys.stdout.write(render_quizzes(quizzes, labels=titles, plain=True).plain + "\n")
        sys.stdout.flush()
    else:
        console.print(render_quizzes(quizzes, labels=titles, width=console.width), crop=False,
                      soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("show-quiz", short_help="Show quizzes in the terminal (colours or plain) or as a PNG.")(show_quiz)
