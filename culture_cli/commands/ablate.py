"""``culture-interp ablate``: zero / mean ablation of every attention layer, MLP
layer and (``--heads``) attention head, per task, as a table and a heatmap;
``--attention L.H`` draws one head's attention pattern instead. The library is
:mod:`culture.ablation`; TransformerLens and matplotlib are imported inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture_cli.common import (
    BatchSizeOption,
    CQuizzesOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    NoiseOption,
    TasksOption,
    check_test_set_options,
    console,
    err_console,
    fail,
    outputs,
    pct,
    print_table,
    progress,
    write_json,
)


def _loss(x) -> str:
    return "-" if x is None else f"{x:.3g}"


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
            text = f"{_loss(m['loss'])} / {pct(m['greedy_accuracy'], 0)}"
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
    source: ModelSourceOption = None,
    mean: Annotated[bool, typer.Option("--mean", help="Also mean-ablate (per-position mean over the test quizzes).")
                    ] = False,
    heads: Annotated[bool, typer.Option("--heads", help="Also ablate every attention head (hook_z).")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Test quizzes.")] = 400,
    tasks: TasksOption = None,
    c_quizzes: CQuizzesOption = True,
    noise: NoiseOption = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set.")] = 0,
    attention: Annotated[Optional[str], typer.Option(
        "--attention", help="LAYER.HEAD: draw this head's attention pattern over a quiz (needs --png) "
        "instead of ablating.", show_default=False)] = None,
    quiz: Annotated[int, typer.Option("--quiz", help="With --attention: index of the test quiz drawn.")] = 0,
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Heatmap (components x tasks) or, with --attention, the pattern, as PNG.", show_default=False)
    ] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = 50,
    device: DeviceOption = "cpu",
) -> None:
    """Ablate attention layers, MLP layers (and heads): loss and greedy accuracy per task.

    Zero ablation replaces the component's output by 0; --mean by its mean at
    the same position over the test quizzes. Loss = cross-entropy on the
    predicted cells (teacher-forced). --attention L.H --png FILE draws a head's
    attention over one quiz, block boundaries marked.
    """
    check_test_set_options(num_samples, batch_size, seed, noise)
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
    src = sources.resolve_source(source if source is not None else sources.DEFAULT_SOURCE)
    names = resolve_tasks(list(tasks) if tasks else src.default_tasks())
    src.check_model_id(model)
    hooked = load_hooked(model, src, device=str(dev))
    ts = source_test_set(src, num_samples, names, c_quizzes=c_quizzes, seed=seed, noise=noise)

    if attention is not None:
        layer, head = parse_head(attention, hooked.cfg.n_layers, hooked.cfg.n_heads)
        q = ts.quizzes[quiz]
        pattern = attention_pattern(hooked, q, layer, head)
        offset, share = dominant_offset(pattern)
        title = f"model {model}, head {layer}.{head}, quiz {quiz} ({ts.labels[quiz]})"
        console.print(f"head {layer}.{head}: most attended offset {offset} tokens back "
                      f"({100 * share:.0f}% of the queries after the first grid); a grid is 101 tokens",
                      highlight=False)
        with outputs() as staged:
            save_attention_png(pattern, q, staged.file(png), title)
            if json_path is not None:
                write_json(staged.file(json_path), {"model": model, "head": [layer, head], "quiz": quiz,
                                                    "task": ts.labels[quiz], "dominant_offset": offset,
                                                    "share": share}, announce=False)
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
    print_table(_table(results))
    with outputs() as staged:  # all or nothing
        if png is not None:
            save_ablation_heatmap(results, staged.file(png))
        if json_path is not None:
            write_json(staged.file(json_path), results.to_dict(), announce=False)


def register(app: typer.Typer) -> None:
    app.command("ablate", short_help="Zero/mean-ablate layers and heads: loss and accuracy per task; "
                "attention patterns.")(ablate_command)
