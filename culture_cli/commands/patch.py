"""``culture-interp patch``: activation and attribution patching on
counterfactual pairs of one task, with the control pairs beside them. The
library is :mod:`culture.circuits`; TransformerLens and matplotlib are
imported inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.circuit_settings import DIRECTIONS, METHODS, WHAT, CircuitSettingsError, PatchSettings
from culture.settings import default_of
from culture_cli.common import (
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    console,
    err_console,
    fail,
    one_of,
    option_flag,
    pct_ci,
    phase_progress,
    print_table,
    progress,
    write_json_or_fail,
)
from culture_cli.pair_options import (
    ModelOption,
    NumPairsOption,
    SeedOption,
    TaskOption,
    VaryOption,
    load_model_and_pairs,
)


def _d(name: str):
    """The default of PatchSettings field ``name``: the one source of the defaults below."""
    return default_of(PatchSettings, name)


def _ci(v: float, lo: float, hi: float) -> str:
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def baseline_table(report):
    from rich.table import Table

    b = report.baseline
    t = Table(title="Unpatched runs (per pair: logit difference clean vs corrupted answer over the differing cells)",
              title_justify="left")
    d = b.to_dict()
    families = "clean_run" in d and "corrupted_run" in d
    cols = ["pairs", "LD clean run", "LD corrupted run", "clean run gives clean answer",
            "corrupted run gives clean answer"]
    if families:
        cols += ["transform cells right: clean run", "corrupted run"]
    for col in cols:
        t.add_column(col, justify="right")

    def mean(x):
        return _ci(x["value"], *x["ci95"])

    def share(x):
        return f"{100 * x['value']:.1f}% [{100 * x['ci95'][0]:.1f}, {100 * x['ci95'][1]:.1f}]"

    row = [str(d["n_pairs"]), mean(d["clean_logit_diff"]), mean(d["corrupted_logit_diff"]),
           share(d["clean_accuracy"]), share(d["corrupted_gives_clean_answer"])]
    if families:
        row += [pct_ci(d[f"{side}_run"]["transform_cells"]["cell_accuracy"]) for side in ("clean", "corrupted")]
    t.add_row(*row)
    return t


def top_table(report, top: int):
    from rich.table import Table

    rows = report.site_rows()
    methods = list(report.methods)
    t = Table(title=f"Top sites by |recovery| ({report.direction}; 0 = corrupted run, 1 = clean run; 95% intervals "
              "over pairs)", title_justify="left")
    t.add_column("site", justify="left")
    for m in methods:
        t.add_column(f"{m} recovery", justify="right")
        if m == "activation":
            t.add_column("clean answer", justify="right")
            t.add_column("transform cells right", justify="right")
        if report.control is not None:
            t.add_column(f"control ({m})", justify="right")
    for i in report.ranking()[:top]:
        r = rows[i]
        cells = [r["site"]]
        for m in methods:
            cells.append(_ci(r[m]["recovery"], *r[m]["ci95"]))
            if m == "activation":
                a = r[m]["accuracy"]
                cells.append(f"{100 * a['value']:.0f}% [{100 * a['ci95'][0]:.0f}, {100 * a['ci95'][1]:.0f}]")
                tc = r[m].get("transform_cells")
                cells.append("-" if tc is None else pct_ci(tc["cell_accuracy"], 0))
            if report.control is not None:
                c = r[m]["control"]
                cells.append(_ci(c["value"], *c["ci95"]))
        t.add_row(*cells)
    return t


# every option but --model, --task, --vary, --source, --png, --json and --device is the PatchSettings field of
# the same name (its default, its bounds: checked by PatchSettings.check); tests/test_cli_circuits.py compares them
def patch_command(
    model: ModelOption,
    task: TaskOption,
    vary: VaryOption,
    source: ModelSourceOption = None,
    num_pairs: NumPairsOption = _d("num_pairs"),
    what: Annotated[str, typer.Option(
        "--what", metavar=one_of(*WHAT), help="resid (layer x block), layers (attn / MLP outputs), heads, "
        "heads-by-block (head x query block) or cells (layer x the 100 cells of --block).")] = _d("what"),
    method: Annotated[str, typer.Option("--method", metavar=one_of(*METHODS),
                                        help="activation, attribution or both.")] = _d("method"),
    direction: Annotated[str, typer.Option(
        "--direction", metavar=one_of(*DIRECTIONS), help="denoise (run corrupted, restore clean activations) or "
        "noise (run clean, insert corrupted ones).")] = _d("direction"),
    block: Annotated[str, typer.Option("--block", metavar=one_of("A", "f(A)", "B", "f(B)"),
                                       help="With --what cells: the block drawn (A, f(A), B, f(B)).")
                     ] = _d("block"),
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", help="Only these layers (resid / cells: 0..n_layers, n_layers = after the last block).",
        show_default=False)] = _d("layers"),
    control_pairs: Annotated[int, typer.Option(
        "--control-pairs", help="Control pairs (factor 'example': f(B) unchanged) scanned beside; 0: none.")
    ] = _d("control_pairs"),
    top: Annotated[int, typer.Option("--top", help="Rows of the table of top sites.")] = _d("top"),
    seed: SeedOption = _d("seed"),
    png: Annotated[Optional[Path], typer.Option("--png", help="Heatmaps (and scatter) as PNG.", show_default=False)
                   ] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = _d("batch_size"),
    device: DeviceOption = "cpu",
) -> None:
    """Activation / attribution patching between clean and corrupted quizzes of one task.

    Pairs share B; the corrupted example changes --vary so f(B) differs. The
    metric is the logit difference clean vs corrupted answer over the cells
    where they differ, normalised: 0 = corrupted run, 1 = clean run.

    Memory grows with --batch-size (one batch's activations and, for
    attribution, its backward pass: about 250 MB a pair at the 37M shape) and
    linearly with --num-pairs x sites (a few numbers per site and pair).
    The unpatched runs come first (one forward of each side): a clean run
    that does not prefer the clean answer is refused before the scan.
    """
    layer_ids = None
    if layers:
        from culture_cli.common import parse_ids

        layer_ids = tuple(parse_ids(layers, "--layers"))
    try:
        settings = PatchSettings(num_pairs=num_pairs, what=what, method=method, direction=direction, block=block,
                                 layers=layer_ids, control_pairs=control_pairs, top=top, seed=seed,
                                 batch_size=batch_size).check()
    except CircuitSettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")

    from culture.circuits import control_pairs as make_control_pairs
    from culture.circuits import run_patching
    from culture.circuits.plots import save_patch_png

    src, hooked, pairs = load_model_and_pairs(model, source, task, vary, num_pairs, seed, device)
    ctrl = make_control_pairs(control_pairs, task, seed=seed) if control_pairs else None
    with progress() as bar:
        report = run_patching(hooked, pairs, what=what, method=method, direction=direction, control=ctrl,
                              block=settings.block_index, layers=layer_ids, batch_size=batch_size,
                              progress=phase_progress(bar))
    report.settings.update({"model": model, "source": src.name, "seed": seed})
    print_table(baseline_table(report))
    print_table(top_table(report, top))
    agree = report.agreement()
    if agree is not None and agree["pearson_r"] is not None:
        console.print(f"attribution vs activation over {agree['n_sites']} sites: Pearson r {agree['pearson_r']:.3f}, "
                      f"Spearman rho {agree['spearman_rho']:.3f}, top-{agree['k']} overlap "
                      f"{100 * agree['top_k_overlap']:.0f}%, same top site: {'yes' if agree['same_top_site'] else 'no'}",
                      highlight=False)
    if png is not None:
        save_patch_png(report, png, title=f"model {model} ({src.name}), --what {what}", quiz=pairs.clean[0])
        err_console.print(f"wrote {png}", highlight=False)
    if json_path is not None:
        write_json_or_fail(json_path, report.to_dict())


def register(app: typer.Typer) -> None:
    app.command("patch", short_help="Activation / attribution patching on counterfactual pairs of a task.")(
        patch_command)
