"""``culture-interp probe``: linear probes of a world generator parameter in a
model's residual stream, per layer, against a control task and a random
model. The library is :mod:`culture.probes`; torch and matplotlib are
imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.defaults import CANONICAL_STRUCTURE, PROMPT_NOISE
from culture_cli.common import (
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    NoiseOption,
    check_min,
    check_test_set_options,
    fail,
    one_of,
    pct_ci,
    print_table,
    progress,
    write_outputs,
)


def _tables(res):
    from rich.table import Table

    s = res.settings
    table = Table(title=f"Probes of {res.target} at {s['positions']} ({s['classes']} classes; {s['train']} "
                  f"train / {s['test']} held-out quizzes; majority class {pct_ci(res.majority)}; 95% intervals)",
                  title_justify="left")
    random = any("random_model_accuracy" in r for r in res.rows)
    for name in ("layer", "probe acc", "control task acc", "selectivity", *(["random model acc"] if random else []),
                 "train acc (probe / control)"):
        table.add_column(name, justify="left" if name == "layer" else "right")
    for r in res.rows:
        table.add_row(r["layer"], pct_ci(r["accuracy"]), pct_ci(r["control_accuracy"]),
                      f"{100 * r['selectivity']:+.1f} points",
                      *([pct_ci(r.get("random_model_accuracy"))] if random else []),
                      f"{100 * r['train_accuracy']['value']:.0f}% / {100 * r['control_train_accuracy']['value']:.0f}%")
    tables = [table]
    if res.causal:
        c = res.causal
        t = Table(title=f"Causal check at {c['layer']}: share of held-out quizzes whose transform cells are mostly "
                  f"painted the class the edit points to (added norm {c['added_norm']:.3g})", title_justify="left")
        for name in ("edit", "painted as predicted"):
            t.add_column(name, justify="left" if name == "edit" else "right")
        t.add_row("probe direction (quiz's class -> another colour)", pct_ci(c["changed_as_predicted"]))
        t.add_row("random direction, same norm", pct_ci(c["random_direction"]))
        t.add_row("no edit", pct_ci(c["without_edit"]))
        tables.append(t)
    return tables


def probe_command(
    model: Annotated[int, typer.Option("--model", help="Model id (gpt_{K:03d}.pth of the source).")],
    target: Annotated[str, typer.Option(
        "--target", help="TASK.PARAM: a latent parameter of the world generator (culture.world.PARAMETERS), "
        "e.g. replace_color.dst.")],
    source: ModelSourceOption = None,
    hooks: Annotated[Optional[list[str]], typer.Option(
        "--hooks", help="resid_post (default: the embedding and each block's output), resid_pre, resid_mid, or "
        "hook names blocks.L.hook_resid_*; several after one flag.", show_default=False)] = None,
    positions: Annotated[str, typer.Option(
        "--positions", metavar=one_of("transform-cells", "answer", "A", "f_A", "B", "f_B"), help="Positions averaged into a quiz's feature: transform-cells (the answer's changed "
        "cells), answer, or a grid A, f_A, B, f_B (the positions predicting its cells).")] = "transform-cells",
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Quizzes of the task.")] = 1000,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out share.")] = 0.25,
    structure: Annotated[str, typer.Option("--structure", help="Structure of the quizzes: 1..4 or markers.")] = str(CANONICAL_STRUCTURE),
    noise: NoiseOption = PROMPT_NOISE,
    seed: Annotated[int, typer.Option("--seed", help="Seed of quizzes, split, control labels, random model.")] = 0,
    random_baseline: Annotated[bool, typer.Option(
        "--random-baseline/--no-random-baseline", help="Also probe a randomly initialised model of the same shape."
    )] = True,
    causal: Annotated[bool, typer.Option(
        "--causal", help="Causal check: add the probe direction towards another colour at the probed positions "
        "and count quizzes painted that colour.")] = False,
    causal_hook: Annotated[Optional[str], typer.Option(
        "--causal-hook", help="Hook of the causal check (default: the probe that beats the random model most).",
        show_default=False)] = None,
    causal_scale: Annotated[float, typer.Option(
        "--causal-scale", help="Norm of the added vector, in mean activation norms.")] = 1.0,
    json_path: JsonOption = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Accuracy per layer with intervals, as PNG.",
                                                show_default=False)] = None,
    batch_size: BatchSizeOption = 100,
    split_draws: Annotated[int, typer.Option(
        "--split-draws", help="Further train / test splits (and control-label shuffles), each probe refitted: the "
        "intervals then carry their spread beside the held-out quizzes' (0: the Wilson interval of one split).")] = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Linear probes of a world-generator parameter in the residual stream, per layer.

    Held-out accuracy (Wilson 95% intervals) against a control task (the same
    probe on shuffled labels; Hewitt & Liang 2019), the majority class and the
    same probe on a randomly initialised model of the same shape.

    Memory grows linearly with --num-samples x hooks (one d_model vector per
    quiz and hook, 4 kB at the 37M shape); activations are read a batch at a time.
    """
    check_test_set_options(num_samples, batch_size, seed, noise)
    if not 0.0 < test_fraction < 1.0:
        fail(f"--test-fraction must be in (0, 1), got {test_fraction}")
    if not causal_scale > 0:
        fail(f"--causal-scale must be > 0, got {causal_scale}")
    check_min("--split-draws", split_draws, 0)
    if causal_hook is not None and not causal:
        fail("--causal-hook goes with --causal")
    from culture.probes import parse_target

    parse_target(target)  # before loading anything
    from culture import sources
    from culture.probes import run_probes, save_probe_png

    run = sources.open_source(source, model, device=device, with_tasks=False)
    src, dev = run.source, run.device
    gpt, _ = run.load(model)
    with progress() as bar:
        ids: dict[str, int] = {}
        names = {"activations": "activations (model)", "random model": "activations (random model)",
                 "probes": "fitting probes"}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in ids:
                ids[phase] = bar.add_task(names.get(phase, phase), total=total)
            bar.update(ids[phase], completed=done)

        res = run_probes(gpt, target, hooks=list(hooks) if hooks else "resid_post", positions=positions,
                         n=num_samples, seed=seed, test_fraction=test_fraction, structure=structure, noise=noise,
                         random_baseline=random_baseline, causal=causal, causal_hook=causal_hook,
                         causal_scale=causal_scale, batch_size=batch_size, split_draws=split_draws,
                         progress=report)
    res.settings.update({"model": model, "source": src.name})
    for table in _tables(res):
        print_table(table)
    write_outputs(png, lambda path: save_probe_png(res, path), json_path, res.to_dict())


def register(app: typer.Typer) -> None:
    app.command("probe", short_help="Linear probes of a generator parameter per layer, vs control task and "
                "random model.")(probe_command)
