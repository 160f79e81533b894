"""``culture-interp sae train|eval|features``: sparse autoencoders (SAELens) on
the culture GPTs. The library is :mod:`culture.sae`; SAELens, TransformerLens
and datasets are imported inside the commands only."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from culture_cli.common import (
    BatchSizeOption,
    CQuizzesOption,
    DeviceOption,
    JsonOption,
    ModelSourceOption,
    NoiseOption,
    OptionalOutputFile,
    OutputDir,
    QuizKindsOption,
    TasksOption,
    check_noise,
    check_test_set_options,
    command_group,
    declare_inputs,
    err_console,
    fail,
    given_options,
    is_stdout,
    num_ci,
    one_of,
    option_flag,
    outputs,
    pct,
    pct_ci,
    points_ci,
    print_table,
    progress,
    write_json,
    write_json_or_fail,
)

HELP = "Sparse autoencoders (SAELens): train on a model's activations, evaluate, study features."

sae_app = command_group("sae", HELP)

_SAE_HELP = ("The SAE: a directory (cfg.json + sae_weights.safetensors), a hub repo "
             "owner/name, optionally followed by /folder: tommyp111/culture-sae/gpt-0/blocks_8_mlp_out, or "
             "bundled (the zoo's SAE of --model).")
# the options of `sae eval` and `sae features` that name the model and the SAE
_ModelIdOption = Annotated[int, typer.Option("--model", help="Model id.")]
_SaeOption = Annotated[str, typer.Option("--sae", help=_SAE_HELP)]
_SubfolderOption = Annotated[Optional[str], typer.Option("--subfolder", help="The SAE's folder in --sae.",
                                                         show_default=False)]


# ------------------------------------------------------------------ helpers


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}g}"


_FAMILY_LABELS = {"all_cells": "all", "transform_cells": "transform"}


def _splice_table(results):
    """Per task and cell family: CE clean / SAE / zero, loss recovered (floor
    named), whole-grid accuracy clean / SAE (with the paired change) / zero."""
    from rich.table import Table

    table = Table(title="SAE spliced in: all predicted cells and transform cells (95% intervals; change paired)",
                  title_justify="left")
    for name in ("task", "cells", "CE/cell clean / SAE / zero", "loss recovered (floor: hook zeroed)",
                 "grid acc clean", "grid acc SAE", "change (points)", "grid acc zero"):
        table.add_column(name, justify="left" if name in ("task", "cells") else "right")
    for g in results.groups:
        for family, label in _FAMILY_LABELS.items():
            f = results.by_group[g][family]
            ce = " / ".join(_num(f[k]["ce"]["value"], 3) for k in ("clean", "sae", "zero"))
            table.add_row(g if family == "all_cells" else "", label, ce, num_ci(f["loss_recovered"], 3),
                          pct_ci(f["clean"]["grid_accuracy"]), pct_ci(f["sae"]["grid_accuracy"]),
                          points_ci(f["sae"]["change"]["grid_accuracy"]), pct_ci(f["zero"]["grid_accuracy"]),
                          end_section=family == "transform_cells")
    return table


def _reporter(bar):
    ids: dict[str, int] = {}
    labels = {"data": "generating quizzes", "norm": "estimating activation norm", "train": "training SAE",
              "activations": "activations", "clean": "scoring (clean)", "sae": "scoring (SAE spliced)",
              "zero": "scoring (hook zeroed)", "features": "feature activations", "steered": "scoring (steered)",
              "ablations": "ablations"}

    def report(phase: str, done: int, total: int, info: dict | None = None) -> None:
        if phase not in ids:
            ids[phase] = bar.add_task(labels.get(phase, phase), total=total)
        desc = labels.get(phase, phase)
        if info and phase == "train":
            ve = info.get("explained_variance")
            desc = (f"training SAE  mse {info.get('mse_loss', float('nan')):.3g}  L0 {info.get('l0', float('nan')):.1f}"
                    f"  var.expl. {ve:.3f}" if ve is not None else desc)
        bar.update(ids[phase], completed=done, description=desc)

    return report


def _load_model(model: int, source: str | None, device: str, sae: bool):
    from culture import sources
    from culture.evaluation import check_device
    from culture.hooked import load_hooked

    dev = check_device(device)
    src = sources.resolve_source(source if source is not None else sources.DEFAULT_SOURCE)
    src.check_model_id(model)
    hooked = load_hooked(model, src, sae=sae, device=str(dev))
    return hooked, src, dev


def _load_sae_for(spec: str, subfolder: str | None, hooked, device, model: int | None = None):
    from culture.sae import DEFAULT_SAE_REPO, check_sae_for_model, load_sae

    if spec.strip().strip("/") == DEFAULT_SAE_REPO and subfolder is None and model is not None:
        subfolder = f"gpt-{model}/blocks_8_mlp_out"  # the earlier toolkit's layout
    if spec.strip() == "bundled" and subfolder is None and model is not None:
        from culture.sae import bundled_sae_folder

        subfolder = bundled_sae_folder(model)  # the model's own SAE among the zoo's
    sae = load_sae(spec, subfolder, device=str(device))
    for w in getattr(sae, "culture_warnings", []):
        err_console.print(f"warning: {w}", highlight=False)
    check_sae_for_model(sae, hooked)
    return sae


def _test_set(src, num_samples, tasks, c_quizzes, seed, noise, quizzes="both"):
    from culture.evaluation import source_test_set
    from culture.world import resolve_tasks

    names = resolve_tasks(list(tasks) if tasks else src.default_tasks())
    ts = source_test_set(src, num_samples, names, c_quizzes=c_quizzes, seed=seed, noise=noise, quizzes=quizzes)
    err_console.print(f"test set: {len(ts)} quizzes ({len(ts) - ts.n_c_quizzes} world, {ts.n_c_quizzes} "
                      f"c-quizzes), seed {seed}, noise {noise:g}", highlight=False)
    return ts


def _parse_options(values: list[str] | None) -> dict:
    out = {}
    for v in values or []:
        key, eq, raw = str(v).partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            fail(f"--option: expected KEY=VALUE (a SAELens config field), got {v!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# ------------------------------------------------------------------ train


def _checkpoints_of(values: dict) -> list:
    """``sae train``'s checkpoints beside --out: an input (read by --resume,
    kept from a fresh run without --overwrite), so no output goes there."""
    out = values.get("out")
    if out is None:
        return []
    out = Path(out)
    return [(f"the checkpoints of --out {out}", out.with_name(out.name + ".checkpoints"))]


def _keep_interrupted_run(out: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run would delete the checkpoints of an interrupted one: only with --overwrite."""
    from culture.sae.training import checkpoint_dir, latest_checkpoint

    if not resume and not overwrite and latest_checkpoint(out) is not None:
        fail(f"{checkpoint_dir(out)} holds an interrupted run: continue it with --resume, or start afresh "
             "with --overwrite (its checkpoints are then deleted)")


@contextlib.contextmanager
def _resumable_or_gone(out: Path):
    """A run that fails or is stopped leaves its checkpoint folder only when
    --resume can use it (a complete checkpoint), not a run record alone (a
    disk full or a file-size limit before the first checkpoint)."""
    from culture.sae.training import checkpoint_dir, latest_checkpoint

    try:
        yield
    except BaseException:
        folder = checkpoint_dir(out)
        if folder.is_dir() and latest_checkpoint(out) is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


@sae_app.command("train")
@declare_inputs(_checkpoints_of)
def train(
    model: Annotated[Optional[int], typer.Option(
        "--model", help="Model id (gpt_{K:03d}.pth of the source); required unless --resume.",
        show_default=False)] = None,
    out: Annotated[OutputDir, typer.Option("--out", "-o", help="Directory to write (SAELens format), atomically.")
                   ] = ...,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the interrupted run writing --out from its latest checkpoint in "
        "OUT.checkpoints/ (saved on Ctrl-C / SIGTERM and by --n-checkpoints; a SIGKILL loses the steps since the "
        "last one), with the run's own settings; only --device, --json and --push may be given.")] = False,
    source: ModelSourceOption = None,
    hook: Annotated[Optional[str], typer.Option(
        "--hook", help="TransformerLens hook point (default: the middle block's MLP output, "
        "blocks.{n_layers // 2}.hook_mlp_out).", show_default=False)] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="A `culture-interp dataset build` directory (input_ids: BOS + quiz); default: "
        "quizzes generated on the fly.", show_default=False)] = None,
    num_quizzes: Annotated[Optional[int], typer.Option(
        "--num-quizzes", help="Quizzes to generate without --dataset (default: as many as the run reads).",
        show_default=False)] = None,
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks of the generated quizzes (default: the source's training tasks when it records them, else the 8 of the published models).",
        show_default=False)] = None,
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise of the generated quizzes.")] = 0.05,
    steps: Annotated[int, typer.Option("--steps", help="Training steps (batches).")] = 30_000,
    training_tokens: Annotated[Optional[int], typer.Option(
        "--training-tokens", help="Training tokens (overrides --steps).", show_default=False)] = None,
    batch_tokens: Annotated[int, typer.Option("--batch-tokens", help="Tokens per training batch.")] = 4096,
    architecture: Annotated[str, typer.Option(
        "--architecture", help="SAELens architecture: standard, gated, jumprelu, topk, batchtopk...")] = "standard",
    expansion_factor: Annotated[int, typer.Option("--expansion-factor", help="d_sae = factor x d_in.")] = 32,
    d_sae: Annotated[Optional[int], typer.Option("--d-sae", help="Number of features (overrides the factor).",
                                                 show_default=False)] = None,
    l1_coefficient: Annotated[float, typer.Option("--l1-coefficient", help="Sparsity penalty.")] = 5.0,
    lp_norm: Annotated[float, typer.Option("--lp-norm", help="p of the sparsity penalty.")] = 1.0,
    l1_warm_up_steps: Annotated[Optional[int], typer.Option(
        "--l1-warm-up-steps", help="L1 warm-up (default: 5% of the steps).", show_default=False)] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Active features of top-k architectures.",
                                             show_default=False)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-5,
    lr_scheduler: Annotated[str, typer.Option(
        "--lr-scheduler", help="constant, cosineannealing or cosineannealingwarmrestarts.")] = "constant",
    lr_warm_up_steps: Annotated[int, typer.Option("--lr-warm-up-steps", help="Linear lr warm-up steps.")] = 0,
    lr_decay_steps: Annotated[Optional[int], typer.Option(
        "--lr-decay-steps", help="Linear lr decay to 0 at the end (default: 20% of the steps).",
        show_default=False)] = None,
    lr_end: Annotated[Optional[float], typer.Option("--lr-end", help="End lr of cosine schedules (lr/10).",
                                                    show_default=False)] = None,
    adam_beta1: Annotated[float, typer.Option("--adam-beta1", help="Adam beta1.")] = 0.9,
    adam_beta2: Annotated[float, typer.Option("--adam-beta2", help="Adam beta2.")] = 0.999,
    context_size: Annotated[int, typer.Option("--context-size", help="Tokens per row read (405 = BOS + quiz).")
                            ] = 405,
    normalize_activations: Annotated[str, typer.Option(
        "--normalize-activations", help="none, expected_average_only_in, layer_norm, covariance_whitening.")
    ] = "expected_average_only_in",
    apply_b_dec_to_input: Annotated[bool, typer.Option(
        "--apply-b-dec-to-input/--no-apply-b-dec-to-input", help="Subtract b_dec from the SAE input.")] = False,
    decoder_init_norm: Annotated[float, typer.Option(
        "--decoder-init-norm", help="Norm of the decoder rows at init (heuristic init); 0 = off.")] = 0.1,
    n_batches_in_buffer: Annotated[int, typer.Option("--n-batches-in-buffer", help="Activation buffer (batches).")
                                   ] = 64,
    store_batch_size: Annotated[int, typer.Option("--store-batch-size", help="Quizzes per model forward.")] = 16,
    mixing_fraction: Annotated[float, typer.Option(
        "--activations-mixing-fraction", help="Share of the buffer kept for mixing.")] = 0.5,
    feature_sampling_window: Annotated[int, typer.Option(
        "--feature-sampling-window", help="Steps per window of the feature-sparsity statistics.")] = 1000,
    dead_feature_window: Annotated[int, typer.Option(
        "--dead-feature-window", help="Steps without firing that make a feature dead.")] = 1000,
    dead_feature_threshold: Annotated[float, typer.Option(
        "--dead-feature-threshold", help="Firing rate below which a feature counts as dead.")] = 1e-4,
    norm_batches: Annotated[int, typer.Option(
        "--n-batches-for-norm-estimate", help="Batches read to estimate the activation norm.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed (SAELens and the generated quizzes).")] = 42,
    dtype: Annotated[str, typer.Option("--dtype", help="SAE dtype.")] = "float32",
    device: DeviceOption = "cpu",
    autocast: Annotated[bool, typer.Option("--autocast", help="bfloat16 autocast of the SAE.")] = False,
    compile_sae: Annotated[bool, typer.Option("--compile-sae", help="torch.compile the SAE.")] = False,
    n_checkpoints: Annotated[int, typer.Option(
        "--n-checkpoints", help="Checkpoints during training, in OUT.checkpoints/ beside OUT (kept after "
        "the run; --resume continues from the latest).")] = 0,
    wandb: Annotated[bool, typer.Option("--wandb", help="Log to Weights & Biases (off by default).")] = False,
    wandb_project: Annotated[str, typer.Option("--wandb-project", help="With --wandb: the project.")] = "culture_sae",
    wandb_log_frequency: Annotated[int, typer.Option(
        "--wandb-log-frequency", help="With --wandb: log every this many steps.")] = 30,
    eval_every_n_wandb_logs: Annotated[int, typer.Option(
        "--eval-every-n-wandb-logs", help="With --wandb: run SAELens's evals every this many logs.")] = 20,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", help="Any other LanguageModelSAERunnerConfig / SAE config field: KEY=VALUE (JSON value); "
        "repeatable.", show_default=False)] = None,
    push: Annotated[Optional[str], typer.Option("--push", help="Then upload to this hub model repo.",
                                                show_default=False)] = None,
    path_in_repo: Annotated[Optional[str], typer.Option(
        "--path-in-repo", help="Folder in the repo (default gpt-K/<hook>, e.g. gpt-0/blocks_8_mlp_out).",
        show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push: create the repo private.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out.")] = False,
    json_path: Annotated[OptionalOutputFile, typer.Option(
        "--json", help="Also write the summary to this file (with --out, all or nothing).", show_default=False)
    ] = None,
) -> None:
    """Train an SAE on a model's activations with SAELens's training runner.

    Defaults: the earlier toolkit's run (expansion 32, L1 5, lr 2e-5 constant
    with decay over the last 20%, L1 warm-up 5%, 4,096 tokens x 30,000 steps,
    context 405, activations normalised, heuristic decoder init). Writes
    cfg.json + sae_weights.safetensors (SAE.load_from_disk(OUT)) and
    training_summary.json.
    """
    import time

    from culture.sae import DEFAULT_HOOK, SAETrainSettings, train_sae
    from culture.sae.training import default_path_in_repo, prepare_out

    if resume:
        given = given_options() - {"out", "resume", "device", "json_path", "push", "path_in_repo", "private"}
        if given:
            fail(f"--resume continues the run with its own settings: {', '.join(option_flag(n) for n in sorted(given))} "
                 "cannot be given (only --device, --json, --push, --path-in-repo, --private)")
        from culture.sae.training import read_run_record

        record = read_run_record(out)
        settings = record["settings"]
        settings.device = device
        model, source, hook = record.get("model_id"), record.get("source"), settings.hook_name
        dataset = Path(record["dataset"]) if record.get("dataset") else None
        tasks, noise, num_quizzes = record.get("tasks"), record.get("noise", noise), record.get("num_quizzes")
        seed, batch_tokens, context_size = settings.seed, settings.train_batch_size_tokens, settings.context_size
        if model is None:
            fail(f"{out}: the run record names no model")
    else:
        if model is None:
            fail("--model is required (the model whose activations the SAE reads)")
        if num_quizzes is not None and num_quizzes < 1:
            fail(f"--num-quizzes must be >= 1, got {num_quizzes}")
        if num_quizzes is not None and dataset is not None:
            fail("--num-quizzes is for generated quizzes; drop it with --dataset")
        if tasks and dataset is not None:
            fail("--tasks is for generated quizzes; a --dataset has its own tasks")
        check_noise(noise)
        extra = _parse_options(option)
        if k is not None:
            extra["k"] = k
        settings = SAETrainSettings(
            hook_name=hook or DEFAULT_HOOK, architecture=architecture, expansion_factor=expansion_factor,
            d_sae=d_sae, l1_coefficient=l1_coefficient, lp_norm=lp_norm, l1_warm_up_steps=l1_warm_up_steps,
            steps=steps, training_tokens=training_tokens, train_batch_size_tokens=batch_tokens,
            context_size=context_size, lr=lr, lr_scheduler_name=lr_scheduler, lr_warm_up_steps=lr_warm_up_steps,
            lr_decay_steps=lr_decay_steps, lr_end=lr_end, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
            normalize_activations=normalize_activations, apply_b_dec_to_input=apply_b_dec_to_input,
            decoder_init_norm=decoder_init_norm or None, n_batches_in_buffer=n_batches_in_buffer,
            store_batch_size_prompts=store_batch_size, activations_mixing_fraction=mixing_fraction,
            feature_sampling_window=feature_sampling_window, dead_feature_window=dead_feature_window,
            dead_feature_threshold=dead_feature_threshold, n_batches_for_norm_estimate=norm_batches, seed=seed,
            dtype=dtype, device=device, autocast=autocast, compile_sae=compile_sae, n_checkpoints=n_checkpoints,
            wandb=wandb, wandb_project=wandb_project, wandb_log_frequency=wandb_log_frequency,
            eval_every_n_wandb_logs=eval_every_n_wandb_logs, extra=extra)
    if private and not push:
        fail("--private needs --push")
    settings.check()
    prepare_out(out, overwrite)
    _keep_interrupted_run(out, resume, overwrite)
    if tasks:
        from culture.world import resolve_tasks

        resolve_tasks(list(tasks))
    if push:
        from culture.hub import check_push

        check_push("SAE", push)

    hooked, src, dev = _load_model(model, source, device, sae=False)
    settings.device = str(dev)
    from culture.sae.common import check_hook, default_hook

    if not resume:
        hook = settings.hook_name = check_hook(hooked, hook or default_hook(hooked))
    if dataset is not None:
        from culture.sae.training import load_training_dataset

        load_training_dataset(dataset, context_size)  # a bad directory: one line before any work
    err_console.print(f"model {model} of {src.name}, hook {hook}, {settings.total_steps:,} steps x "
                      f"{batch_tokens:,} tokens", highlight=False)
    t0 = time.perf_counter()
    with progress() as bar, _resumable_or_gone(out):
        result = train_sae(hooked, out, settings, dataset=dataset,
                           tasks=list(tasks) if tasks else src.default_tasks(),
                           noise=noise, num_quizzes=num_quizzes, model_name=f"culture-gpt-{model}",
                           overwrite=overwrite, progress=_reporter(bar),
                           extra_summary={"model_id": model, "source": src.name},
                           summary_json=None if is_stdout(json_path) else json_path,
                           resume=resume)
    s = result.summary
    s["wall_seconds"] = time.perf_counter() - t0

    from rich.table import Table

    table = Table(title=f"SAE trained: {out}", title_justify="left")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    rows = [
        ("hook", s["hook_name"]), ("features (d_sae)", _num(s["d_sae"])), ("d_in", _num(s["d_in"])),
        ("steps", _num(s["steps"])), ("training tokens", _num(s["training_tokens"])),
        ("tokens/s", _num(s["tokens_per_second"], 4)),
        ("variance explained (last 10% of steps)", _num(s["explained_variance"])),
        ("L0 (features per token)", _num(s["l0"])),
        ("dead features", f"{_num(s['dead_features'])} ({pct(s['dead_fraction'])})"),
        ("mse loss", _num(s.get("mse_loss"))), ("l1 loss", _num(s.get("l1_loss"))),
        ("dataset", (f"{s['dataset_rows']:,} generated quizzes (seed {seed}, noise {noise:g})"
                     if str(s["dataset"]).startswith("generated:")
                     else f"{s['dataset']} ({s['dataset_rows']:,} rows)")),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    print_table(table)
    if is_stdout(json_path):
        write_json(json_path, s)
    elif json_path is not None:
        err_console.print(f"wrote {json_path}", highlight=False)
    if push:
        from culture.sae import push_sae

        where = path_in_repo or default_path_in_repo(model, hook)
        url = push_sae(out, push, where, private=private)
        err_console.print(f"pushed to {push}/{where}: {url}", highlight=False)


# ------------------------------------------------------------------ eval


@sae_app.command("eval")
def eval_command(
    model: _ModelIdOption,
    sae: _SaeOption,
    subfolder: _SubfolderOption = None,
    source: ModelSourceOption = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Held-out test quizzes.")] = 500,
    tasks: TasksOption = None,
    c_quizzes: CQuizzesOption = True,
    quizzes: QuizKindsOption = "both",
    noise: NoiseOption = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set (not the training seed).")] = 0,
    dense_threshold: Annotated[float, typer.Option(
        "--dense-threshold", help="A feature firing on more than this share of positions is dense.")] = 0.1,
    batch_size: BatchSizeOption = 16,
    device: DeviceOption = "cpu",
    json_path: JsonOption = None,
) -> None:
    """Evaluate an SAE per task: variance explained, L0, dead/dense features,
    loss recovered and greedy accuracy with the SAE spliced in vs clean vs the
    hook zero-ablated."""
    check_test_set_options(num_samples, batch_size, seed, noise)
    if not 0 < dense_threshold <= 1:
        fail(f"--dense-threshold must be in (0, 1], got {dense_threshold}")
    from culture.sae import evaluate_sae

    hooked, src, dev = _load_model(model, source, device, sae=True)
    sae_obj = _load_sae_for(sae, subfolder, hooked, dev, model)
    ts = _test_set(src, num_samples, tasks, c_quizzes, seed, noise, quizzes)
    with progress() as bar:
        report = _reporter(bar)
        results = evaluate_sae(hooked, sae_obj, ts, batch_size=batch_size, dense_threshold=dense_threshold,
                               device=dev, progress=lambda p, d, t: report(p, d, t))

    from rich.table import Table

    table = Table(title=f"SAE {sae} at {results.hook_name} ({results.d_sae:,} features), model {model}",
                  title_justify="left")
    for name in ("task", "n", "var. expl.", "L0", "dead", "dense"):
        table.add_column(name, justify="left" if name == "task" else "right")
    for g in results.groups:
        r = results.by_group[g]
        table.add_row(g, str(r["n"]), _num(r.get("explained_variance"), 3), _num(r.get("l0"), 3),
                      _num(r.get("dead_features")), _num(r.get("dense_features")))
    print_table(table)
    print_table(_splice_table(results))
    err_console.print("CE = cross-entropy per cell; loss recovered = (zero - SAE) / (zero - clean), floor: the "
                      "hook zero-ablated; transform cells = the cells the rule changes; dead = never fires on "
                      "these quizzes", highlight=False)
    if json_path is not None:
        d = results.to_dict()
        d["settings"].update({"model": model, "source": src.name, "sae": sae, "subfolder": subfolder,
                              "sae_path": getattr(sae_obj, "culture_path", None), **ts.settings()})
        write_json_or_fail(json_path, d)


# ------------------------------------------------------------------ features


@sae_app.command("features")
def features_command(
    model: _ModelIdOption,
    sae: _SaeOption,
    subfolder: _SubfolderOption = None,
    source: ModelSourceOption = None,
    features: Annotated[Optional[list[str]], typer.Option(
        "--features", help="Feature ids (several after one flag: --features 10 24).", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", help="Without --features: the top N features by --rank-by.")] = 10,
    rank_by: Annotated[str, typer.Option("--rank-by", metavar=one_of("mean", "frequency", "max"), help="mean (activation), frequency or max.")] = "mean",
    examples: Annotated[int, typer.Option("--examples", help="Top quizzes shown per feature.")] = 8,
    steer: Annotated[Optional[list[str]], typer.Option(
        "--steer", help="FEATURE=SCALE (0 ablates) or FEATURE=@VALUE (clamp); several after one flag. "
        "Re-runs greedy accuracy with the SAE spliced in (error term kept).", show_default=False)] = None,
    out: Annotated[OutputDir, typer.Option(
        "--out", "-o", help="Dashboard folder (index.html, PNGs, report.json), written whole.")
    ] = Path("sae-features"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out.")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Test quizzes.")] = 500,
    tasks: TasksOption = None,
    c_quizzes: CQuizzesOption = True,
    quizzes: QuizKindsOption = "both",
    noise: NoiseOption = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set.")] = 0,
    batch_size: BatchSizeOption = 16,
    device: DeviceOption = "cpu",
) -> None:
    """Study SAE features: where they fire (grids with the cell highlighted),
    how often per task, the colours they promote (W_dec @ W_U), and optional
    steering; writes a static HTML dashboard."""
    check_test_set_options(num_samples, batch_size, seed, noise)
    if examples < 1:
        fail(f"--examples must be >= 1, got {examples}")
    if top < 1:
        fail(f"--top must be >= 1, got {top}")
    ids = []
    for v in features or []:
        for part in str(v).replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                fail(f"--features: not a feature id: {part!r}")
    from culture.sae import feature_report, parse_steer, steer_accuracy

    specs = parse_steer(list(steer)) if steer else []  # syntax first; range once the SAE is loaded
    hooked, src, dev = _load_model(model, source, device, sae=True)
    sae_obj = _load_sae_for(sae, subfolder, hooked, dev, model)
    d_sae = int(sae_obj.cfg.d_sae)
    for f in ids:
        if not 0 <= f < d_sae:
            fail(f"feature {f} out of range (the SAE has {d_sae:,} features: 0..{d_sae - 1})")
    if specs:
        specs = parse_steer(list(steer), d_sae)
    ts = _test_set(src, num_samples, tasks, c_quizzes, seed, noise, quizzes)
    with progress() as bar:
        report = _reporter(bar)
        rep = feature_report(hooked, sae_obj, ts, features=ids or None, top=top, rank_by=rank_by,
                             n_examples=examples, batch_size=batch_size, device=dev,
                             progress=lambda p, d, t: report(p, d, t))
        if specs:
            rep.steering = steer_accuracy(hooked, sae_obj, ts, specs, batch_size=batch_size, device=dev,
                                          progress=lambda p, d, t: report(p, d, t))

    from culture.dashboard import write_dashboard

    meta = {"model": model, "source": src.name, "sae": sae if not subfolder else f"{sae} ({subfolder})",
            "sae path": getattr(sae_obj, "culture_path", None), "hook": rep.hook_name,
            "features in the SAE": f"{d_sae:,}", "test quizzes": f"{len(ts)} (seed {seed}, noise {noise:g})",
            "tasks": ", ".join(ts.tasks)}
    images = {f["id"]: rep.image(f["id"]) for f in rep.features}
    with outputs(announce=False) as staged:  # the whole folder replaced at once (no stale PNGs)
        index = write_dashboard(staged.dir(out), rep.to_dict(), images, meta,
                                title=f"SAE features, model {model}, {rep.hook_name}")
    index = out / index.name

    from rich.table import Table

    table = Table(title=f"Features of {sae} at {rep.hook_name}", title_justify="left")
    for name in ("feature", "token freq", "quiz freq", "mean act", "max act", "most frequent in", "promotes",
                 "suppresses", "strongest at"):
        table.add_column(name, justify="left" if name in ("most frequent in", "promotes", "suppresses",
                                                          "strongest at") else "right")
    for f in rep.features:
        tasks_sorted = sorted(((v["token_frequency"] or 0.0, k) for k, v in f["by_task"].items()), reverse=True)
        top_task = f"{tasks_sorted[0][1]} ({pct(tasks_sorted[0][0])})" if tasks_sorted and tasks_sorted[0][0] else "-"
        promotes = ", ".join(c for c, _ in f["promotes"]) or "-"
        suppresses = ", ".join(c for c, _ in f["suppresses"]) or "-"
        ex = f["examples"][0] if f["examples"] else None
        where = f"{ex['task']}: reads {ex['reads']}" if ex else "never fires"
        table.add_row(str(f["id"]), pct(f["token_frequency"]), pct(f["quiz_frequency"]),
                      _num(f["mean_activation"], 3), _num(f["max_activation"], 3), top_task, promotes, suppresses,
                      where)
    print_table(table)
    if rep.steering:
        st = Table(title=f"Steering {' '.join(rep.steering['specs'])} (SAE spliced in, error term kept; "
                   "95% intervals, change paired)", title_justify="left")
        for name in ("task", "cells", "n", "grid acc clean", "grid acc steered", "change (points)",
                     "CE/cell clean / steered", "quizzes changed"):
            st.add_column(name, justify="left" if name in ("task", "cells") else "right")
        for g, v in rep.steering["by_group"].items():
            for family, label in _FAMILY_LABELS.items():
                c, t = v[family]["clean"], v[family]["steered"]
                st.add_row(g if family == "all_cells" else "", label, str(v["n"]), pct_ci(c["grid_accuracy"]),
                           pct_ci(t["grid_accuracy"]), points_ci(t["change"]["grid_accuracy"]),
                           f"{_num(c['ce']['value'], 3)} / {_num(t['ce']['value'], 3)}",
                           str(v["changed"]) if family == "all_cells" else "",
                           end_section=family == "transform_cells")
        print_table(st)
    err_console.print(f"wrote {index} (open it in a browser), {len([i for i in images.values() if i])} PNGs "
                      f"and report.json in {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae", help=HELP, short_help="Sparse autoencoders: train, eval, features.")
