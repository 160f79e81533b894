"""Options and loading shared by the commands that work on counterfactual
pairs (``patch``, ``circuit``): the model, the task, the varied factor."""

from __future__ import annotations

from typing import Annotated

import typer

from culture_cli.common import err_console, fail

ModelOption = Annotated[int, typer.Option("--model", help="Model id (gpt_{K:03d}.pth of the source).")]
TaskOption = Annotated[str, typer.Option("--task", help="World task of the pairs (e.g. replace_color).")]
VaryOption = Annotated[str, typer.Option(
    "--vary", help="Factor the corrupted example changes (culture.world.PAIR_FACTORS of the task; 'task': the "
    "example comes from another task).")]
NumPairsOption = Annotated[int, typer.Option("--num-pairs", "-n", help="Counterfactual pairs.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the pairs.")]


def load_model_and_pairs(model: int, source, task: str, vary: str, num_pairs: int, seed: int, device: str):
    """(source, hooked model, pairs): the task and factor are checked before
    any model is loaded; a factor whose pairs keep f(B) (``example``) is refused
    as the main pairs."""
    from culture import sources
    from culture.circuits import make_pairs, pair_factors
    from culture.circuits.pairs import CONTROL_FACTOR
    from culture.evaluation import check_device
    from culture.hooked import load_hooked

    factors = pair_factors(task)
    if vary not in factors:
        fail(f"unknown factor {vary!r} for task {task} (choose from {', '.join(factors)})")
    if vary == CONTROL_FACTOR:
        fail(f"--vary {CONTROL_FACTOR} keeps f(B) (the control pairs, shown beside every result); "
             f"choose a factor that changes it: {', '.join(f for f in factors if f != CONTROL_FACTOR)}")
    dev = check_device(device)
    src = sources.resolve_source(source if source is not None else sources.DEFAULT_SOURCE)
    src.check_model_id(model)
    pairs = make_pairs(num_pairs, task, vary, seed=seed)
    hooked = load_hooked(model, src, device=str(dev))
    err_console.print(f"{num_pairs} pairs of {task}, varying {vary} (seed {seed}); model {model} of {src.name}",
                      highlight=False)
    return src, hooked, pairs
