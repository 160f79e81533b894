"""``culture-interp circuit``: edge attribution patching on counterfactual
pairs of one task, the faithfulness-vs-size curve, and the smallest circuit
of top edges that reaches a faithfulness threshold, drawn as a graph. The
library is :mod:`culture.circuits.discovery`. Registered as ``circuit find``
(the default of the ``circuit`` group) by :mod:`culture_cli.commands.circuit_compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.circuit_settings import CircuitSettings, CircuitSettingsError
from culture.settings import default_of
from culture_cli.common import (
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    console,
    err_console,
    fail,
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
    """The default of CircuitSettings field ``name``: the one source of the defaults below."""
    return default_of(CircuitSettings, name)


def curve_table(report):
    from rich.table import Table

    t = Table(title="Faithfulness vs size (top edges by |score|; the rest patched from the corrupted run)",
              title_justify="left")
    for c in ("edges", "faithfulness", "random edges (mean)"):
        t.add_column(c, justify="right")
    randoms = {p["size"]: p["faithfulness"] for p in report.random_curve}
    for p in report.curve:
        size = p["size"]
        mark = " *" if size == report.chosen_size else ""
        t.add_row(f"{size}{mark}", pct_ci(p["faithfulness"]), pct_ci(randoms[size]) if size in randoms else "")
    return t


def edge_table(report, top: int):
    from rich.table import Table

    t = Table(title="Top edges (score: estimated loss of recovery when the edge is corrupted)", title_justify="left")
    for c in ("rank", "edge", "score"):
        t.add_column(c, justify="right" if c != "edge" else "left")
    for r in report.edge_rows(top):
        t.add_row(str(r["rank"]), f"{r['src']} -> {r['dst']}", f"{r['score']:+.3f}")
    return t


def circuit_command(
    model: ModelOption,
    task: TaskOption,
    vary: VaryOption,
    source: ModelSourceOption = None,
    num_pairs: NumPairsOption = _d("num_pairs"),
    threshold: Annotated[float, typer.Option("--threshold", help="Faithfulness the circuit must reach (0..1).")
                         ] = _d("threshold"),
    sizes: Annotated[Optional[list[str]], typer.Option(
        "--sizes", help="Circuit sizes (edges) of the curve (default: about 12, geometric).", show_default=False)
    ] = _d("sizes"),
    random_circuits: Annotated[int, typer.Option(
        "--random-circuits", help="Random edge sets per size for the baseline curve (0: none).")] = _d("random_circuits"),
    ig_steps: Annotated[int, typer.Option(
        "--ig-steps", help="Edge scores: gradients averaged over this many interpolations from the corrupted to the "
        "clean embeddings (EAP-IG); 0: the gradient at the clean run (EAP).")] = _d("ig_steps"),
    top: Annotated[int, typer.Option("--top", help="Rows of the table of top edges.")] = _d("top"),
    seed: SeedOption = _d("seed"),
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Circuit graph and faithfulness curve as PNG.", show_default=False)] = None,
    json_path: JsonOption = None,
    batch_size: BatchSizeOption = _d("batch_size"),
    device: DeviceOption = "cpu",
) -> None:
    """Find a circuit for a task: edge attribution patching, then faithfulness by edge patching.

    Nodes: embed, heads, MLPs, readout. Faithfulness: the clean run with every
    edge outside the circuit patched from the corrupted run (not mean-ablated),
    as recovery of the logit difference (0 = corrupted run, 1 = clean run).

    Memory grows with --batch-size (one batch's node outputs and input
    gradients, about 2 GB a pair at the 37M shape) and linearly with
    --num-pairs x circuits evaluated (one number per circuit and pair). The
    sizes, the hooks and the unpatched runs (one forward of each side) are
    checked first: a clean run that does not prefer the clean answer is
    refused before the edge scores.
    """
    size_list = None
    if sizes:
        from culture_cli.common import parse_ids

        size_list = parse_ids(sizes, "--sizes")
    try:
        CircuitSettings(num_pairs=num_pairs, threshold=threshold,
                        sizes=None if size_list is None else tuple(size_list), random_circuits=random_circuits,
                        ig_steps=ig_steps, top=top, seed=seed, batch_size=batch_size).check()
    except CircuitSettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")

    from culture.circuits.discovery import discover_circuit
    from culture.circuits.plots import save_circuit_png

    src, hooked, pairs = load_model_and_pairs(model, source, task, vary, num_pairs, seed, device)
    with progress() as bar:
        report = discover_circuit(hooked, pairs, threshold=threshold, sizes=size_list,
                                  random_circuits=random_circuits, ig_steps=ig_steps, seed=seed,
                                  batch_size=batch_size,
                                  progress=phase_progress(bar))
    report.settings.update({"model": model, "source": src.name})
    print_table(edge_table(report, top))
    print_table(curve_table(report))
    n_edges = len(report.edges)
    if report.chosen_size is not None:
        console.print(f"smallest circuit reaching {100 * threshold:.0f}%: {report.chosen_size} of {n_edges} edges, "
                      f"faithfulness {pct_ci(report.chosen_faithfulness())}", highlight=False)
    else:
        console.print(f"no evaluated size reaches {100 * threshold:.0f}% faithfulness (largest: "
                      f"{max(p['size'] for p in report.curve)} of {n_edges} edges, "
                      f"{pct_ci(report.chosen_faithfulness())}); see the curve", highlight=False)
    if png is not None:
        save_circuit_png(report, png, title=f"model {model} ({src.name}), task {task}, vary {vary}, "
                                            f"{len(pairs)} pairs; rest of the model patched from the corrupted run")
        err_console.print(f"wrote {png}", highlight=False)
    if json_path is not None:
        write_json_or_fail(json_path, report.to_dict())

