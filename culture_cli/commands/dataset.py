"""``culture-interp dataset build|push``: Hugging Face datasets of quizzes
(see :mod:`culture.dataset`). datasets/pyarrow are imported inside the
commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.defaults import PROMPT_NOISE
from culture_cli.common import command_group, console, err_console, fail, progress

dataset_app = command_group(
    "dataset", "Datasets of quizzes (input_ids 405 = BOS + quiz, label, structure, seed_index): build or push.")


@dataset_app.command("build")
def build(
    n: Annotated[int, typer.Option("--n", help="World quizzes in all, split equally over the tasks.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (save_to_disk layout + parquet), atomically.")],
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks (several after one flag); default: the 8 of the published models.",
        show_default=False)] = None,
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Add all test c-quizzes (label \"culture\") of this model source "
        "(bundled, a directory, a hub repo id) or c_quizzes.pth file.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the quiz streams (structures and noise included).")] = 0,
    noise: Annotated[float, typer.Option("--noise", help="Prompt-noise probability, as in evaluation.")] = PROMPT_NOISE,
    num_proc: Annotated[Optional[int], typer.Option(
        "--num-proc", help="Generation processes (the result does not depend on it); default: one per core "
        "for 50,000 quizzes or more.", show_default=False)] = None,
    partitioned: Annotated[bool, typer.Option(
        "--partitioned", help="Also write the DatasetDict keyed by label (OUT/partitioned).")] = False,
    parquet: Annotated[bool, typer.Option("--parquet/--no-parquet", help="Also write parquet files (OUT/parquet).")] = True,
    push: Annotated[Optional[str], typer.Option(
        "--push", help="Then push to this hub dataset repo (the partitioned one to REPO-partitioned).",
        show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push: create the repos private.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out.")] = False,
) -> None:
    """Build a dataset of world quizzes (+ c-quizzes), shuffled with seed 42; prints the throughput."""
    import time

    from culture.dataset import build_dataset, check_build_args, load_source_c_quizzes

    if private and not push:
        fail("--private needs --push")
    # bad inputs: one line, before any work
    names = check_build_args(out, n, tasks, seed=seed, noise=noise, num_proc=num_proc, overwrite=overwrite)
    if push:
        from culture.hub import check_push

        check_push("dataset", push)
    c_quizzes = None
    if source is not None:
        c_quizzes = load_source_c_quizzes(source)
        if len(c_quizzes):
            err_console.print(f"{len(c_quizzes):,} test c-quizzes from {source}", highlight=False)
        else:
            err_console.print(f"note: {source} has no test c-quizzes: the dataset holds world quizzes only",
                              highlight=False)

    t0 = time.perf_counter()
    with progress() as bar:
        tasks_ids: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks_ids:
                label = {"generate": "generating", "write": "writing"}.get(phase, phase)
                tasks_ids[phase] = bar.add_task(label, total=total)
            bar.update(tasks_ids[phase], completed=done)

        report = build_dataset(out, n, names, c_quizzes=c_quizzes, source=source, seed=seed, noise=noise,
                               num_proc=num_proc, partitioned=partitioned, parquet=parquet, overwrite=overwrite,
                               progress=on_progress)
    per_task = n // len(names)
    if per_task * len(names) != n:
        err_console.print(f"note: {per_task * len(names):,} world quizzes ({per_task:,} per task), "
                          f"not {n:,}: equal counts per task")
    counts = ", ".join(f"{k} {v:,}" for k, v in report.counts.items())
    console.print(f"wrote {report.out}: {report.rows:,} quizzes ({counts})"
                  + (f"; partitioned in {report.out / 'partitioned'}" if partitioned else ""))
    console.print(f"throughput: {report.quizzes_per_second:,.0f} quizzes/s ({report.rows:,} in {report.seconds:.1f} s; "
                  f"generation {report.generate_seconds:.1f} s with {report.num_proc} process(es), "
                  f"writing {report.write_seconds:.1f} s)")
    if push:
        from culture.dataset import push_dataset

        err_console.print(f"pushing to {push}{' (private)' if private else ''}...")
        try:
            pushed = push_dataset(report.out, push, private=private)
        except Exception as exc:  # noqa: BLE001 - the dataset is built: say where it is
            from culture.errors import CultureError

            if isinstance(exc, CultureError):
                raise CultureError(f"{exc} (the dataset is saved in {report.out})") from None
            raise
        console.print(f"pushed {', '.join(pushed)} ({time.perf_counter() - t0:.1f} s in all)")


@dataset_app.command("push")
def push_cmd(
    path: Annotated[Path, typer.Argument(help="A folder written by `dataset build`.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo id.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repos private.")] = False,
    partitioned_repo: Annotated[Optional[str], typer.Option(
        "--partitioned-repo", help="Repo of the partitioned DatasetDict (default REPO-partitioned).",
        show_default=False)] = None,
) -> None:
    """Push a built dataset (and its partitioned DatasetDict, if any) to the hub."""
    from culture.dataset import push_dataset

    if not path.is_dir():
        fail(f"not a folder: {path}")
    pushed = push_dataset(path, repo, private=private, partitioned_repo=partitioned_repo)
    console.print(f"pushed {', '.join(pushed)}")


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
