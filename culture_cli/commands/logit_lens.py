"""``culture-interp logit-lens``: the residual stream decoded with the
unembedding, layer by layer (accuracy per task, beside a random-init model),
and direct logit attribution of every component. The library is
:mod:`culture.circuits.logit_lens`."""

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
    TasksOption,
    check_min,
    check_test_set_options,
    err_console,
    pct,
    phase_progress,
    print_table,
    progress,
    write_json_or_fail,
)


#: the test set this command draws by default (its options default to these fields)
TEST_SET = TestSetSettings(num_samples=300, c_quizzes=False)


def lens_table(report, key: str, title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("layer", justify="left")
    for g in report.groups:
        t.add_column(g, justify="right")
    for L, name in enumerate(report.layer_labels):
        cells = []
        for g in report.groups:
            text = pct(report.accuracy[g][L][key]["value"])
            if report.baseline is not None:
                text += f" ({pct(report.baseline[g][L][key]['value'])})"
            cells.append(text)
        t.add_row(name, *cells)
    if key == "cell_accuracy":
        t.add_row("copy paired grid", *[f"{100 * report.copy_baseline[g]['cell_accuracy']:.1f}%"
                                        for g in report.groups])
    return t


def dla_table(report, top: int):
    from rich.table import Table

    t = Table(title="Direct logit attribution: mean contribution to logit(correct) - mean colour logit, on the "
              "transform cells (all predicted cells in the last column)", title_justify="left")
    t.add_column("component", justify="left")
    for g in report.groups:
        t.add_column(g, justify="right")
    t.add_column("all cells", justify="right")
    for c in report.dla_ranking()[:top]:
        vals = [report.dla[g][c]["transform"] for g in report.groups]
        t.add_row(c, *["-" if v is None else f"{v:+.2f}" for v in vals], f"{report.dla['all'][c]['cells']:+.2f}")
    return t


def logit_lens_command(
    model: Annotated[int, typer.Option("--model", help="Model id (gpt_{K:03d}.pth of the source).")],
    source: ModelSourceOption = None,
    tasks: TasksOption = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Test quizzes.")] = TEST_SET.num_samples,
    c_quizzes: CQuizzesOption = TEST_SET.c_quizzes,
    noise: NoiseOption = TEST_SET.noise,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set and of the random-init model.")] = TEST_SET.seed,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline",
                                           help="Also decode a randomly initialised model of the same shape.")] = True,
    top: Annotated[int, typer.Option("--top", help="Rows of the direct logit attribution table.")] = 12,
    png: Annotated[Optional[Path], typer.Option("--png", help="Accuracy-by-layer plot as PNG.", show_default=False)
                   ] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = 50,
    device: DeviceOption = "cpu",
) -> None:
    """Logit lens (accuracy by layer x task) and direct logit attribution.

    No final LayerNorm in these models: decoding the residual with W_U + b_U
    is exact at the last layer. In brackets: the random-init model.

    Memory grows linearly with --num-samples (the direct logit attribution
    keeps two numbers per component and quiz: 1.8 kB a quiz at the 37M
    shape); the lens itself keeps running sums.
    """
    check_test_set_options(num_samples, batch_size, seed, noise)
    check_min("--top", top, 1)
    from culture import sources
    from culture.circuits.logit_lens import logit_lens
    from culture.circuits.plots import save_logit_lens_png
    run = sources.open_source(source, model, device=device, tasks=tasks)
    src, names = run.source, run.tasks
    hooked = run.hooked(model)
    ts = TestSetSettings(num_samples, names, c_quizzes, seed=seed, noise=noise).build(src)
    err_console.print(f"test set: {len(ts)} quizzes ({ts.n_c_quizzes} c-quizzes), seed {seed}, noise {noise:g}",
                      highlight=False)
    with progress() as bar:
        report = logit_lens(hooked, ts, baseline=baseline, seed=seed, batch_size=batch_size,
                            progress=phase_progress(bar))
    report.settings.update({"model": model, "source": src.name})
    bracket = " (random-init model in brackets)" if baseline else ""
    print_table(lens_table(report, "grid_accuracy", f"Logit lens: whole-grid accuracy by layer{bracket}"))
    print_table(lens_table(report, "cell_accuracy", f"Logit lens: accuracy on all predicted cells{bracket}"))
    print_table(lens_table(report, "transform_accuracy",
                           f"Logit lens: accuracy on the transform cells (copying the paired grid: 0%){bracket}"))
    print_table(dla_table(report, top))
    if png is not None:
        save_logit_lens_png(report, png, title=f"logit lens, model {model} ({src.name}), {len(ts)} quizzes "
                            "(dashed: random-init model)")
        err_console.print(f"wrote {png}", highlight=False)
    if json_path is not None:
        write_json_or_fail(json_path, report.to_dict())


def register(app: typer.Typer) -> None:
    app.command("logit-lens", short_help="Logit lens accuracy by layer x task; direct logit attribution.")(
        logit_lens_command)
