"""``culture-interp sae train|eval|features``: sparse autoencoders (SAELens) on
the culture GPTs. The library is :mod:`culture.sae`; SAELens, TransformerLens
and datasets are imported inside the commands only."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import fields
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from culture.defaults import PROMPT_NOISE
from culture.sae.common import DEFAULT_HOOK
from culture.sae.settings import NORM_ESTIMATE_MAX_BATCHES, NORM_ESTIMATE_STEPS_PER_BATCH, SAETrainSettings
from culture.settings import default_of
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


def _open_model(model: int, source: str | None, device: str, sae: bool, tasks=None):
    """(the opened source: device, source, tasks, all checked; model ``model`` as a TransformerLens model)."""
    from culture.sources import open_source

    opened = open_source(source, model, device=device, tasks=tasks)
    return opened, opened.hooked(model, sae=sae)


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


def _test_set(opened, num_samples, c_quizzes, seed, noise, quizzes="both"):
    from culture.evaluation import source_test_set

    ts = source_test_set(opened.source, num_samples, list(opened.tasks), c_quizzes=c_quizzes, seed=seed,
                         noise=noise, quizzes=quizzes)
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


def _d(name: str):
    """The default of SAETrainSettings field ``name``: the one source of the defaults below."""
    return default_of(SAETrainSettings, name)


#: the options of `sae train` that are not SAETrainSettings fields (the run's inputs and outputs)
TRAIN_INPUTS = ("model", "out", "resume", "source", "dataset", "push", "path_in_repo", "private", "overwrite",
                "json_path")
#: what --resume may change (every other option is the interrupted run's own)
RESUMABLE = ("out", "resume", "device", "json_path", "push", "path_in_repo", "private")


# every option but TRAIN_INPUTS is the SAETrainSettings field of the same name (its default; its bounds:
# checked by SAETrainSettings.check); tests/test_sae_settings.py compares them
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
    hook_name: Annotated[Optional[str], typer.Option(
        "--hook-name", "--hook", help="TransformerLens hook point (default: the middle block's MLP output, "
        "blocks.{n_layers // 2}.hook_mlp_out; the library's SAETrainSettings default is the published SAEs' "
        f"{DEFAULT_HOOK}).", show_default=False)] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="A `culture-interp dataset build` directory (input_ids: BOS + quiz); default: "
        "quizzes generated on the fly.", show_default=False)] = None,
    num_quizzes: Annotated[Optional[int], typer.Option(
        "--num-quizzes", help="Quizzes to generate without --dataset (default: as many as the run reads).",
        show_default=False)] = _d("num_quizzes"),
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", "--task", help="World tasks of the generated quizzes (default: the source's training tasks "
        "when it records them, else the 8 of the published models).", show_default=False)] = _d("tasks"),
    noise: Annotated[float, typer.Option("--noise", help="Prompt noise of the generated quizzes.")] = _d("noise"),
    steps: Annotated[int, typer.Option("--steps", help="Training steps (batches).")] = _d("steps"),
    training_tokens: Annotated[Optional[int], typer.Option(
        "--training-tokens", help="Training tokens (overrides --steps).", show_default=False)
    ] = _d("training_tokens"),
    train_batch_size_tokens: Annotated[int, typer.Option(
        "--train-batch-size-tokens", "--batch-tokens", help="Tokens per training batch.")
    ] = _d("train_batch_size_tokens"),
    architecture: Annotated[str, typer.Option(
        "--architecture", help="SAELens architecture: standard, gated, jumprelu, topk, batchtopk...")
    ] = _d("architecture"),
    expansion_factor: Annotated[int, typer.Option("--expansion-factor", help="d_sae = factor x d_in.")
                                ] = _d("expansion_factor"),
    d_sae: Annotated[Optional[int], typer.Option("--d-sae", help="Number of features (overrides the factor).",
                                                 show_default=False)] = _d("d_sae"),
    l1_coefficient: Annotated[float, typer.Option("--l1-coefficient", help="Sparsity penalty.")
                              ] = _d("l1_coefficient"),
    lp_norm: Annotated[float, typer.Option("--lp-norm", help="p of the sparsity penalty.")] = _d("lp_norm"),
    l1_warm_up_steps: Annotated[Optional[int], typer.Option(
        "--l1-warm-up-steps", help="L1 warm-up (default: 5% of the steps).", show_default=False)
    ] = _d("l1_warm_up_steps"),
    k: Annotated[Optional[int], typer.Option("--k", help="Active features of top-k architectures.",
                                             show_default=False)] = _d("k"),
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = _d("lr"),
    lr_scheduler_name: Annotated[str, typer.Option(
        "--lr-scheduler-name", "--lr-scheduler", help="constant, cosineannealing or cosineannealingwarmrestarts.")
    ] = _d("lr_scheduler_name"),
    lr_warm_up_steps: Annotated[int, typer.Option("--lr-warm-up-steps", help="Linear lr warm-up steps.")
                                ] = _d("lr_warm_up_steps"),
    lr_decay_steps: Annotated[Optional[int], typer.Option(
        "--lr-decay-steps", help="Linear lr decay to 0 at the end (default: 20% of the steps).",
        show_default=False)] = _d("lr_decay_steps"),
    lr_end: Annotated[Optional[float], typer.Option("--lr-end", help="End lr of cosine schedules (lr/10).",
                                                    show_default=False)] = _d("lr_end"),
    adam_beta1: Annotated[float, typer.Option("--adam-beta1", help="Adam beta1.")] = _d("adam_beta1"),
    adam_beta2: Annotated[float, typer.Option("--adam-beta2", help="Adam beta2.")] = _d("adam_beta2"),
    context_size: Annotated[int, typer.Option("--context-size", help="Tokens per row read (405 = BOS + quiz).")
                            ] = _d("context_size"),
    normalize_activations: Annotated[str, typer.Option(
        "--normalize-activations", help="none, expected_average_only_in, layer_norm, covariance_whitening.")
    ] = _d("normalize_activations"),
    apply_b_dec_to_input: Annotated[bool, typer.Option(
        "--apply-b-dec-to-input/--no-apply-b-dec-to-input", help="Subtract b_dec from the SAE input.")
    ] = _d("apply_b_dec_to_input"),
    decoder_init_norm: Annotated[float, typer.Option(
        "--decoder-init-norm", help="Norm of the decoder rows at init (heuristic init); 0 = off.")
    ] = _d("decoder_init_norm"),
    n_batches_in_buffer: Annotated[int, typer.Option(
        "--n-batches-in-buffer", help="Activation buffer, in rows of --context-size tokens.")
    ] = _d("n_batches_in_buffer"),
    store_batch_size_prompts: Annotated[int, typer.Option(
        "--store-batch-size-prompts", "--store-batch-size", help="Quizzes per model forward.")
    ] = _d("store_batch_size_prompts"),
    activations_mixing_fraction: Annotated[float, typer.Option(
        "--activations-mixing-fraction", help="Share of the buffer kept for mixing.")
    ] = _d("activations_mixing_fraction"),
    feature_sampling_window: Annotated[int, typer.Option(
        "--feature-sampling-window", help="Steps per window of the feature-sparsity statistics.")
    ] = _d("feature_sampling_window"),
    dead_feature_window: Annotated[int, typer.Option(
        "--dead-feature-window", help="Steps without firing that make a feature dead.")] = _d("dead_feature_window"),
    dead_feature_threshold: Annotated[float, typer.Option(
        "--dead-feature-threshold", help="Firing rate below which a feature counts as dead.")
    ] = _d("dead_feature_threshold"),
    n_batches_for_norm_estimate: Annotated[Optional[int], typer.Option(
        "--n-batches-for-norm-estimate", help=f"Training batches read to estimate the activation norm before the "
        f"first step (default: one per {NORM_ESTIMATE_STEPS_PER_BATCH} training steps, at least 1, at most "
        f"{NORM_ESTIMATE_MAX_BATCHES}).", show_default=False)] = _d("n_batches_for_norm_estimate"),
    seed: Annotated[int, typer.Option("--seed", help="Seed (SAELens and the generated quizzes).")] = _d("seed"),
    dtype: Annotated[str, typer.Option("--dtype", help="SAE dtype.")] = _d("dtype"),
    device: DeviceOption = _d("device"),
    autocast: Annotated[bool, typer.Option("--autocast", help="bfloat16 autocast of the SAE.")] = _d("autocast"),
    compile_sae: Annotated[bool, typer.Option("--compile-sae", help="torch.compile the SAE.")] = _d("compile_sae"),
    n_checkpoints: Annotated[int, typer.Option(
        "--n-checkpoints", help="Checkpoints during training, in OUT.checkpoints/ beside OUT (kept after "
        "the run; --resume continues from the latest).")] = _d("n_checkpoints"),
    wandb: Annotated[bool, typer.Option("--wandb", help="Log to Weights & Biases (off by default).")] = _d("wandb"),
    wandb_project: Annotated[str, typer.Option("--wandb-project", help="With --wandb: the project.")
                             ] = _d("wandb_project"),
    wandb_log_frequency: Annotated[int, typer.Option(
        "--wandb-log-frequency", help="With --wandb: log every this many steps.")] = _d("wandb_log_frequency"),
    eval_every_n_wandb_logs: Annotated[int, typer.Option(
        "--eval-every-n-wandb-logs", help="With --wandb: run SAELens's evals every this many logs.")
    ] = _d("eval_every_n_wandb_logs"),
    extra: Annotated[Optional[list[str]], typer.Option(
        "--extra", "--option", help="Any other LanguageModelSAERunnerConfig / SAE config field: KEY=VALUE (JSON "
        "value); repeatable.", show_default=False)] = None,
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
    training_summary.json. Every setting option is the SAETrainSettings
    field of the same name (culture.sae.settings).
    """
    options = dict(locals())
    if resume:
        settings, model, source, dataset = _resumed_run(out, device)
    else:
        if model is None:
            fail("--model is required (the model whose activations the SAE reads)")
        if num_quizzes is not None and dataset is not None:
            fail("--num-quizzes is for generated quizzes; drop it with --dataset")
        if tasks and dataset is not None:
            fail("--tasks is for generated quizzes; a --dataset has its own tasks")
        settings = _train_settings(options)
    if private and not push:
        fail("--private needs --push")
    from culture.sae.training import prepare_out

    prepare_out(out, overwrite)
    _keep_interrupted_run(out, resume, overwrite)
    if push:
        from culture.hub import check_push

        check_push("SAE", push)
    opened, hooked = _open_model(model, source, settings.device, sae=False, tasks=settings.tasks)
    _fit_to_model(settings, hooked, opened, resume)
    if dataset is not None:
        from culture.sae.training import load_training_dataset

        load_training_dataset(dataset, settings.context_size)  # a bad directory: one line before any work
    err_console.print(f"model {model} of {opened.source.name}, hook {settings.hook_name}, {settings.total_steps:,} "
                      f"steps x {settings.train_batch_size_tokens:,} tokens", highlight=False)
    result = _run_training(hooked, out, settings, dataset, model, opened, overwrite, json_path, resume)
    print_table(_trained_table(out, result.summary, settings))
    if is_stdout(json_path):
        write_json(json_path, result.summary)
    elif json_path is not None:
        err_console.print(f"wrote {json_path}", highlight=False)
    if push:
        from culture.sae import push_sae
        from culture.sae.training import default_path_in_repo

        where = path_in_repo or default_path_in_repo(model, settings.hook_name)
        url = push_sae(out, push, where, private=private)
        err_console.print(f"pushed to {push}/{where}: {url}", highlight=False)


def _train_settings(options: dict) -> SAETrainSettings:
    """The SAETrainSettings of the options (same names), checked: a bound
    broken is one line naming the option."""
    values = {f.name: options[f.name] for f in fields(SAETrainSettings) if f.name in options}
    values["hook_name"] = options["hook_name"] or DEFAULT_HOOK  # the model's middle block once it is loaded
    values["extra"] = _parse_options(options["extra"])
    values["tasks"] = tuple(options["tasks"]) if options["tasks"] else None
    return _checked(SAETrainSettings(**values))


def _checked(settings: SAETrainSettings) -> SAETrainSettings:
    from culture.sae.settings import SAETrainSettingsError

    try:
        return settings.check()
    except SAETrainSettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")


def _resumed_run(out: Path, device: str):
    """(settings, model id, source, dataset) of the interrupted run writing ``out``."""
    given = given_options() - set(RESUMABLE)
    if given:
        fail(f"--resume continues the run with its own settings: {', '.join(option_flag(n) for n in sorted(given))} "
             "cannot be given (only --device, --json, --push, --path-in-repo, --private)")
    from culture.sae.training import read_run_record

    record = read_run_record(out)
    settings = record["settings"]
    settings.device = device
    if record.get("model_id") is None:
        fail(f"{out}: the run record names no model")
    dataset = Path(record["dataset"]) if record.get("dataset") else None
    return settings, record["model_id"], record.get("source"), dataset


def _fit_to_model(settings: SAETrainSettings, hooked, opened, resume: bool) -> None:
    """The settings' device, hook (default: the model's middle block) and
    tasks (default: the source's) for this model."""
    from culture.sae.common import check_hook, default_hook

    settings.device = str(opened.device)
    if not resume:
        given = "hook_name" in given_options()
        settings.hook_name = check_hook(hooked, settings.hook_name if given else default_hook(hooked))
        settings.tasks = tuple(opened.tasks)


def _run_training(hooked, out, settings, dataset, model, opened, overwrite, json_path, resume):
    from culture.sae import train_sae

    t0 = time.perf_counter()
    with progress() as bar, _resumable_or_gone(out):
        result = train_sae(hooked, out, settings, dataset=dataset, model_name=f"culture-gpt-{model}",
                           overwrite=overwrite, progress=_reporter(bar),
                           extra_summary={"model_id": model, "source": opened.source.name},
                           summary_json=None if is_stdout(json_path) else json_path,
                           resume=resume)
    result.summary["wall_seconds"] = time.perf_counter() - t0
    return result


def _trained_table(out, s: dict, settings: SAETrainSettings):
    from rich.table import Table

    table = Table(title=f"SAE trained: {out}", title_justify="left")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    rows = [
        ("hook", s["hook_name"]), ("features (d_sae)", _num(s["d_sae"])), ("d_in", _num(s["d_in"])),
        ("steps", _num(s["steps"])), ("training tokens", _num(s["training_tokens"])),
        ("tokens/s", _num(s["tokens_per_second"], 4)),
        ("set-up seconds (data, runner, norm estimate)", _num(s.get("setup_seconds"), 3)),
        ("variance explained (last 10% of steps)", _num(s["explained_variance"])),
        ("L0 (features per token)", _num(s["l0"])),
        ("dead features", f"{_num(s['dead_features'])} ({pct(s['dead_fraction'])})"),
        ("mse loss", _num(s.get("mse_loss"))), ("l1 loss", _num(s.get("l1_loss"))),
        ("dataset", (f"{s['dataset_rows']:,} generated quizzes (seed {settings.seed}, noise {settings.noise:g})"
                     if str(s["dataset"]).startswith("generated:")
                     else f"{s['dataset']} ({s['dataset_rows']:,} rows)")),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


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
    noise: NoiseOption = PROMPT_NOISE,
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

    opened, hooked = _open_model(model, source, device, sae=True, tasks=tasks)
    src, dev = opened.source, opened.device
    sae_obj = _load_sae_for(sae, subfolder, hooked, dev, model)
    ts = _test_set(opened, num_samples, c_quizzes, seed, noise, quizzes)
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
    noise: NoiseOption = PROMPT_NOISE,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test set.")] = 0,
    batch_size: BatchSizeOption = 16,
    device: DeviceOption = "cpu",
) -> None:
    """Study SAE features: where they fire (grids with the cell highlighted),
    how often per task, the colours they promote (W_dec @ W_U), and optional
    steering; writes a static HTML dashboard.

    Memory grows linearly with --num-samples (a few scores per quiz for the
    clean and steered runs); activations are read one batch at a time and the
    top examples kept as a running top --examples per feature."""
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
    opened, hooked = _open_model(model, source, device, sae=True, tasks=tasks)
    src, dev = opened.source, opened.device
    sae_obj = _load_sae_for(sae, subfolder, hooked, dev, model)
    d_sae = int(sae_obj.cfg.d_sae)
    for f in ids:
        if not 0 <= f < d_sae:
            fail(f"feature {f} out of range (the SAE has {d_sae:,} features: 0..{d_sae - 1})")
    if specs:
        specs = parse_steer(list(steer), d_sae)
    ts = _test_set(opened, num_samples, c_quizzes, seed, noise, quizzes)
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
