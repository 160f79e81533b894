"""``culture-interp zoo``: the bundled model zoo (pack a training run into it, show its card)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from culture_cli.common import command_group, console, err_console, fail

zoo_app = command_group("zoo", "The bundled model zoo (--source bundled): pack a training run, show the model card.")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")


@zoo_app.command("pack", help="Pack a `culture-interp train` run into a zoo folder (fp16) and evaluate it.")
def pack(
    run: Path = typer.Option(..., "--run", help="The training run directory."),
    dest: Optional[Path] = typer.Option(
        None, "--dest", help="Zoo folder to write, replaced whole (load it with --source DIR). Without it, "
        "--force replaces the package's own bundled zoo."),
    force: bool = typer.Option(False, "--force", help="Replace the package's bundled zoo (no --dest), or a "
                               "non-empty --dest that is not a zoo."),
    models: Optional[list[int]] = typer.Option(None, "--models", help="Which models of the run (default: all)."),
    num_samples: int = typer.Option(500, "--num-samples", min=1, help="Quizzes for the model card's evaluation."),
    note: Optional[str] = typer.Option(None, "--note", help="A sentence for the model card's culture section "
                                       "(e.g. why the threshold differs from the reference's).", show_default=False),
) -> None:
    from culture.bundle import ZOO_DIR, pack_zoo

    if not run.is_dir():
        fail(f"run directory not found: {run}")
    if dest is None and not force:
        fail(f"zoo pack writes a zoo folder: give --dest DIR, or --force to replace the package's own "
             f"bundled zoo ({ZOO_DIR})")
    target = dest or ZOO_DIR
    if dest is not None and not force and dest.is_dir() and any(dest.iterdir()) \
            and not (dest / "zoo.json").is_file() and not any(dest.glob("gpt_*.pth")):
        fail(f"--dest {dest} is not empty and holds no zoo (use --force to replace it)")
    info = pack_zoo(run, target, models=models, num_samples=num_samples, note=note)
    rows = info["evaluation"]["results"]["models"]
    for k, r in enumerate(rows):
        console.print(f"model {k}: greedy {r['greedy_accuracy']:.4f}  expected {r['expected_accuracy']:.4f}")
    err_console.print(f"wrote {target}", highlight=False)


@zoo_app.command("card", help="Print the bundled zoo's model card; --update first evaluates its SAEs held out "
                  "and rewrites the card (SAE section, zoo size).")
def card(
    update: bool = typer.Option(False, "--update", help="Evaluate the zoo's SAEs (culture/zoo/sae/gpt-K*/) on "
                                "held-out quizzes and rewrite MODEL_CARD.md and zoo.json."),
    num_samples: int = typer.Option(500, "--num-samples", min=1, help="Held-out quizzes for the SAE figures."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Zoo folder (default: the package's culture/zoo)."),
) -> None:
    from rich.markdown import Markdown

    from culture.bundle import ZOO_DIR

    folder = dest or ZOO_DIR
    if update:
        from culture.bundle import refresh_card

        info = refresh_card(folder, num_samples=num_samples)
        for e in info.get("saes", []):
            h = e["heldout"]
            err_console.print(f"{e['folder']}: var. expl. {h['explained_variance']:.3f}  L0 {h['l0']:.1f}  "
                              f"dead {h['dead_features']}", highlight=False)
    path = folder / "MODEL_CARD.md"
    if not path.is_file():
        fail("the bundled zoo has no model card (no models packed yet)")
    console.print(Markdown(path.read_text()))
