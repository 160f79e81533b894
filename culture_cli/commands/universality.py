"""``culture-interp universality compare``: universal neurons, residual CKA and
SAE features across models trained side by side (Gurnee et al., 2024).

Prints tables (per layer: share of universal neurons and mean max-correlation
against a random-init baseline; the top universal neurons with their tasks;
universal neurons by preferred task; CKA at matching depth; SAE matching),
writes every number with --json and heatmaps / histograms with --png DIR.
The library behind it is :mod:`culture.universality`; heavy modules
(torch, TransformerLens, SAELens, matplotlib, scipy) are imported inside the
command.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from culture_cli.common import (
    DeviceOption,
    ModelsSourceOption,
    OptionalOutputFile,
    OptionalOutputFolder,
    check_noise,
    command_group,
    err_console,
    fail,
    parse_ids,
    pct,
    print_table,
    outputs,
    progress,
    write_json,
)

HELP = "Universality across models: universal neurons, residual CKA, SAE features (vs a random baseline)."

universality_app = command_group("universality", HELP)


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _top_tasks(entry) -> str:
    """The 3 tasks where a neuron / feature is most active: "task mean (fire rate)", or ""."""
    if "tasks" not in entry:
        return ""
    ranked = sorted(entry["tasks"].items(), key=lambda kv: -kv[1]["mean"])[:3]
    return ", ".join(f"{k} {v['mean']:.2f} ({100 * v['fire_rate']:.0f}%)" for k, v in ranked)


def _tables(report, top: int):
    from rich.table import Table

    thr = report.threshold
    base = report.settings.get("baseline")
    mode = ", within position" if report.settings.get("within_position") else ""
    t = Table(title=f"Universal neurons by layer (mean max-correlation > {thr:g}; "
                    f"{report.settings['tokens']:,} tokens{mode}; models {', '.join(report.names)})",
              title_justify="left")
    for col in ("layer", "neurons per model", "dead", "universal (all models)", "share universal", "baseline",
                "mean max-corr", "baseline", "excess"):
        t.add_column(col, justify="right")
    for r in report.summary_rows():
        t.add_row(str(r["layer"]), str(r["neurons"]), pct(r["dead"]), str(r["universal"]),
                  pct(r["share_universal"]), pct(r["baseline_share_universal"]) if base else "-",
                  _f(r["mean_max_corr"]), _f(r["baseline_mean_max_corr"]),
                  _f(r["excess_mean_max_corr"]) if base else "-")
    yield t

    univ = report.universal_neurons()
    t = Table(title=f"Top universal neurons ({min(top, len(univ))} of {len(univ)})", title_justify="left")
    for col, j in (("model", "right"), ("layer", "right"), ("neuron", "right"), ("mean max-corr", "right"),
                   ("best match per model (neuron: corr)", "left"), ("tasks (mean act, fire rate)", "left")):
        t.add_column(col, justify=j)
    for e in univ[:top]:
        matches = ", ".join(f"{m}:{v['neuron']} {v['corr']:.2f}" for m, v in e["matches"].items())
        t.add_row(e["model"], str(e["layer"]), str(e["neuron"]), _f(e["mean_max_corr"]), matches, _top_tasks(e))
    yield t

    rows = report.task_rows()
    if rows and len(rows) > 1:
        t = Table(title="Universal neurons by preferred task (highest mean activation)", title_justify="left")
        for col in ("task", "tokens", "universal preferring", "share of universal", "share of alive neurons"):
            t.add_column(col, justify="right" if col != "task" else "left")
        for r in rows:
            t.add_row(r["task"], f"{r['tokens']:,}", str(r["universal_preferring"]), pct(r["share_of_universal"]),
                      pct(r["share_of_alive"]))
        yield t

    rows = report.cka_diagonal_rows()
    if rows:
        t = Table(title="Residual-stream linear CKA at matching depth (over model pairs)", title_justify="left")
        for col in ("layer", "mean", "min", "baseline mean"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(r["layer"], _f(r["mean"]), _f(r["min"]), _f(r["baseline_mean"]))
        yield t

    rows = report.sae_rows()
    if rows:
        t = Table(title=f"SAE features matched one to one (Hungarian; threshold {thr:g})", title_justify="left")
        for col in ("pair", "alive", "matched", "median corr", "mean corr", "share > thr", "decoder cos"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(r["pair"], r["alive"], str(r["matched"]), _f(r["median_matched_corr"]),
                      _f(r["mean_matched_corr"]), pct(r["share_above"]), _f(r["mean_decoder_cos"]))
        yield t
        feats = report.universal_features()
        if feats:
            t = Table(title=f"Top universal SAE features ({min(top, len(feats))} of {len(feats)})",
                      title_justify="left")
            for col in ("model", "feature", "mean matched corr", "matches", "tasks (mean act, fire rate)"):
                t.add_column(col, justify="left" if col in ("matches", "tasks (mean act, fire rate)") else "right")
            for e in feats[:top]:
                matches = ", ".join(f"{m}:{v['feature']} {v['corr']:.2f}" for m, v in e["matches"].items())
                t.add_row(e["model"], str(e["feature"]), _f(e["mean_matched_corr"]), matches, _top_tasks(e))
            yield t


@universality_app.command("compare")
def compare_command(
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="Model ids, at least 2 (several after one flag: --models 0 1 2 3); "
        "default: every model of the source.", show_default=False)] = None,
    source: ModelsSourceOption = None,
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", help="MLP layers to compare (--layers 0 5 11); default: every layer. CKA then uses the "
        "residual stream at embed + these layers.", show_default=False)] = None,
    tokens: Annotated[int, typer.Option(
        "--tokens", help="Tokens to stream (quizzes of 404 positions; memory does not grow with it).")] = 100_000,
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks of the quizzes (default: the source's training tasks when it records them, "
        "else the 8 of the published models).",
        show_default=False)] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="A neuron / feature is universal when its mean max-correlation exceeds this "
        "(Gurnee et al.: 0.5).")] = 0.5,
    positions: Annotated[str, typer.Option(
        "--positions", help="all: the 404 positions; cells: positions whose input token is a grid cell.")] = "all",
    within_position: Annotated[bool, typer.Option(
        "--within-position", help="Correlate within position: remove each unit's mean at each position first, so "
        "positional coding shared by all models cannot make units look alike.")] = False,
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise probability (structures 1 and 2).")] = 0.05,
    sae: Annotated[Optional[list[str]], typer.Option(
        "--sae", help="An SAE per model, repeated in --models order: a SAELens directory (cfg.json + "
        "sae_weights.safetensors) or a hub repo folder (owner/name/gpt-0/blocks_8_mlp_out).",
        show_default=False)] = None,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="Also run random-init models of the same shapes (chance level).")] = True,
    cka: Annotated[bool, typer.Option("--cka/--no-cka", help="Layer x layer residual CKA per model pair.")] = True,
    json_path: Annotated[OptionalOutputFile, typer.Option(
        "--json", help="Write every number to this JSON file.", show_default=False)] = None,
    png: Annotated[OptionalOutputFolder, typer.Option(
        "--png", help="Write heatmaps and histograms (PNG) into this directory.", show_default=False)] = None,
    device: DeviceOption = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the quizzes and of the baseline models.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Quizzes per forward pass (default: sized to ~256 MB of activations).",
        show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="dtype of the per-batch products: float64, or float32 (faster; accumulation stays "
        "float64).")] = "float64",
    top: Annotated[int, typer.Option("--top", help="Universal neurons / features listed in the tables.")] = 20,
) -> None:
    """Compare models: universal neurons (max activation correlation across models), residual CKA, SAE features.

    For every pair of models, each MLP neuron's maximum Pearson correlation with
    any neuron of the other model over the same quiz tokens; averaged over the
    other models it is the neuron's mean max-correlation, and the neuron is
    universal above --threshold. Every number comes with a baseline from
    randomly initialised models of the same shapes on the same tokens.
    """
    if tokens < 1:
        fail(f"--tokens must be at least 1, got {tokens}")
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        fail(f"--threshold must be a correlation in [-1, 1], got {threshold}")
    check_noise(noise)
    if positions not in ("all", "cells"):
        fail(f"--positions must be all or cells, got {positions!r}")
    if precision not in ("float64", "float32"):
        fail(f"--precision must be float64 or float32, got {precision!r}")
    if seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    if batch_size is not None and batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if top < 0:
        fail(f"--top must be >= 0, got {top}")
    ids = parse_ids(models, "--models")
    layer_ids = parse_ids(layers, "--layers")
    if ids is not None and len(ids) < 2:
        fail(f"--models: give at least 2 models to compare, got {len(ids)}")
    if sae and ids is not None and len(sae) != len(ids):
        fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(ids)} models)")

    import torch

    from culture import sources
    from culture.evaluation import check_device
    from culture.universality import compare_models, estimate_memory, load_saes, plot_report
    from culture.world import resolve_tasks

    dev = check_device(device)
    src = sources.resolve_source(source if source is not None else sources.DEFAULT_SOURCE)
    task_names = list(resolve_tasks(list(tasks) if tasks else src.default_tasks()))
    if ids is None:
        ids = src.model_ids()
        if len(ids) < 2:
            fail(f"source {src.name} has {len(ids)} model(s); universality needs at least 2")
        if sae and len(sae) != len(ids):
            fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(ids)} models)")
    for k in ids:
        src.check_model_id(k)
    saes = load_saes(sae, device=str(dev)) if sae else None

    loaded = sources.load_culture(ids, src, device=dev)
    mem = estimate_memory(loaded, layer_ids, cka, saes, baseline)
    err_console.print(f"models {', '.join(map(str, ids))} from {src.name}; {tokens:,} tokens "
                      f"({positions} positions), accumulators ~{mem / 2**20:,.0f} MiB float64", highlight=False)

    with progress() as bar:
        task_id = None

        def report_progress(description: str, done: int, total: int) -> None:
            nonlocal task_id
            if task_id is None:
                task_id = bar.add_task(description, total=total)
            bar.update(task_id, completed=done)

        report = compare_models(
            loaded, n_tokens=tokens, tasks=task_names, layers=layer_ids, threshold=threshold, positions=positions,
            within_position=within_position, noise=noise, baseline=baseline, cka=cka, saes=saes,
            names=[str(k) for k in ids],
            batch_size=batch_size, seed=seed, device=dev,
            compute_dtype=torch.float64 if precision == "float64" else torch.float32,
            progress=report_progress)
    report.settings.update({"source": src.name, "models": ids,
                            "sae_dirs": [str(p) for p in sae] if sae else None})

    for table in _tables(report, top):
        print_table(table)
    with outputs(announce=False) as staged:  # --json and --png all or nothing
        if json_path is not None:
            write_json(staged.file(json_path), report.to_dict(), announce=False)
        paths = plot_report(report, staged.dir(png, merge=True)) if png is not None else []
    if json_path is not None:
        err_console.print(f"wrote {json_path}", highlight=False)
    if png is not None:
        err_console.print(f"wrote {len(paths)} figure(s) into {png}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(universality_app, name="universality", help=HELP,
                  short_help="Universal neurons, residual CKA and SAE features across models.")
