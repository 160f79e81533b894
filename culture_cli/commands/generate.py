"""``culture-interp generate``: a model solves world quizzes; prompt, target and
its answer side by side, wrong cells marked."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.defaults import CANONICAL_STRUCTURE, PROMPT_NOISE
from culture_cli.common import DeviceOption, ModelSourceOption, check_min, check_noise, console, err_console, fail, plain_output


def generate_command(
    model: Annotated[int, typer.Option("--model", help="Model id in the source.")] = 0,
    source: ModelSourceOption = None,
    task: Annotated[Optional[list[str]], typer.Option(
        "--task", "--tasks", help="World task(s) to draw quizzes from (default: the source's training tasks when it records them, "
        "else the 8 of the published models).",
        show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", help="How many quizzes.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the quizzes, the noise and the sampling.")] = 0,
    structure: Annotated[str, typer.Option(
        "--structure", help="Structure 1..4 (1 = A, f(A), B -> f(B)); or markers like \"f_A,A,f_B,B\".")] = str(CANONICAL_STRUCTURE),
    greedy: Annotated[bool, typer.Option("--greedy", help="Take the most likely token (overrides --temperature).")
                      ] = False,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Sampling temperature (1 = the reference's accuracy test; 0 = greedy).")] = 1.0,
    noise: Annotated[float, typer.Option(
        "--noise", help=f"Prompt noise on the structure's noised block (the test protocol uses {PROMPT_NOISE:g}).")] = 0.0,
    device: DeviceOption = "cpu",
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Also draw the solutions to this PNG file.", show_default=False)] = None,
    plain: Annotated[bool, typer.Option(
        "--plain", help="Plain characters, no colour (automatic in a pipe or with NO_COLOR).")] = False,
) -> None:
    """Let a model solve world quizzes and show its answers next to the targets.

    For each quiz: the given blocks, then the target block and the model's
    block (green frame when right, red with the wrong cells marked otherwise),
    and whether the quiz is solved.
    """
    check_min("--n", n, 1)
    check_min("--seed", seed, 0)
    if not (math.isfinite(temperature) and temperature >= 0):
        fail(f"--temperature must be >= 0, got {temperature}")
    check_noise(noise)

    import torch

    from culture import sources
    from culture.generation import generate
    from culture.quiz import (
        EVAL_STRUCTURES, N_COLORS, add_prompt_noise, ar_mask, parse_structure, reconfigure,
    )
    from culture.render import render_solutions, save_solutions_png, structure_name
    from culture.world import TASKS, generate_quizzes_with_tasks

    try:
        target_structure = parse_structure(structure)
    except ValueError as exc:
        fail(f"--structure: {exc}")
    if target_structure not in EVAL_STRUCTURES:
        fail(f"--structure must be one of the four with a single answer block (1..4), got {structure}")
    run = sources.open_source(source, model, device=device, tasks=task)
    src, dev, task_names = run.source, run.device, run.tasks
    gpt, stored = run.load(model)

    quizzes, task_index = generate_quizzes_with_tasks(n, task_names, seed=seed)
    labels = [TASKS[int(i)] for i in task_index]
    g = torch.Generator().manual_seed(seed)
    targets = reconfigure(quizzes.long(), target_structure.markers)
    prompts = add_prompt_noise(targets, noise, generator=g)
    t = 0.0 if greedy else temperature
    predictions = generate(gpt, prompts, temperature=t, generator=g).cpu()

    mask = ar_mask(targets)
    wrong = (predictions != targets) & mask
    correct = ~wrong.any(1)
    # a cell may receive a marker token (the reference samples the whole vocabulary):
    # shown as empty, and counted wrong
    bad_token = (predictions >= N_COLORS) & mask
    shown = torch.where(bad_token, torch.zeros_like(predictions), predictions)

    mode = "greedy" if t == 0 else f"temperature {t:g}"
    titles = []
    for i in range(n):
        nw = int(wrong[i].sum())
        verdict = "correct" if bool(correct[i]) else f"incorrect ({nw} wrong cell{'s' * (nw != 1)})"
        title = f"#{i}  {labels[i]}  {structure_name(targets[i])}  {verdict}"
        nb = int(bad_token[i].sum())
        if nb:
            title += f"  [{nb} cell{'s' * (nb != 1)} got a marker token]"
        titles.append(title)

    acc = "-" if stored is None else f"{100 * stored:.1f}%"
    header = (f"model {model} ({src.name}, checkpoint accuracy {acc}), {mode}, seed {seed}"
              + (f", prompt noise {noise:g}" if noise > 0 else ""))
    if plain or plain_output():
        sys.stdout.write(header + "\n\n" + render_solutions(prompts, targets, shown, labels=titles,
                                                              plain=True).plain + "\n")
    else:
        console.print(header, highlight=False)
        console.print()
        console.print(render_solutions(prompts, targets, shown, labels=titles, width=console.width),
                      crop=False, soft_wrap=True)
    for i in range(n):
        print(f"quiz {i} ({labels[i]}): {'correct' if bool(correct[i]) else 'incorrect'}")
    print(f"{int(correct.sum())}/{n} correct")
    sys.stdout.flush()
    if png is not None:
        try:
            save_solutions_png(prompts, targets, shown, png, labels=titles)
        except OSError as exc:
            fail(f"cannot write {png}: {exc.strerror or exc}")
        err_console.print(f"wrote {png}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("generate", short_help="A model solves quizzes: prompt, target and answer side by side.")(
        generate_command)
