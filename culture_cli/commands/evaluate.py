"""``culture-interp eval``: the reference's test protocol on one or more models.

Prints a table of models x metrics (perplexity, greedy accuracy, expected
sampled accuracy, sampled accuracy with --generate, the checkpoint's stored
accuracy), then the same numbers by task and by structure; --json writes them
with the settings. Heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.settings import TestSetSettings
from culture_cli.common import (
    BatchSizeOption,
    DeviceOption,
    ModelsSourceOption,
    check_test_set_options,
    err_console,
    num_ci,
    parse_ids,
    pct,
    pct_ci,
    print_table,
    progress,
    write_json_or_fail,
)


def _ppl(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if x < 100 else f"{x:.4g}"


def _cells(entry, key: str, digits: int = 1) -> str:
    """``all / transform`` for one metric of the two cell families."""
    fmt = (lambda d: num_ci(d, 3)) if key == "ce" else (lambda d: pct_ci(d, digits))
    return f"{fmt(entry['all_cells'][key])} / {fmt(entry['transform_cells'][key])}"


def _main_table(results, generate: bool):
    from rich.table import Table

    table = Table(title="Evaluation (95% intervals; all predicted cells / transform cells)", title_justify="left")
    for name in ("model", "perplexity", "greedy acc", "expected sampled acc",
                 *(["sampled acc (generated)"] if generate else []), "transform cells: grid acc",
                 "cell acc: all / transform", "CE per cell: all / transform", "checkpoint acc"):
        table.add_column(name, justify="right")
    for r in results:
        d = r.to_dict()
        row = [r.name, _ppl(r.perplexity), pct_ci({"value": r.greedy_accuracy, "ci95": d["greedy_accuracy_ci95"]}),
               pct_ci({"value": r.expected_accuracy, "ci95": d["expected_accuracy_ci95"]})]
        if generate:
            row.append(pct_ci({"value": r.generated_accuracy, "ci95": d["generated_accuracy_ci95"]}))
        row += [pct_ci(d["transform_cells"]["grid_accuracy"]), _cells(d, "cell_accuracy", 2), _cells(d, "ce"),
                pct(r.checkpoint_accuracy)]
        table.add_row(*row)
    return table


def _breakdown_table(results, key: str, title: str, generate: bool):
    """One row per (group, model): accuracies with intervals, transform-cell
    grid accuracy, cross-entropy per cell on both families."""
    from rich.table import Table

    table = Table(title=f"{title} (95% intervals)", title_justify="left")
    for name in (key.removeprefix("by_"), "model", "n", "greedy acc", "expected sampled acc",
                 *(["sampled acc"] if generate else []), "transform cells: grid acc", "CE per cell: all / transform"):
        table.add_column(name, justify="left" if name == key.removeprefix("by_") else "right")
    first = getattr(results[0], key)
    for i, (group, entry) in enumerate(first.items()):
        name = f"{group} {entry['markers']}" if "markers" in entry else group
        for j, r in enumerate(results):
            e = getattr(r, key)[group]
            row = [name if j == 0 else "", r.name, str(e["n"]),
                   pct_ci({"value": e["greedy_accuracy"], "ci95": e["greedy_accuracy_ci95"]}),
                   pct_ci({"value": e["expected_accuracy"], "ci95": e["expected_accuracy_ci95"]})]
            if generate:
                row.append(pct_ci({"value": e["generated_accuracy"], "ci95": e["generated_accuracy_ci95"]}))
            row += [pct_ci(e["transform_cells"]["grid_accuracy"]), _cells(e, "ce")]
            table.add_row(*row, end_section=j == len(results) - 1 and len(results) > 1)
    return table


def eval_command(
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="Model ids (several after one flag: --models 0 1 2 3); "
        "default: every model of the source.", show_default=False)] = None,
    source: ModelsSourceOption = None,
    num_samples: Annotated[int, typer.Option(
        "--num-samples", "-n", help="Test quizzes (the reference uses 2000; fewer = noisier).")] = TestSetSettings.num_samples,
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks of the test set (default: the source's training tasks when it records them, "
        "else the 8 of the published models).",
        show_default=False)] = None,
    generate: Annotated[bool, typer.Option(
        "--generate", help="Also sample the answers (temperature 1, KV cache): the reference's own accuracy.")
    ] = False,
    c_quizzes: Annotated[bool, typer.Option(
        "--c-quizzes/--no-c-quizzes", help="Mix in the source's test c-quizzes (at most half the test set).")
    ] = TestSetSettings.c_quizzes,
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise probability (structures 1 and 2).")
                     ] = TestSetSettings.noise,
    device: DeviceOption = "cpu",
    batch_size: BatchSizeOption = 100,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", help="Write the numbers and settings to this JSON file.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set and of the sampling.")] = TestSetSettings.seed,
) -> None:
    """Evaluate models on the reference test protocol: perplexity, greedy and expected sampled accuracy.

    Test set (reference): world quizzes of the chosen tasks plus the source's
    test c-quizzes (at most half), each in a structure drawn from the four
    deterministic ones, with prompt noise. Perplexity = exp(mean token
    cross-entropy, teacher-forced). Greedy acc = the argmax is right at every
    predicted cell. Expected sampled acc = mean probability that sampling at
    temperature 1 reproduces the answer (what the reference's sampled accuracy
    estimates). --generate adds the sampled accuracy itself.
    """
    check_test_set_options(num_samples, batch_size, seed, noise)
    ids = parse_ids(models, "--models")

    from culture.evaluation import evaluate
    from culture.sources import open_source

    # tasks default: those the source's models were trained on (bundled zoo,
    # training runs), else the eight of the published models
    run = open_source(source, ids, device=device, tasks=tasks)
    src, dev, ids = run.source, run.device, run.ids
    loaded = run.load_all()  # load (and so check) every model before printing anything
    accuracies = [m.accuracy for m in loaded]

    test_set = TestSetSettings(num_samples, run.tasks, c_quizzes, seed=seed, noise=noise).build(src)
    err_console.print(
        f"test set: {len(test_set)} quizzes ({len(test_set) - test_set.n_c_quizzes} world, "
        f"{test_set.n_c_quizzes} c-quizzes), seed {seed}, noise {noise:g}", highlight=False)

    with progress() as bar:
        tasks_ids: dict[str, int] = {}

        def report(description: str, done: int, total: int) -> None:
            if description not in tasks_ids:
                tasks_ids[description] = bar.add_task(description, total=total)
            bar.update(tasks_ids[description], completed=done)

        results = evaluate(loaded, test_set, generate=generate, device=dev, batch_size=batch_size,
                           progress=report, names=[str(k) for k in ids], checkpoint_accuracies=accuracies,
                           seed=seed)
    results.settings.update({"source": src.name, "models": ids})

    for table in (_main_table(results, generate),
                  _breakdown_table(results, "by_task", "By task", generate),
                  _breakdown_table(results, "by_structure", "By structure", generate)):
        print_table(table)
    if json_path is not None:
        write_json_or_fail(json_path, results.to_dict())


def register(app: typer.Typer) -> None:
    app.command("eval", short_help="Evaluate models: perplexity, greedy / expected / sampled accuracy.")(
        eval_command)
