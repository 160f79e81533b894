"""``culture-interp ablate``: zero / mean ablation of every attention layer, MLP
layer and (``--heads``) attention head, per task, as a table and a heatmap;
``--attention L.H`` draws one head's attention pattern instead. The library is
:mod:`culture.ablation`; TransformerLens and matplotlib are imported inside."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from culture_cli.common import console, err_console, fail, plain_output, progress, write_json


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _loss(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _print_table(table) -> None:
    """Print a table; in a pipe, as wide as it needs (no cropped cells)."""
    if plain_output():
        import sys

        from rich.console import Console

        width = console.measure(table, options=console.options.update_width(100_000)).maximum
        Console(file=sys.stdout, width=max(console.width, width), no_color=True, highlight=False).print(
            table, crop=False)
    else:
        console.print(table)


def _table(results):
    from rich.table import Table

    multi = len(results.modes()) > 1
    table = Table(title="Ablations: loss on the predicted cells / greedy accuracy, per task", title_justify="left")
    table.add_column("component", justify="left")
    if multi:
        table.add_column("mode", justify="left")
    for g in results.groups:
        table.add_column(g, justify="right")

    def cells(metrics, base=None):
        out = []
        for g in results.groups:
            m = metrics[g]
            text = f"{_loss(m['loss'])} / {_pct(m['greedy_accuracy'])}"
            if base is not None and m["loss"] is not None and base[g]["loss"]:
                ratio = m["loss"] / base[g]["loss"]
                if ratio >= 10:
                    text = f"[bold red]{text}[/]"
                elif ratio >= 2:
                    text = f"[red]{text}[/]"
            out.append(text)
        return out

    table.add_row("clean", *([""] if multi else []), *cells(results.clean))
    for r in results.rows:
        table.add_row(r["component"], *([r["mode"]] if multi else []), *cells(r["metrics"], results.clean))
    return table


def ablate_command(
    model: Annotated[int, typer.Option("--model", help="Model id (gpt_{K:03d}.pth of the source).")],
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Where the model is: a Hugging Face repo id, a directory, or 'bundled' "
        "(default: the published models).", show_default=False)] = None,
    mean: Annotated[bool, typer.Option("--mean", help="Also mean-ablate (per-position mean over the test quizzes).")
                    ] = False,
    heads: Annotated[bool, typer.Option("--heads", help="Also ablate every attention head (hook_z).")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Test quizzes.")] = 400,
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks (default: the 8 of the published models).", show_default=False)
    ] = None,
    c_quizzes: Annotated[bool, typer.Option("--c-quizzes/--no-c-quizzes",
                                            help="Mix in the source's test c-quizzes (at most half).")] = True,
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise (structures 1 and 2).")] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set.")] = 0,
    attention: Annotated[Optional[str], typer.Option(
        "--attention", help="LAYER.HEAD: draw this head's attention pattern over a quiz (needs --png) "
        "instead of ablating.", show_default=False)] = None,
    quiz: Annotated[int, typer.Option("--quiz", help="With --attention: index of the test quiz drawn.")] = 0,
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Heatmap (components x tasks) or, with --attention, the pattern, as PNG.", show_default=False)
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the numbers to this JSON file.",
                                                      show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Quizzes per forward pass.")] = 50,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
) -> None:
    """Ablate attention layers, MLP layers (and heads): loss and greedy accuracy per task.

    Zero ablation replaces the component's output by 0; --mean by its mean at
    the same position over the test quizzes. Loss = cross-entropy on the
    predicted cells (teacher-forced). --attention L.H --png FILE draws a head's
    attention over one quiz, block boundaries marked.
    """
    if num_samples < 1:
        fail(f"--num-samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    if not (math.isfinite(noise) and 0.0 <= noise <= 1.0):
        fail(f"--noise must be a probability in [0, 1], got {noise}")
    if attention is not None:
        if png is None:
            fail("--attention needs --png PATH (the picture of the pattern)")
        if mean or heads:
            fail("--attention draws a pattern; --mean / --heads are for ablations")
        if not 0 <= quiz < num_samples:
            fail(f"--quiz must be in 0..{num_samples - 1}, got {quiz}")
    from culture.ablation import parse_head

    if attention is not None:
        parse_head(attention)  # syntax before loading anything

    from culture import sources
    from culture.ablation import (
        attention_pattern,
        dominant_offset,
        run_ablations,
        save_ablation_heatmap,
        save_attention_png,
        source_test_set,
    )
    from culture.evaluation import check_device
    from culture.hooked import load_hooked
    from culture.world import resolve_tasks

    dev = check_device(device)
    names = resolve_tasks(list(tasks) if tasks else None)
    src = sources.resolve_source(source if source is not None else sources.DEFAULT_SOURCE)
    src.check_model_id(model)
    hooked = load_hooked(model, src, device=str(dev))
    ts = source_test_set(src, num_samples, names, c_quizzes=c_quizzes, seed=seed, noise=noise)

    if attention is not None:
        layer, head = parse_head(attention, hooked.cfg.n_layers, hooked.cfg.n_heads)
        q = ts.quizzes[quiz]
        pattern = attention_pattern(hooked, q, layer, head)
        offset, share = dominant_offset(pattern)
        title = f"model {model}, head {layer}.{head}, quiz {quiz} ({ts.labels[quiz]})"
        save_attention_png(pattern, q, png, title)
        console.print(f"head {layer}.{head}: most attended offset {offset} tokens back "
                      f"({100 * share:.0f}% of the queries after the first grid); a grid is 101 tokens",
                      highlight=False)
        err_console.print(f"wrote {png}", highlight=False)
        if json_path is not None:
            write_json(json_path, {"model": model, "head": [layer, head], "quiz": quiz, "task": ts.labels[quiz],
                                   "dominant_offset": offset, "share": share})
        return

    err_console.print(f"test set: {len(ts)} quizzes ({len(ts) - ts.n_c_quizzes} world, {ts.n_c_quizzes} "
                      f"c-quizzes), seed {seed}, noise {noise:g}", highlight=False)
    modes = ["zero", "mean"] if mean else ["zero"]
    with progress() as bar:
        task_id = None

        def report(phase: str, done: int, total: int) -> None:
            nonlocal task_id
            if task_id is None:
                task_id = bar.add_task("ablations", total=total)
            bar.update(task_id, completed=done)

        results = run_ablations(hooked, ts, heads=heads, modes=modes, batch_size=batch_size, device=dev,
                                progress=report)
    results.settings.update({"model": model, "source": src.name, **ts.settings()})
    _print_table(_table(results))
    if png is not None:
        save_ablation_heatmap(results, png)
        err_console.print(f"wrote {png}", highlight=False)
    if json_path is not None:
        try:
            write_json(json_path, results.to_dict())
        except OSError as exc:
            fail(f"cannot write {json_path}: {exc.strerror or exc}")


def register(app: typer.Typer) -> None:
    app.command("ablate", short_help="Zero/mean-ablate layers and heads: loss and accuracy per task; "
                "attention patterns.")(ablate_command)
