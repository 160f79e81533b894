"""``culture-interp patch``: activation and attribution patching on
counterfactual pairs of one task, with the control pairs beside them. The
library is :mod:`culture.circuits`; TransformerLens and matplotlib are
imported inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture_cli.common import (
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    check_min,
    console,
    err_console,
    fail,
    one_of,
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
    check_pair_options,
    load_model_and_pairs,
)

BLOCKS = {"A": 0, "f(A)": 1, "f_A": 1, "fA": 1, "B": 2, "f(B)": 3, "f_B": 3, "fB": 3}


def _block(spec: str) -> int:
    text = str(spec).strip()
    if text.isdigit() and 0 <= int(text) <= 3:
        return int(text)
    if text in BLOCKS:
        return BLOCKS[text]
    fail(f"--block must be A, f(A), B, f(B) or 0..3, got {spec!r}")


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


def patch_command(
    model: ModelOption,
    task: TaskOption,
    vary: VaryOption,
    source: ModelSourceOption = None,
    num_pairs: NumPairsOption = 200,
    what: Annotated[str, typer.Option(
        "--what", metavar=one_of("resid", "layers", "heads", "heads-by-block", "cells"), help="resid (layer x block), layers (attn / MLP outputs), heads, heads-by-block (head x query "
        "block) or cells (layer x the 100 cells of --block).")] = "heads",
    method: Annotated[str, typer.Option("--method", metavar=one_of("activation", "attribution", "both"), help="activation, attribution or both.")] = "both",
    direction: Annotated[str, typer.Option(
        "--direction", metavar=one_of("denoise", "noise"), help="denoise (run corrupted, restore clean activations) or noise (run clean, insert "
        "corrupted ones).")] = "denoise",
    block: Annotated[str, typer.Option("--block", metavar=one_of("A", "f(A)", "B", "f(B)"), help="With --what cells: the block drawn (A, f(A), B, f(B)).")
                     ] = "B",
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", help="Only these layers (resid / cells: 0..n_layers, n_layers = after the last block).",
        show_default=False)] = None,
    control: Annotated[int, typer.Option(
        "--control-pairs", help="Control pairs (factor 'example': f(B) unchanged) scanned beside; 0: none.")] = 50,
    top: Annotated[int, typer.Option("--top", help="Rows of the table of top sites.")] = 10,
    seed: SeedOption = 0,
    png: Annotated[Optional[Path], typer.Option("--png", help="Heatmaps (and scatter) as PNG.", show_default=False)
                   ] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = 50,
    device: DeviceOption = "cpu",
) -> None:
    """Activation / attribution patching between clean and corrupted quizzes of one task.

    Pairs share B; the corrupted example changes --vary so f(B) differs. The
    metric is the logit difference clean vs corrupted answer over the cells
    where they differ, normalised: 0 = corrupted run, 1 = clean run.
    """
    from culture.circuits import DIRECTIONS, METHODS, WHAT

    check_pair_options(num_pairs, batch_size, seed)
    if what not in WHAT:
        fail(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if direction not in DIRECTIONS:
        fail(f"--direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if control < 0 or control == 1:
        fail(f"--control-pairs must be 0 or at least 2, got {control}")
    check_min("--top", top, 1)
    block_index = _block(block)
    layer_ids = None
    if layers:
        from culture_cli.common import parse_ids

        layer_ids = parse_ids(layers, "--layers")

    from culture.circuits import control_pairs, run_patching
    from culture.circuits.plots import save_patch_png

    src, hooked, pairs = load_model_and_pairs(model, source, task, vary, num_pairs, seed, device)
    ctrl = control_pairs(control, task, seed=seed) if control else None
    with progress() as bar:
        report = run_patching(hooked, pairs, what=what, method=method, direction=direction, control=ctrl,
                              block=block_index, layers=layer_ids, batch_size=batch_size,
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
