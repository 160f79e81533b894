"""``culture-interp ablate``: zero / mean / resample ablation of every attention
layer, MLP layer and (``--heads``) attention head, per task, as tables and a
heatmap; ``--attention L.H`` averages one head's attention over the test set
instead. The library is
:mod:`culture.ablation`; TransformerLens and matplotlib are imported inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.settings import TestSetSettings
from culture_cli.common import (
    BatchSizeOption,
    CQuizzesOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    NoiseOption,
    QuizKindsOption,
    TasksOption,
    check_test_set_options,
    err_console,
    fail,
    num_ci,
    pct_ci,
    points_ci,
    print_table,
    progress,
    write_outputs,
)


#: the test set this command draws by default (its options default to these fields)
TEST_SET = TestSetSettings(num_samples=400)


def _loss(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _colour(text: str, ratio) -> str:
    """Red when the ablation multiplies the loss by 2 or more, bold red by 10."""
    if ratio is None:
        return text
    return f"[bold red]{text}[/]" if ratio >= 10 else (f"[red]{text}[/]" if ratio >= 2 else text)


def _ce(family: dict) -> str:
    ratio = family.get("ce_ratio")
    return f"{_loss(family['ce']['value'])}" + (f" (x{ratio:.3g})" if ratio is not None else "")


def _summary_table(results):
    """Over all quizzes: both cell families, intervals, the paired change."""
    from rich.table import Table

    n = results.clean["all"]["n"]
    table = Table(title=f"Ablations over all {n} quizzes: all predicted cells | transform cells "
                  "(95% intervals; change vs clean: paired)", title_justify="left")
    for name in ("component", "mode", "CE/cell: all", "CE/cell: transform", "grid acc: all", "grid acc: transform",
                 "change in grid acc: all (points)", "change: transform"):
        table.add_column(name, justify="left" if name in ("component", "mode") else "right")

    def row(name: str, mode: str, m: dict) -> list[str]:
        a, t = m["all_cells"], m["transform_cells"]
        return [name, mode, _colour(_ce(a), a.get("ce_ratio")), _colour(_ce(t), t.get("ce_ratio")),
                pct_ci(a["grid_accuracy"]), pct_ci(t["grid_accuracy"]),
                points_ci(a.get("change", {}).get("grid_accuracy")),
                points_ci(t.get("change", {}).get("grid_accuracy"))]

    table.add_row(*row("clean", "", results.clean["all"]), end_section=True)
    for r in results.rows:
        table.add_row(*row(r["component"], r["mode"], r["metrics"]["all"]))
    return table


def _task_table(results):
    """Per task: whole-grid accuracy on all cells / on transform cells."""
    from rich.table import Table

    groups = [g for g in results.groups if g != "all"]
    table = Table(title="By task: whole-grid accuracy, all cells / transform cells (95% intervals; red: loss x2, "
                  "bold: x10)", title_justify="left")
    table.add_column("component", justify="left")
    table.add_column("mode", justify="left")
    for g in groups:
        table.add_column(g, justify="right")

    def cells(metrics: dict) -> list[str]:
        out = []
        for g in groups:
            a, t = metrics[g]["all_cells"], metrics[g]["transform_cells"]
            out.append(_colour(f"{pct_ci(a['grid_accuracy'], 0)} / {pct_ci(t['grid_accuracy'], 0)}",
                               a.get("ce_ratio")))
        return out

    table.add_row("clean", "", *cells(results.clean), end_section=True)
    for r in results.rows:
        table.add_row(r["component"], r["mode"], *cells(r["metrics"]))
    return table


def _attention_tables(stats):
    from rich.table import Table

    from culture.ablation import KEY_GROUPS

    t1 = Table(title=f"Head {stats.layer}.{stats.head}: attention mass by query grid (the cells it predicts) and "
               f"key grid, mean over {stats.n} quizzes [95% interval]", title_justify="left")
    t1.add_column("query", justify="left")
    for k in KEY_GROUPS:
        t1.add_column(k, justify="right")
    for g, row in stats.by_block.items():
        t1.add_row(g, *[num_ci(row[k], 2) for k in KEY_GROUPS], end_section=g == "answer: copy cells")
    t2 = Table(title="Look-back offsets over the answer cells' queries (offset d: the key reads the token d+1 "
               "before the one predicted)", title_justify="left")
    for name in ("offset", "key reads", "mean attention", "share of queries with their maximum there"):
        t2.add_column(name, justify="left" if name == "key reads" else "right")
    for o in stats.offsets:
        t2.add_row(str(o["offset"]), o["reads"], num_ci(o["mass"], 3), pct_ci(o["argmax_share"]))
    return t1, t2


def ablate_command(
    model: Annotated[int, typer.Option("--model", help="Model id (gpt_{K:03d}.pth of the source).")],
    source: ModelSourceOption = None,
    mean: Annotated[bool, typer.Option(
        "--mean", help="Also mean-ablate (mean over the test quizzes of the same structure, per position).")
                    ] = False,
    heads: Annotated[bool, typer.Option("--heads", help="Also ablate every attention head (hook_z).")] = False,
    resample: Annotated[bool, typer.Option(
        "--resample", help="Also resample-ablate (the activation of another test quiz of the same structure and "
        "task).")] = False,
    pooled_mean: Annotated[bool, typer.Option(
        "--pooled-mean", help="Also mean-ablate with the mean over all quizzes (structures pooled; for "
        "comparison).")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Test quizzes.")] = TEST_SET.num_samples,
    tasks: TasksOption = None,
    quizzes: QuizKindsOption = TEST_SET.quizzes,
    c_quizzes: CQuizzesOption = TEST_SET.c_quizzes,
    noise: NoiseOption = TEST_SET.noise,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set.")] = TEST_SET.seed,
    attention: Annotated[Optional[str], typer.Option(
        "--attention", help="LAYER.HEAD: this head's attention averaged over the test quizzes (by grid, by "
        "look-back offset; --png: the mean pattern per structure) instead of ablating.", show_default=False)] = None,
    quiz: Annotated[Optional[int], typer.Option(
        "--quiz", help="With --attention --png: draw this one test quiz's pattern instead of the mean.",
        show_default=False)] = None,
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Heatmap (components x tasks) or, with --attention, the patterns, as PNG.",
        show_default=False)] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = 50,
    device: DeviceOption = "cpu",
) -> None:
    """Ablate attention layers, MLP layers (and heads): loss and accuracy per task,
    on all predicted cells and on the transform cells.

    Zero ablation replaces the component's output by 0; --mean by its mean at
    the same position over the test quizzes of the same structure; --resample
    by its activation on another test quiz of the same structure and task;
    --pooled-mean by the mean over all quizzes. Loss = cross-entropy per
    predicted cell (teacher-forced); 95% intervals, paired against clean.
    --attention L.H averages a head's attention over the test quizzes.

    Memory grows linearly with --num-samples x components (a few scores per
    quiz and component); --resample also holds one component's activation for
    every test quiz (404 x d_model floats a quiz: 0.8 MB at the 37M shape).
    """
    check_test_set_options(num_samples, batch_size, seed, noise)
    if attention is not None:
        if mean or heads or resample or pooled_mean:
            fail("--attention studies one head; --mean / --resample / --pooled-mean / --heads are for ablations")
        if quiz is not None and png is None:
            fail("--quiz needs --png PATH (the picture of that quiz's pattern)")
        if quiz is not None and not 0 <= quiz < num_samples:
            fail(f"--quiz must be in 0..{num_samples - 1}, got {quiz}")
    elif quiz is not None:
        fail("--quiz goes with --attention")
    from culture.ablation import parse_head

    if attention is not None:
        parse_head(attention)  # syntax before loading anything

    from culture import sources
    from culture.ablation import (
        attention_pattern,
        attention_statistics,
        run_ablations,
        save_ablation_heatmap,
        save_attention_png,
        save_mean_attention_png,
    )

    run = sources.open_source(source, model, device=device, tasks=tasks)
    src, dev, names = run.source, run.device, run.tasks
    hooked = run.hooked(model)
    ts = TestSetSettings(num_samples, names, c_quizzes, quizzes, seed, noise).build(src)
    err_console.print(f"test set: {len(ts)} quizzes ({len(ts) - ts.n_c_quizzes} world, {ts.n_c_quizzes} "
                      f"c-quizzes), seed {seed}, noise {noise:g}", highlight=False)

    if attention is not None:
        layer, head = parse_head(attention, hooked.cfg.n_layers, hooked.cfg.n_heads)
        with progress() as bar:
            task_id = bar.add_task(f"attention of head {layer}.{head}", total=len(ts))
            stats = attention_statistics(hooked, ts, layer, head, batch_size=batch_size, device=dev,
                                         progress=lambda phase, done, total: bar.update(task_id, completed=done))
        for table in _attention_tables(stats):
            print_table(table)

        def draw(path):
            if quiz is not None:
                q = ts.quizzes[quiz]
                save_attention_png(attention_pattern(hooked, q, layer, head), q, path,
                                   f"model {model}, head {layer}.{head}, quiz {quiz} ({ts.labels[quiz]})")
            else:
                save_mean_attention_png(stats, path, f"model {model}, head {layer}.{head}: attention averaged "
                                        f"over {stats.n} test quizzes, per structure")

        d = stats.to_dict()
        d["settings"].update({"model": model, "source": src.name, **ts.settings()})
        write_outputs(png, draw, json_path, d)
        return

    modes = ["zero", *(["mean"] if mean else []), *(["resample"] if resample else []),
             *(["pooled_mean"] if pooled_mean else [])]
    with progress() as bar:
        task_id = None

        def report(phase: str, done: int, total: int) -> None:
            nonlocal task_id
            if task_id is None:
                task_id = bar.add_task("ablations", total=total)
            bar.update(task_id, completed=done)

        results = run_ablations(hooked, ts, heads=heads, modes=modes, batch_size=batch_size, device=dev,
                                progress=report, seed=seed)
    results.settings.update({"model": model, "source": src.name, "quizzes": quizzes, **ts.settings()})
    print_table(_summary_table(results))
    print_table(_task_table(results))
    write_outputs(png, lambda path: save_ablation_heatmap(results, path), json_path, results.to_dict())


def register(app: typer.Typer) -> None:
    app.command("ablate", short_help="Zero/mean/resample-ablate layers and heads: loss and accuracy per task; "
                "attention over many quizzes.")(ablate_command)
