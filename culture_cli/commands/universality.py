"""``culture-interp universality compare``: universal neurons (Gurnee et al.,
2024: excess of a neuron's max-correlation over a null baseline), residual
CKA (linear, debiased, permutation test) and SAE features (one to one, many
to one, shuffled-quiz floor, second-seed ceiling, families) across models
trained side by side, each beside its baselines with bootstrap intervals.

Prints tables, writes every number with --json, figures with --png DIR and
the cross-model feature page with --dashboard DIR. The library behind it is
:mod:`culture.universality`; heavy modules (torch, TransformerLens, SAELens,
matplotlib, scipy) are imported inside the command.
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
    QuizKindsOption,
    check_min,
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

HELP = ("Universality across models: universal neurons (excess over a rotation baseline), tested residual CKA, "
        "SAE features between a floor and a ceiling.")

universality_app = command_group("universality", HELP)

CONTROL_CHOICES = ("none", "position", "position_structure", "token")
BASELINE_CHOICES = ("rotation", "permutation", "gaussian")


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(value, ci) -> str:
    """ "12.3% [10.1, 14.0]" (a share with its interval)."""
    if value is None:
        return "-"
    if not ci or ci[0] is None or (isinstance(ci[0], float) and math.isnan(ci[0])):
        return pct(value)
    return f"{pct(value)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _top_tasks(entry) -> str:
    """The 3 tasks where a neuron / feature is most active: "task mean (fire rate)", or ""."""
    if "tasks" not in entry:
        return ""
    ranked = sorted(entry["tasks"].items(), key=lambda kv: -kv[1]["mean"])[:3]
    return ", ".join(f"{k} {v['mean']:.2f} ({100 * v['fire_rate']:.0f}%)" for k, v in ranked)


def _table(title: str, columns, rows):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if col in ("task", "pair", "kind", "members", "control", "best match "
                                                    "per model (layer.neuron: corr)", "tasks (mean act, fire rate)",
                                                    "rates") else "right")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def _tables(report, top: int):
    s = report.settings
    thr = report.threshold
    primary = report.primary
    yield _table(
        f"Universal neurons by layer (Gurnee et al.: excess = max-corr - {s['neuron_baseline']} baseline max-corr "
        f"> {thr:g}; max over every layer of each other model; control {primary}; {s['tokens']:,} tokens, "
        f"{s['quizzes']} quizzes; models {', '.join(report.names)}; 95% bootstrap intervals over quizzes)",
        ("layer", "neurons", "dead", "max-corr", "baseline", "excess", "universal", "held-out", "random-init models",
         "partner in same layer"),
        [(r["layer"], r["neurons"], pct(r["dead"]), _f(r["mean_max_corr"]), _f(r["mean_baseline"]),
          _f(r["mean_excess"]), _ci(r["share_universal"], r["share_universal_ci"]),
          _ci(r["held_share_universal"], r["held_share_universal_ci"]),
          _ci(r["random_share_universal"], r["random_share_universal_ci"]), pct(r["same_layer_partner"]))
         for r in report.summary_rows()])
    if len(report.controls) > 1:
        rows = []
        for r in report.control_rows():
            rows.append((r["control"], r["layer"], pct(r["dead"]), _f(r["mean_max_corr"]), _f(r["mean_baseline"]),
                         _f(r["mean_excess"]), _ci(r["share_universal"], r["share_universal_ci"]),
                         _ci(r["held_share_universal"], r["held_share_universal_ci"]),
                         pct(r["random_share_universal"]) if r["random_share_universal"] is not None else "-"))
        yield _table("Neurons under each confound control (means removed within groups first)",
                     ("control", "layer", "dead", "max-corr", "baseline", "excess", "universal", "held-out",
                      "random-init"), rows)
    univ = report.universal_neurons()
    if univ:
        rows = []
        for e in univ[:top]:
            matches = ", ".join(f"{m}:{v['layer']}.{v['neuron']} {v['corr']:.2f}" for m, v in e["matches"].items())
            rows.append((e["model"], e["layer"], e["neuron"], _f(e["excess"]), _f(e["held_excess"]), matches,
                         _top_tasks(e)))
        yield _table(f"Top universal neurons ({min(top, len(univ))} of {len(univ)}, control {primary})",
                     ("model", "layer", "neuron", "excess", "held-out excess",
                      "best match per model (layer.neuron: corr)", "tasks (mean act, fire rate)"), rows)
    if report.cka is not None:
        c = report.cka
        rows = [(r["layer"], _f(r["mean"]), _f(r["min"]), _f(r["baseline_mean"]), _f(r["debiased_mean"]),
                 _f(r["baseline_debiased_mean"]), _f(r["max_p_linear"]), _f(r["max_p_debiased"]))
                for r in report.cka_diagonal_rows()]
        yield _table(f"Residual-stream CKA at matching depth (mean over model pairs; control {c.primary}; p: largest "
                     f"over pairs of the permutation test, {c.permutations} within-batch token shuffles of one model)",
                     ("layer", "linear", "min", "random models", "debiased", "random models", "p linear",
                      "p debiased"), rows)
        if len(c.linear) > 1:
            ctl = list(c.linear)
            per = {k: report.cka_diagonal_rows(k) for k in ctl}
            rows = []
            for n, r in enumerate(per[ctl[0]]):
                rows.append((r["layer"], *[f"{_f(per[k][n]['mean'])} / {_f(per[k][n]['baseline_mean'])}"
                                           for k in ctl]))
            yield _table("Linear CKA at matching depth under each control (trained / random models)",
                         ("layer", *ctl), rows)
    rows = report.sae_rows()
    if rows:
        out = []
        for r in rows:
            out.append((r["pair"], r["kind"], r["alive"], _ci(r["share_above"], r["share_above_ci"]),
                        pct(r["null_share_above"]) if r["null_share_above"] is not None else "-",
                        f"{_f(r['median_matched_corr'])} / {_f(r['null_median_matched_corr'])}",
                        _ci(r["share_max_above_a"], r["share_max_above_a_ci"]),
                        pct(r["null_share_max_above_a"]) if r["null_share_max_above_a"] is not None else "-",
                        f"{_f(r['svcca'])} / {_f(r['svcca_floor'])}",
                        f"{_f(r['mean_decoder_cos'])} / {_f(r['decoder_cos_floor'])}"))
        yield _table(f"SAE features (control {report.sae.control}; one to one = Hungarian; many to one = each "
                     f"feature's best partner; floor = shuffled quizzes; ceiling = the same model's second SAE)",
                     ("pair", "kind", "alive", f"1-to-1 corr > {thr:g}", "floor", "median corr / floor",
                      f"many-to-1 > {thr:g}", "floor", "SVCCA / floor", "decoder cos / floor"), out)
        sae = report.sae
        fams = report.family_rows(top)
        yield _table(f"Feature families: features of SAE {sae.labels[sae.anchor]} matched above {thr:g} in every "
                     f"other model's SAE: {len(sae.families)} (floor: {sae.null_families} on shuffled quizzes; "
                     f"{sum(f.consistent for f in sae.families)} consistent in every pair)",
                     ("family", "members", "min corr", "consistent", "rates"),
                     [(f["family"], ", ".join(f"{k}:{v}" for k, v in f["members"].items()), _f(f["min_corr"]),
                       "yes" if f["consistent"] else "no", _rates(f["rates"])) for f in fams])


def _rates(rates: dict) -> str:
    """The highest firing rates of a family: "role:f(B) 31% [28, 35], ..."."""
    ranked = sorted(rates.items(), key=lambda kv: -kv[1]["value"])[:4]
    return ", ".join(f"{k} {_ci(v['value'], v['ci95'])}" for k, v in ranked)


@universality_app.command("compare")
def compare_command(
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="Model ids, at least 2 (several after one flag: --models 0 1 2 3); "
        "default: every model of the source.", show_default=False)] = None,
    source: ModelsSourceOption = None,
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", help="MLP layers to compare (--layers 0 2 3); default: every layer. A neuron's best match is "
        "searched in all of them. CKA then uses the residual stream at embed + these layers.",
        show_default=False)] = None,
    tokens: Annotated[int, typer.Option(
        "--tokens", help="Tokens to stream (quizzes of 404 positions; memory does not grow with it).")] = 40_000,
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks of the quizzes (default: the source's training tasks when it records "
        "them, else the 8 of the published models).", show_default=False)] = None,
    quizzes: QuizKindsOption = "world",
    threshold: Annotated[float, typer.Option(
        "--threshold", help="A neuron is universal when its excess (max-corr minus baseline max-corr, averaged over "
        "the other models) exceeds this; an SAE feature matches above it (Gurnee et al.: 0.5).")] = 0.5,
    baseline: Annotated[str, typer.Option(
        "--baseline", help="Null version of the other model for neurons: rotation (a random orthogonal rotation "
        "of its activations), permutation (another quiz at the same position) or gaussian.")] = "rotation",
    controls: Annotated[Optional[list[str]], typer.Option(
        "--controls", help="Confound controls, each computed (the first is the primary one): none, position, "
        "position_structure, token (per-group means removed first). Default: all four, none first.",
        show_default=False)] = None,
    within_position: Annotated[bool, typer.Option(
        "--within-position", help="Shorthand for --controls position.")] = False,
    positions: Annotated[str, typer.Option(
        "--positions", help="all: the 404 positions; cells: positions whose input token is a grid cell.")] = "all",
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise probability (structures 1 and 2).")] = 0.05,
    sae: Annotated[Optional[list[str]], typer.Option(
        "--sae", help="An SAE per model, repeated in --models order: a SAELens directory (cfg.json + "
        "sae_weights.safetensors) or a hub repo folder (owner/name/gpt-0/blocks_8_mlp_out); or bundled once: "
        "each model's SAE in the zoo.", show_default=False)] = None,
    ceiling_sae: Annotated[Optional[str], typer.Option(
        "--ceiling-sae", help="A second SAE of the first model (another seed): the ceiling of feature matching. "
        "bundled: the zoo's (gpt-K-seedS).", show_default=False)] = None,
    self_copy: Annotated[bool, typer.Option(
        "--self-copy", help="Compare the one model of --models with a copy of itself whose MLP neurons are "
        "permuted (the same function): the ceiling of the neuron measure.")] = False,
    random_init: Annotated[bool, typer.Option(
        "--random-init/--no-random-init", help="Also run random-init models of the same shapes (a second null).")
    ] = True,
    cka: Annotated[bool, typer.Option("--cka/--no-cka", help="Layer x layer residual CKA per model pair.")] = True,
    cka_permutations: Annotated[int, typer.Option(
        "--cka-permutations", help="Permutations of the CKA test (0: no test).")] = 19,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (over quizzes).")] = 1000,
    json_path: Annotated[OptionalOutputFile, typer.Option(
        "--json", help="Write every number to this JSON file.", show_default=False)] = None,
    png: Annotated[OptionalOutputFolder, typer.Option(
        "--png", help="Write heatmaps and histograms (PNG) into this directory.", show_default=False)] = None,
    dashboard: Annotated[OptionalOutputFolder, typer.Option(
        "--dashboard", help="Write the cross-model feature page (index.html) into this directory (needs --sae).",
        show_default=False)] = None,
    device: DeviceOption = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the quizzes, baselines and bootstrap.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Quizzes per forward pass (default: sized to ~128 MB of activations).",
        show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="dtype of the per-batch products: float32 (fast) or float64 (accumulation is float64 "
        "either way).")] = "float32",
    top: Annotated[int, typer.Option("--top", help="Universal neurons / feature families listed.")] = 10,
    max_memory: Annotated[str, typer.Option(
        "--max-memory", help="Peak memory allowed (4.5G, 800M; available: what the system has free at the start): "
        "the analysis reads the neuron co-moments in blocks that fit, and a comparison whose memory plan is over "
        "it is refused before any work.")] = "available",
) -> None:
    """Compare models: universal neurons, tested residual CKA, SAE features - each beside its baselines.

    Neurons as Gurnee et al. (2024) measure them: each neuron's highest Pearson
    correlation with any neuron of any layer of another model, minus the same
    against a randomly rotated copy of that model's activations (--baseline),
    averaged over the other models; universal above --threshold. Under each
    confound control, with a held-out replication (partners chosen on half of
    the quizzes, measured on the other half), random-init models as a second
    null, and bootstrap intervals over quizzes.
    """
    check_min("--tokens", tokens, 1)
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 2.0):
        fail(f"--threshold must be in [-1, 2], got {threshold}")
    check_noise(noise)
    if positions not in ("all", "cells"):
        fail(f"--positions must be all or cells, got {positions!r}")
    if baseline not in BASELINE_CHOICES:
        fail(f"--baseline must be one of {', '.join(BASELINE_CHOICES)}, got {baseline!r}")
    ctl = [c for v in (controls or []) for c in str(v).replace(",", " ").split()]
    for c in ctl:
        if c not in CONTROL_CHOICES:
            fail(f"--controls: unknown control {c!r} (choose from {', '.join(CONTROL_CHOICES)})")
    if within_position and ctl:
        fail("--within-position is --controls position: give one of them")
    if precision not in ("float64", "float32"):
        fail(f"--precision must be float64 or float32, got {precision!r}")
    check_min("--seed", seed, 0)
    check_min("--batch-size", batch_size, 1)
    check_min("--top", top, 0)
    check_min("--cka-permutations", cka_permutations, 0)
    check_min("--resamples", resamples, 1)
    if quizzes not in ("world", "culture", "both"):
        fail(f"--quizzes must be world, culture or both, got {quizzes!r}")
    ids = parse_ids(models, "--models")
    layer_ids = parse_ids(layers, "--layers")
    if self_copy:
        if ids is None or len(ids) != 1:
            fail("--self-copy compares one model with its permuted copy: give one model id (--models 0)")
        if sae:
            fail("--self-copy is for neurons and CKA: drop --sae")
    elif ids is not None and len(ids) < 2:
        fail(f"--models: give at least 2 models to compare, got {len(ids)}")
    bundled_sae = bool(sae) and len(sae) == 1 and sae[0] == "bundled"
    if sae and not bundled_sae and ids is not None and len(sae) != len(ids):
        fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(ids)} models), or --sae bundled")
    if ceiling_sae and not sae:
        fail("--ceiling-sae needs --sae (the models' own SAEs)")
    if dashboard is not None and not sae:
        fail("--dashboard shows SAE feature families: it needs --sae")

    import torch

    from culture import sources
    from culture.evaluation import check_device
    from culture.universality import (UniversalityError, check_memory, compare_models, load_saes, memory_plan,
                                      parse_memory, plot_report)
    from culture.world import resolve_tasks

    try:
        parse_memory(max_memory)
    except UniversalityError as exc:
        fail(f"--max-memory: {exc}")
    dev = check_device(device)
    src = sources.resolve_source(source if source is not None else sources.DEFAULT_SOURCE)
    task_names = list(resolve_tasks(list(tasks) if tasks else src.default_tasks()))
    if ids is None:
        ids = src.model_ids()
        if len(ids) < 2:
            fail(f"source {src.name} has {len(ids)} model(s); universality needs at least 2")
        if sae and not bundled_sae and len(sae) != len(ids):
            fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(ids)} models), or --sae bundled")
    for k in ids:
        src.check_model_id(k)
    saes = ceiling = None
    if sae:
        from culture.sae import bundled_sae_folder, load_sae

        if bundled_sae:
            saes = [load_sae("bundled", bundled_sae_folder(k), device=str(dev)) for k in ids]
        else:
            saes = load_saes(sae, device=str(dev))
        if ceiling_sae == "bundled":
            ceiling = load_sae("bundled", bundled_sae_folder(ids[0], extra=True), device=str(dev))
        elif ceiling_sae:
            ceiling = load_sae(ceiling_sae, device=str(dev))

    given = {}
    n_quizzes = math.ceil(tokens / (404 if positions == "all" else 399))
    if quizzes != "world":
        from culture.evaluation import source_test_set

        ts = source_test_set(src, n_quizzes, task_names, seed=seed, noise=noise, quizzes=quizzes)
        given = {"quizzes": ts.quizzes, "clean": ts.targets, "task_labels": ts.labels}
        err_console.print(f"quizzes: {len(ts)} ({len(ts) - ts.n_c_quizzes} world, {ts.n_c_quizzes} c-quizzes)",
                          highlight=False)

    chosen_controls = ("position",) if within_position else (tuple(ctl) or CONTROL_CHOICES)
    loaded = sources.load_culture(ids, src, device=dev)
    names = [str(k) for k in ids]
    if self_copy:
        from culture.universality import permuted_mlp_copy

        loaded.append(permuted_mlp_copy(loaded[0], seed)[0])
        names.append(f"{ids[0]}-copy")
    plan = memory_plan(loaded, layer_ids, cka=cka, saes=saes, random_init=random_init, controls=chosen_controls,
                       baseline=baseline, cka_permutations=cka_permutations, batch_size=batch_size,
                       n_quizzes=n_quizzes, max_memory=max_memory,
                       compute_dtype=torch.float64 if precision == "float64" else torch.float32)
    check_memory(plan)
    err_console.print(f"models {', '.join(names)} from {src.name}; {n_quizzes * 404:,} tokens "
                      f"({positions} positions); {plan.line()}", highlight=False)

    with progress() as bar:
        ids_bar: dict[str, int] = {}

        def report_progress(description: str, done: int, total: int) -> None:
            if description not in ids_bar:
                ids_bar[description] = bar.add_task(description, total=total)
            bar.update(ids_bar[description], completed=done)

        report = compare_models(
            loaded, n_tokens=tokens, tasks=task_names, layers=layer_ids, threshold=threshold, positions=positions,
            controls=chosen_controls, baseline=baseline,
            random_init=random_init, noise=noise, cka=cka, cka_permutations=cka_permutations, saes=saes,
            ceiling_sae=ceiling, names=names, batch_size=batch_size, n_resamples=resamples,
            seed=seed, device=dev, compute_dtype=torch.float64 if precision == "float64" else torch.float32,
            progress=report_progress, max_memory=max_memory, **given)
    report.settings.update({"source": src.name, "models": ids, "quiz_kinds": quizzes, "self_copy": self_copy,
                            "sae_dirs": [getattr(s, "culture_path", None) for s in saes] if saes else None,
                            "ceiling_sae_dir": getattr(ceiling, "culture_path", None) if ceiling is not None else None})

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
    if dashboard is not None:
        from culture.dashboard import write_family_page

        page = _written(lambda: write_family_page(dashboard, report), f"the feature page into {dashboard}")
        err_console.print(f"wrote {page}", highlight=False)


def _written(write, what: str):
    """``write()``; an OSError becomes one error line."""
    try:
        return write()
    except OSError as exc:
        fail(f"cannot write {what}: {exc.strerror or exc}")


def register(app: typer.Typer) -> None:
    app.add_typer(universality_app, name="universality", help=HELP,
                  short_help="Universal neurons, tested CKA and SAE features across models, with baselines.")
