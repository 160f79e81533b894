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
from dataclasses import replace
from typing import Annotated, Optional

import typer

from culture.settings import QUIZ_KINDS, default_of
from culture.universality_settings import (
    MEMORY_TARGET,
    MIN_QUIZZES,
    UniversalitySettings,
    UniversalitySettingsError,
    check_quiz_count,
)
from culture_cli.common import (
    DeviceOption,
    ModelsSourceOption,
    OptionalOutputFile,
    OptionalOutputFolder,
    QuizKindsOption,
    check_min,
    command_group,
    err_console,
    fail,
    is_stdout,
    option_flag,
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
        f"{s['quizzes']} quizzes; models {', '.join(report.names)}; {_interval_note(s)})",
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


def _interval_note(settings: dict) -> str:
    """What the neuron intervals carry, for a table title."""
    boot = settings["bootstrap"]
    draws = boot.get("rotation_draws", 0)
    extra = f" and {draws} further rotation draws" if draws else ""
    return f"{100 * boot['confidence']:g}% intervals: quiz bootstrap re-centred on the share{extra}"


def _rates(rates: dict) -> str:
    """The highest firing rates of a family: "role:f(B) 31% [28, 35], ..."."""
    ranked = sorted(rates.items(), key=lambda kv: -kv[1]["value"])[:4]
    return ", ".join(f"{k} {_ci(v['value'], v['ci95'])}" for k, v in ranked)


def _d(name: str):
    """The default of UniversalitySettings field ``name``: the one source of the defaults below."""
    return default_of(UniversalitySettings, name)


# every option but those in CLI_ONLY is the UniversalitySettings field of the same name (its default, its
# bounds: checked by UniversalitySettings.check); tests/test_universality.py compares them
CLI_ONLY = ("models", "source", "quizzes", "sae", "ceiling_sae", "self_copy", "json_path", "png", "dashboard",
            "device", "top")


@universality_app.command("compare")
def compare_command(
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="Model ids, at least 2 (several after one flag: --models 0 1 2 3); "
        "default: every model of the source.", show_default=False)] = None,
    source: ModelsSourceOption = None,
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", help="MLP layers to compare (--layers 0 2 3); default: every layer. A neuron's best match is "
        "searched in all of them. CKA then uses the residual stream at embed + these layers.",
        show_default=False)] = _d("layers"),
    tokens: Annotated[int, typer.Option(
        "--tokens", help=f"Tokens to stream (quizzes of 404 positions, at least {MIN_QUIZZES} quizzes; memory does "
        "not grow with it).")] = _d("tokens"),
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks of the quizzes (default: the source's training tasks when it records "
        "them, else the 8 of the published models).", show_default=False)] = _d("tasks"),
    quizzes: QuizKindsOption = "world",
    threshold: Annotated[float, typer.Option(
        "--threshold", help="A neuron is universal when its excess (max-corr minus baseline max-corr, averaged over "
        "the other models) exceeds this; an SAE feature matches above it (Gurnee et al.: 0.5).")] = _d("threshold"),
    baseline: Annotated[str, typer.Option(
        "--baseline", help="Null version of the other model for neurons: rotation (a random orthogonal rotation "
        "of its activations), permutation (another quiz at the same position) or gaussian.")] = _d("baseline"),
    controls: Annotated[Optional[list[str]], typer.Option(
        "--controls", help="Confound controls, each computed (the first is the primary one): none, position, "
        "position_structure, token (per-group means removed first). Default: all four, none first.",
        show_default=False)] = None,
    within_position: Annotated[bool, typer.Option(
        "--within-position", help="Shorthand for --controls position.")] = _d("within_position"),
    positions: Annotated[str, typer.Option(
        "--positions", help="all: the 404 positions; cells: positions whose input token is a grid cell.")
    ] = _d("positions"),
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise probability (structures 1 and 2).")
                     ] = _d("noise"),
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
    ] = _d("random_init"),
    cka: Annotated[bool, typer.Option("--cka/--no-cka", help="Layer x layer residual CKA per model pair.")
                   ] = _d("cka"),
    cka_permutations: Annotated[int, typer.Option(
        "--cka-permutations", help="Permutations of the CKA test (0: no test).")] = _d("cka_permutations"),
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (over quizzes).")
                         ] = _d("resamples"),
    rotation_draws: Annotated[int, typer.Option(
        "--rotation-draws", help="Further random rotations of the rotation baseline (0-19): the neuron intervals "
        "carry their spread beside the quizzes'.")] = _d("rotation_draws"),
    json_path: Annotated[OptionalOutputFile, typer.Option(
        "--json", help="Write every number to this JSON file.", show_default=False)] = None,
    png: Annotated[OptionalOutputFolder, typer.Option(
        "--png", help="Write heatmaps and histograms (PNG) into this directory.", show_default=False)] = None,
    dashboard: Annotated[OptionalOutputFolder, typer.Option(
        "--dashboard", help="Write the cross-model feature page (index.html) into this directory (needs --sae).",
        show_default=False)] = None,
    device: DeviceOption = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the quizzes, baselines and bootstrap.")] = _d("seed"),
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Quizzes per forward pass (default: sized to ~128 MB of activations).",
        show_default=False)] = _d("batch_size"),
    precision: Annotated[str, typer.Option(
        "--precision", help="dtype of the per-batch products: float32 (fast) or float64 (accumulation is float64 "
        "either way).")] = _d("precision"),
    top: Annotated[int, typer.Option("--top", help="Universal neurons / feature families listed.")] = 10,
    max_memory: Annotated[str, typer.Option(
        "--max-memory", help="Peak memory allowed (4.5G, 800M; available: what the system has free at the start): "
        "pass 1 and the analysis work in the largest blocks that fit (left at available: that fit "
        f"{MEMORY_TARGET / 2**30:g} GiB where they can), and a comparison whose memory plan is over it is "
        "refused before any work.")] = _d("max_memory"),
    block_layers: Annotated[Optional[int], typer.Option(
        "--block-layers", help="Pass 1 accumulates the neuron co-moments of this many layers per sweep over the "
        "quizzes, each finished block (with its layers' group sums) written to a temporary file (TMPDIR); "
        "default: one sweep in memory when the plan fits, else the largest block that does. Same results "
        "whatever the block.",
        show_default=False)] = _d("block_layers"),
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
    check_min("--top", top, 0)
    if quizzes not in QUIZ_KINDS:
        fail(f"--quizzes must be world, culture or both, got {quizzes!r}")
    ctl = tuple(c for v in (controls or []) for c in str(v).replace(",", " ").split())
    if within_position and ctl:
        fail("--within-position is --controls position: give one of them")
    layer_ids = parse_ids(layers, "--layers")
    try:
        settings = UniversalitySettings(
            tokens=tokens, tasks=tuple(tasks) if tasks else None, layers=tuple(layer_ids) if layer_ids else None,
            threshold=threshold, baseline=baseline, controls=ctl or _d("controls"), within_position=within_position,
            positions=positions, noise=noise, random_init=random_init, cka=cka, cka_permutations=cka_permutations,
            resamples=resamples, rotation_draws=rotation_draws, seed=seed, batch_size=batch_size,
            precision=precision, max_memory=max_memory, block_layers=block_layers).check()
    except UniversalitySettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")
    ids = _check_models(parse_ids(models, "--models"), sae, ceiling_sae, self_copy, dashboard)
    run = _open(source, ids, device, settings, sae, self_copy)
    settings = replace(settings, tasks=run.tasks)  # given, else the source's training tasks
    saes, ceiling = _load_saes(run, sae, ceiling_sae)
    given = _given_quizzes(run, settings, quizzes)
    loaded, names = _load_models(run, settings, self_copy)
    _announce(run, settings, loaded, names, saes, given)
    report = _compare(loaded, names, settings, saes, ceiling, given, run.device)
    report.settings.update({"source": run.source.name, "models": run.ids, "quiz_kinds": quizzes,
                            "self_copy": self_copy,
                            "sae_dirs": [getattr(s, "culture_path", None) for s in saes] if saes else None,
                            "ceiling_sae_dir": getattr(ceiling, "culture_path", None) if ceiling is not None else None})
    for table in _tables(report, top):
        print_table(table)
    _write_outputs(report, json_path, png, dashboard)


def _check_models(ids, sae, ceiling_sae, self_copy: bool, dashboard) -> list[int] | None:
    """The --models / --sae / --self-copy / --dashboard combinations, before anything is loaded."""
    if self_copy:
        if ids is None or len(ids) != 1:
            fail("--self-copy compares one model with its permuted copy: give one model id (--models 0)")
        if sae:
            fail("--self-copy is for neurons and CKA: drop --sae")
    elif ids is not None and len(ids) < 2:
        fail(f"--models: give at least 2 models to compare, got {len(ids)}")
    if sae and not _bundled(sae) and ids is not None and len(sae) != len(ids):
        fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(ids)} models), or --sae bundled")
    if ceiling_sae and not sae:
        fail("--ceiling-sae needs --sae (the models' own SAEs)")
    if dashboard is not None and not sae:
        fail("--dashboard shows SAE feature families: it needs --sae")
    return ids


def _bundled(sae) -> bool:
    return bool(sae) and len(sae) == 1 and sae[0] == "bundled"


def _open(source, ids, device, settings, sae, self_copy: bool):
    """The source opened (culture.sources.open_source): device, tasks, ids checked; every model by default."""
    from culture.sources import open_source

    run = open_source(source, ids, device=device, tasks=settings.tasks)
    if ids is None:
        if len(run.ids) < 2:
            fail(f"source {run.source.name} has {len(run.ids)} model(s); universality needs at least 2")
        if sae and not _bundled(sae) and len(sae) != len(run.ids):
            fail(f"--sae: give one SAE directory per model ({len(sae)} for {len(run.ids)} models), "
                 "or --sae bundled")
    return run


def _load_saes(run, sae, ceiling_sae):
    """(one SAE per model, the ceiling SAE), None where not asked."""
    if not sae:
        return None, None
    from culture.sae import bundled_sae_folder, load_sae
    from culture.universality import load_saes

    dev = str(run.device)
    if _bundled(sae):
        saes = [load_sae("bundled", bundled_sae_folder(k), device=dev) for k in run.ids]
    else:
        saes = load_saes(sae, device=dev)
    ceiling = None
    if ceiling_sae == "bundled":
        ceiling = load_sae("bundled", bundled_sae_folder(run.ids[0], extra=True), device=dev)
    elif ceiling_sae:
        ceiling = load_sae(ceiling_sae, device=dev)
    return saes, ceiling


def _given_quizzes(run, settings, quizzes: str) -> dict:
    """The source's test set when --quizzes is culture or both (world quizzes are drawn by the library)."""
    if quizzes == "world":
        return {}
    from culture.evaluation import source_test_set

    ts = source_test_set(run.source, settings.n_quizzes(), list(run.tasks), seed=settings.seed, noise=settings.noise,
                         quizzes=quizzes)
    err_console.print(f"quizzes: {len(ts)} ({len(ts) - ts.n_c_quizzes} world, {ts.n_c_quizzes} c-quizzes)",
                      highlight=False)
    return {"quizzes": ts.quizzes, "clean": ts.targets, "task_labels": ts.labels}


def _load_models(run, settings, self_copy: bool):
    """(models, names): the source's models, and the permuted copy with --self-copy."""
    loaded = run.load_all()
    names = [str(k) for k in run.ids]
    if self_copy:
        from culture.universality import permuted_mlp_copy

        loaded.append(permuted_mlp_copy(loaded[0], settings.seed)[0])
        names.append(f"{run.ids[0]}-copy")
    return loaded, names


def _announce(run, settings, loaded, names, saes, given) -> None:
    """Layers and quiz count checked (one error line), then what is compared and the accumulators' size."""
    from culture.universality import check_memory, settings_memory_plan

    n_quizzes = len(given["quizzes"]) if given else settings.n_quizzes()
    plan = settings_memory_plan(loaded, settings, n_quizzes, saes=saes)  # layers checked
    check_quiz_count(n_quizzes, settings.positions_per_quiz)
    check_memory(plan)
    err_console.print(f"models {', '.join(names)} from {run.source.name}; {settings.n_quizzes() * 404:,} tokens "
                      f"({settings.positions} positions); {plan.line()}", highlight=False)


def _compare(loaded, names, settings, saes, ceiling, given, device):
    """compare_models under a progress bar per pass."""
    from culture.universality import compare_models

    with progress() as bar:
        ids_bar: dict[str, int] = {}

        def report_progress(description: str, done: int, total: int) -> None:
            if description not in ids_bar:
                ids_bar[description] = bar.add_task(description, total=total)
            bar.update(ids_bar[description], completed=done)

        return compare_models(loaded, settings=settings, saes=saes, ceiling_sae=ceiling, names=names, device=device,
                              progress=report_progress, **given)


def _write_outputs(report, json_path, png, dashboard) -> None:
    """--json and --png (all or nothing), then --dashboard."""
    from culture.universality import plot_report

    with outputs(announce=False) as staged:
        if json_path is not None:
            write_json(staged.file(json_path), report.to_dict(), announce=False)
        paths = plot_report(report, staged.dir(png, merge=True)) if png is not None else []
    if json_path is not None and not is_stdout(json_path):
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
