"""``culture-interp culture report``: what the culture invents (library: culture.culture_report)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from culture_cli.common import (
    JsonOption,
    ModelsSourceOption,
    OptionalOutputDir,
    TasksOption,
    command_group,
    console,
    outputs,
    parse_ids,
    pct_ci,
    phase_progress,
    print_table,
    progress,
    write_json,
    write_json_or_fail,
)

ModelIdsOption = Annotated[Optional[list[str]], typer.Option("--models", help="Model ids (default: all).",
                                                            show_default=False)]

culture_app = command_group("culture", "The culture quizzes of a source: what they invent, who fails them.")


def register(app: typer.Typer) -> None:
    app.add_typer(culture_app, name="culture")


def _mean(entry) -> str:
    if entry["value"] is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def _tables(report: dict) -> list:
    from rich.table import Table

    cls = report["classification"]
    t1 = Table(title="Which world rule explains each c-quiz (oracle over the 15 tasks)", title_justify="left")
    for col, just in (("phase", "right"), ("split", "left"), ("n", "right"), ("matches no rule", "right"),
                      ("by rule", "left")):
        t1.add_column(col, justify=just)
    for row in cls["by_phase"]:
        rules = ", ".join(f"{k} {v}" for k, v in row["by_rule"].items())
        t1.add_row(str(row["phase"] if row["phase"] is not None else "?"), row["split"], str(row["n"]),
                   pct_ci(row["no_rule"]), rules)
    ctl = cls["control_world"]
    t1.caption = (f"control: {ctl['matches_own_task']['n']} world quizzes of {', '.join(ctl['tasks'])} match their own "
                  f"task {pct_ci(ctl['matches_own_task'])}, no rule {pct_ci(ctl['matches_no_rule'])}")

    t2 = Table(title="c-quizzes beside world quizzes (mean [95% bootstrap interval])", title_justify="left")
    for col in ("statistic", "c-quizzes", "world quizzes"):
        t2.add_column(col, justify="left" if col == "statistic" else "right")
    for name, entry in report["statistics"].items():
        t2.add_row(name, _mean(entry["culture"]), _mean(entry["world"]))

    t3 = Table(title="Who fails the c-quizzes (greedy accuracy [95% Wilson]; fails = solve probability "
                     f"<= {report['settings']['fail_below']}, both ways, as the keep rule)", title_justify="left")
    for col in ("model", "made", "greedy on c-quizzes", "greedy on world", "fails now", "failed when kept"):
        t3.add_column(col, justify="right")
    for m in report["models"]:
        t3.add_row(str(m["model"]), str(m["generated"]), pct_ci(m["greedy_on_culture"]), pct_ci(m["greedy_on_world"]),
                   pct_ci(m["fails_now"]), pct_ci(m["failed_when_kept"]))

    t4 = Table(title="Models failing each c-quiz", title_justify="left")
    t4.add_column("models failing", justify="right")
    t4.add_column("now", justify="right")
    t4.add_column("when kept", justify="right")
    now, kept = report["failing_models_per_quiz"]["now"], report["failing_models_per_quiz"]["when_kept"]
    for c in now:
        t4.add_row(c, pct_ci(now[c]), pct_ci(kept[c]) if kept else "-")
    return [t1, t2, t3, t4]


@culture_app.command("report", help="What the culture invents: each c-quiz checked against the 15 world rules, "
                                    "statistics beside world quizzes, who fails which, a gallery.")
def report_command(
    source: ModelsSourceOption = None,
    models: ModelIdsOption = None,
    tasks: TasksOption = None,
    num_world: Annotated[int, typer.Option("--num-world", min=1,
                                           help="World quizzes of the control and the comparison.")] = 500,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the world quizzes and noise draws.")] = 0,
    png: Annotated[OptionalOutputDir, typer.Option("--png", help="Folder for the gallery PNGs (one per matching "
                                                   "rule), written whole.", show_default=False)] = None,
    per_group: Annotated[int, typer.Option("--per-group", min=1, help="Quizzes per gallery picture.")] = 6,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --png folder.")] = False,
    json_path: JsonOption = None,
) -> None:
    from culture.culture_report import culture_report, save_gallery
    from culture.sources import DEFAULT_SOURCE

    ids = parse_ids(models)
    src = source or DEFAULT_SOURCE
    with progress() as bar:
        report = culture_report(src, models=ids, tasks=tasks, num_world=num_world, seed=seed,
                                progress=phase_progress(bar))
    for table in _tables(report):
        print_table(table)
    n = report["c_quizzes"]
    console.print(f"{n['train']} train + {n['test']} test c-quizzes of {report['source']}")
    with outputs() as staged:  # gallery and JSON land together or not at all
        if png is not None:
            save_gallery(report, src, staged.dir(png), per_group=per_group)
        if json_path is not None:
            write_json(staged.file(json_path), report, announce=False)


@culture_app.command("yield", help="Can these models make a culture? The keep rule's verdicts on candidates they "
                                   "generate and, as the control, on world quizzes.")
def yield_command(
    source: ModelsSourceOption = None,
    models: ModelIdsOption = None,
    tasks: TasksOption = None,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Candidates to generate (models in turn).")] = 100,
    num_world: Annotated[int, typer.Option("--num-world", min=1, help="World quizzes of the control.")] = 100,
    temperature_hot: Annotated[float, typer.Option("--temperature-hot", min=0.0,
                                                   help="Temperature of the first generated block (reference 1.5).")] = 1.5,
    max_fail: Annotated[int, typer.Option("--max-fail", min=1, help="At most this many models may fail a kept quiz.")] = 2,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the candidates, world quizzes and noise draws.")] = 0,
    json_path: JsonOption = None,
) -> None:
    from rich.table import Table

    from culture.culture_report import culture_yield
    from culture.sources import DEFAULT_SOURCE

    with progress() as bar:
        res = culture_yield(source or DEFAULT_SOURCE, models=parse_ids(models), candidates=candidates,
                            num_world=num_world, tasks=tasks, seed=seed, temperature_hot=temperature_hot,
                            max_fail=max_fail, progress=phase_progress(bar))
    st = res["settings"]
    table = Table(title=f"The keep rule on {st['candidates']} generated candidates and {st['num_world']} world quizzes "
                        f"(solve both ways >= {st['understands']} or <= {st['not_understands']}, "
                        f"1..{st['max_fail']} fail; share [95% Wilson])", title_justify="left")
    table.add_column("verdict")
    table.add_column("candidates", justify="right")
    table.add_column("world quizzes (control)", justify="right")
    for key in res["candidates"]["verdicts"]:
        table.add_row(key.replace("_", " "), pct_ci(res["candidates"]["verdicts"][key]), pct_ci(res["world"]["verdicts"][key]))
    for k in res["candidates"]["solves"]:
        table.add_row(f"model {k} solves (>= {st['understands']})", pct_ci(res["candidates"]["solves"][k]),
                      pct_ci(res["world"]["solves"][k]))
    for k, qs in res["candidates"]["solve_probability_quantiles"].items():
        w = res["world"]["solve_probability_quantiles"][k]
        table.add_row(f"model {k} solve probability p10 / median / p90",
                      f"{qs['p10']:.2f} / {qs['median']:.2f} / {qs['p90']:.2f}",
                      f"{w['p10']:.2f} / {w['median']:.2f} / {w['p90']:.2f}")
    print_table(table)
    if json_path is not None:
        write_json_or_fail(json_path, res)
