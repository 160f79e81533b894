"""``culture-interp circuit`` as a group: ``circuit find`` (the circuit of one
model, :mod:`culture_cli.commands.circuit`; ``circuit --model ...`` without a
subcommand still runs it) and ``circuit compare`` (do the models share
circuits? :mod:`culture.circuits.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from culture_cli.common import (
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    ModelsSourceOption,
    console,
    err_console,
    fail,
    option_flag,
    parse_ids,
    pct_ci,
    phase_progress,
    print_table,
    progress,
    write_json_or_fail,
)
from culture_cli.pair_options import NumPairsOption, SeedOption, TaskOption, VaryOption

HELP = ("Circuits: 'circuit find' (edge attribution patching and faithfulness, one model; the default, so "
        "'circuit --model 0 ...' runs it) and 'circuit compare' (do the models share circuits?).")


class FindByDefault(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to ``find``."""

    default_command = "find"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


circuit_app = typer.Typer(name="circuit", help=HELP, cls=FindByDefault, no_args_is_help=True, add_completion=False,
                          context_settings={"help_option_names": ["-h", "--help"]})


def _ci(x: dict, digits: int = 2) -> str:
    lo, hi = x["ci95"]
    return f"{x['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def reference_table(cmp):
    from rich.table import Table

    layer, head = cmp.reference
    t = Table(title=f"Which head plays head {layer}.{head}'s role (model {cmp.names[0]}); matched within its layer "
              "by role similarity (patching profile, attention by offset, direct logits)", title_justify="left")
    for c in ("model", "matched head", "similarity", "null q95", "best anywhere", "bootstrap agreement",
              "its recovery", "model's top head"):
        t.add_column(c, justify="right")
    for r in cmp.reference_rows():
        null = r.get("null_q95")
        t.add_row(r["model"], r["matched"], f"{r['similarity']:.2f}", "-" if null is None else f"{null:.2f}",
                  r["best_anywhere"], f"{100 * r['stability']:.0f}%", _ci(r["matched_recovery"]),
                  f"{r['top_head']} ({r['top_recovery']:.2f})")
    return t


def matching_table(cmp):
    from rich.table import Table

    t = Table(title="Head matching against shuffled role vectors (mean matched similarity)", title_justify="left")
    for c in ("models", "matched similarity", "null mean", "null q95", "p"):
        t.add_column(c, justify="right")
    for (a, b), m in cmp.matchings.items():
        n = m.null_summary()
        null = ["-"] * 3 if n is None else [f"{n['null_mean']:.3f}", f"{n['null_q95']:.3f}", f"{n['p_value']:.3f}"]
        t.add_row(f"{cmp.names[a]} -> {cmp.names[b]}", f"{m.mean_similarity:.3f}", *null)
    return t


def faithfulness_table(cmp):
    from rich.table import Table

    t = Table(title="Cross-model faithfulness: circuit of model j (row) carried by the matching and patched in "
              "model k (column); diagonal: own circuit. [95% interval: pairs and matchings resampled] "
              "(shuffled-matching null mean)", title_justify="left")
    t.add_column("circuit of", justify="left")
    for name in cmp.names:
        t.add_column(f"in {name}", justify="right")
    for j, name in enumerate(cmp.names):
        cells = []
        for k in range(len(cmp.names)):
            text = pct_ci(cmp.faithfulness[j][k])
            null = cmp.null_faithfulness[j][k]
            if null is not None:
                text += f" ({100 * null['mean']:.0f}%)"
            cells.append(text)
        t.add_row(name, *cells)
    return t


def features_table(cmp):
    from rich.table import Table

    f = cmp.features
    t = Table(title=f"SAE features: of model a's top-{f['top_k']} features by |effect| with a partner in b, the "
              "share whose partner is also in b's top (95% interval over pairs; shuffled-match null)",
              title_justify="left")
    for c in ("a -> b", "shared", "k / n", "null mean", "null q95"):
        t.add_column(c, justify="right")
    for key, s in f["shared"].items():
        null = ["-" if s[k] is None else f"{100 * s[k]:.1f}%" for k in ("null_mean", "null_q95")]
        t.add_row(key, pct_ci(s), f"{s['k']} / {s['n']}", *null)
    return t


def _d(name: str):
    """The default of CircuitCompareSettings field ``name``: the one source of the defaults below."""
    from culture.circuit_settings import CircuitCompareSettings
    from culture.settings import default_of

    return default_of(CircuitCompareSettings, name)


#: the options of `circuit compare` that are not CircuitCompareSettings fields (the run's inputs and outputs);
#: every other option is the field of the same name (tests/test_cross_circuits.py compares the defaults)
COMPARE_INPUTS = ("models", "task", "vary", "source", "profile_tasks", "sae", "png", "json_path", "device")


@circuit_app.command("compare")
def compare_command(
    models: Annotated[list[str], typer.Option(
        "--models", help="Model ids, at least 2 (--models 0 1 2 3); the first is the reference.")],
    task: TaskOption,
    vary: VaryOption,
    source: ModelsSourceOption = None,
    num_pairs: NumPairsOption = _d("num_pairs"),
    profile_tasks: Annotated[Optional[list[str]], typer.Option(
        "--profile-tasks", help="Tasks whose factors make the heads' patching profile (default: the source's "
        "training tasks when it records them, else --task).", show_default=False)] = None,
    profile_pairs: Annotated[int, typer.Option(
        "--profile-pairs", help="Pairs per (task, factor) of the patching profile.")] = _d("profile_pairs"),
    edges: Annotated[int, typer.Option("--edges", help="Circuit size: each model's top edges by score.")] = _d(
        "edges"),
    ig_steps: Annotated[int, typer.Option(
        "--ig-steps", help="Edge scores: gradients averaged over this many interpolations (EAP-IG); 0: EAP.")] = _d(
        "ig_steps"),
    head: Annotated[Optional[str], typer.Option(
        "--head", help="Reference head L.H of the first model (default: its head of highest recovery).",
        show_default=False)] = _d("head"),
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap draws of the pairs.")] = _d("resamples"),
    match_resamples: Annotated[int, typer.Option(
        "--match-resamples", help="Head matchings re-done on resampled role data, and SAE-feature matchings on "
        "resampled quizzes (each bootstrap draw uses one of each).")] = _d(
        "match_resamples"),
    null_draws: Annotated[int, typer.Option(
        "--null-draws", help="Shuffled role vectors (head matching null) and shuffled matches (feature null).")] = _d(
        "null_draws"),
    null_circuits: Annotated[int, typer.Option(
        "--null-circuits", help="Circuits carried by random head permutations (faithfulness null).")] = _d(
        "null_circuits"),
    sae: Annotated[Optional[list[str]], typer.Option(
        "--sae", help="SAE features on the circuit: 'bundled' (each model's SAE in the zoo) or one SAELens "
        "directory per model, in --models order; default: none.", show_default=False)] = None,
    top_features: Annotated[int, typer.Option(
        "--top-features", help="A model's causal features: its top features by |effect|.")] = _d("top_features"),
    feature_quizzes: Annotated[int, typer.Option(
        "--feature-quizzes", help="Quizzes on which the models' SAE features are matched.")] = _d("feature_quizzes"),
    seed: SeedOption = _d("seed"),
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Role of the reference head per model and the faithfulness matrix as PNG.",
        show_default=False)] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = _d("batch_size"),
    device: DeviceOption = "cpu",
) -> None:
    """Do the models share circuits? Heads matched by role, cross-model faithfulness, SAE features.

    Every model runs the same counterfactual pairs of --task / --vary. Heads are
    matched within each layer by their roles (against shuffled role vectors);
    model j's circuit (top --edges edges) is carried to model k through the
    matching and patched in k alone (rest patched from the corrupted run).
    """
    settings = _compare_settings(dict(locals()))
    ids = parse_ids(models, "--models")
    if ids is None or len(ids) < 2:
        fail("--models: give at least 2 model ids")
    bundled_sae = bool(sae) and list(sae) == ["bundled"]
    if sae and not bundled_sae and len(sae) != len(ids):
        fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(ids)} models), or --sae bundled")

    from culture.circuits import pair_factors
    from culture.circuits.pairs import CONTROL_FACTOR
    from culture.sources import open_source

    factors = pair_factors(task)
    if vary not in factors or vary == CONTROL_FACTOR:
        fail(f"--vary must be a factor of {task} that changes f(B): "
             f"{', '.join(f for f in factors if f != CONTROL_FACTOR)}; got {vary!r}")
    run = open_source(source, ids, device=device)
    tasks = list(profile_tasks) if profile_tasks else (run.source.default_tasks() or [task])
    for t in tasks:
        pair_factors(t)
    if head is not None:
        from culture.circuits.matching import parse_head

        parse_head(head, 10**9, 10**9)  # the form now; the model's shape once loaded

    from culture.circuits.compare import compare_circuits
    from culture.circuits.compare_plots import save_comparison_png
    from culture.hooked import load_hooked

    dev = str(run.device)
    hooked = load_hooked(ids, run.source, device=dev)
    saes = None
    if sae:
        from culture.sae import bundled_sae_folder, load_sae

        saes = ([load_sae("bundled", bundled_sae_folder(k), device=dev) for k in ids] if bundled_sae
                else [load_sae(p, device=dev) for p in sae])
    err_console.print(f"models {', '.join(map(str, ids))} of {run.source.name}: {num_pairs} pairs of {task}, varying "
                      f"{vary} (seed {seed}); profile over {', '.join(tasks)}", highlight=False)
    with progress() as bar:
        cmp = compare_circuits(hooked, task, vary, settings=settings, names=[str(k) for k in ids],
                               profile_tasks=tasks, saes=saes, progress=phase_progress(bar))
    cmp.settings.update({"models": ids, "source": run.source.name})
    print_table(reference_table(cmp))
    print_table(matching_table(cmp))
    print_table(faithfulness_table(cmp))
    if cmp.features is not None:
        print_table(features_table(cmp))
    console.print(f"circuits: top {edges} of {cmp.settings['n_edges']} edges per model; heads on them: "
                  + "; ".join(f"model {n}: {', '.join(h) or '-'}" for n, h in zip(cmp.names, cmp.circuit_heads)),
                  highlight=False)
    if png is not None:
        save_comparison_png(cmp, png)
        err_console.print(f"wrote {png}", highlight=False)
    if json_path is not None:
        write_json_or_fail(json_path, cmp.to_dict())


def _compare_settings(options: dict):
    """The CircuitCompareSettings of the options (same names), checked: a bound
    broken is one line naming the option."""
    from dataclasses import fields

    from culture.circuit_settings import CircuitCompareSettings, CircuitSettingsError

    values = {f.name: options[f.name] for f in fields(CircuitCompareSettings) if f.name in options}
    try:
        return CircuitCompareSettings(**values).check()
    except CircuitSettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")


def register(app: typer.Typer) -> None:
    from culture_cli.commands.circuit import circuit_command

    circuit_app.command("find", short_help="Circuit discovery (edge attribution patching) with its faithfulness.")(
        circuit_command)
    app.add_typer(circuit_app, name="circuit", help=HELP,
                  short_help="Circuits: find one (default) or compare them across models.")
