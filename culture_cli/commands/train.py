"""``culture-interp train``: the culture experiment (culture.training)."""

from __future__ import annotations

from dataclasses import fields
from typing import Optional

import typer

from culture.settings import default_of
from culture.train_config import TrainConfig, TrainingSettingsError
from culture_cli.common import OutputDir, console, err_console, fail, given_options, invocation, option_flag


def register(app: typer.Typer) -> None:
    app.command("train", help="Train culture GPTs on world quizzes, with the culture phase (reference loop).")(train)


_FIELDS = frozenset(f.name for f in fields(TrainConfig))

#: the settings a resume may change (every other option is the run's own)
RESUMABLE = ("max_rounds", "target_accuracy", "target_greedy_accuracy", "lr", "ema_decay", "train_structures",
             "threshold", "culture_max_batches", "device")


def _d(name: str):
    """The default of TrainConfig field ``name``: the one source of every default below."""
    return default_of(TrainConfig, name)


# every option but --out, --resume and --init-from is the TrainConfig field of the same name (its
# default, its bounds: checked by TrainConfig.check); tests/test_cli_train.py compares them
def train(
    out: OutputDir = typer.Option(..., "--out", help="Result directory (gpt_XXX.pth, c_quizzes.pth, train.log)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out where it stopped; may change only --max-rounds, "
        "--target-accuracy, --target-greedy-accuracy, --lr, --ema-decay, --train-structures, --threshold, "
        "--culture-max-batches and --device."),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="Start model k from model k of this source (directory, bundled, hub id)."),
    nb_models: int = typer.Option(_d("nb_models"), "--nb-models", help="Number of GPTs."),
    model: str = typer.Option(_d("model"), "--model", help="Size preset: 17K, 4M, 37M, 122M, 352M."),
    dim_model: Optional[int] = typer.Option(_d("dim_model"), "--dim-model",
                                            help="Custom size: width of the residual stream (overrides the preset)."),
    dim_keys: Optional[int] = typer.Option(_d("dim_keys"), "--dim-keys",
                                           help="Custom size: key / query size per head (overrides the preset)."),
    dim_hidden: Optional[int] = typer.Option(_d("dim_hidden"), "--dim-hidden",
                                             help="Custom size: hidden width of the MLPs (overrides the preset)."),
    nb_heads: Optional[int] = typer.Option(_d("nb_heads"), "--nb-heads",
                                           help="Custom size: attention heads per block; must divide --dim-model."),
    nb_blocks: Optional[int] = typer.Option(_d("nb_blocks"), "--nb-blocks",
                                            help="Custom size: blocks (attention + MLP) (overrides the preset)."),
    dropout: float = typer.Option(_d("dropout"), "--dropout",
                                  help="Dropout (embedding, attention, MLP), as the reference."),
    attention_dropout: Optional[float] = typer.Option(
        _d("attention_dropout"), "--attention-dropout",
        help="Dropout on attention probabilities (default: --dropout). 0 enables the fused attention kernels "
             "(about 2-3x faster training steps on CPU)."),
    tasks: Optional[list[str]] = typer.Option(_d("tasks"), "--tasks", help="World tasks (default: the eight)."),
    train_samples: int = typer.Option(_d("train_samples"), "--train-samples", help="Quizzes per epoch."),
    test_samples: int = typer.Option(_d("test_samples"), "--test-samples", help="Test-set size."),
    batch_size: int = typer.Option(_d("batch_size"), "--batch-size", help="Quizzes per training step."),
    lr: float = typer.Option(
        _d("lr"), "--lr", help="Adam learning rate; with --resume, a new one (Adam's moments are kept)."),
    prompt_noise: float = typer.Option(_d("prompt_noise"), "--prompt-noise",
                                       help="Prompt noise of the noised structures (1 and 2)."),
    seed: int = typer.Option(_d("seed"), "--seed", help="Seed of the models, quizzes and culture phases."),
    threshold: float = typer.Option(_d("threshold"), "--threshold",
                                    help="Accuracy every model needs before a culture phase."),
    max_rounds: Optional[int] = typer.Option(_d("max_rounds"), "--max-rounds", help="Stop after this many rounds."),
    target_accuracy: Optional[float] = typer.Option(
        _d("target_accuracy"), "--target-accuracy",
        help="Stop when every model reaches this test accuracy (expected sampled)."),
    target_greedy_accuracy: Optional[float] = typer.Option(
        _d("target_greedy_accuracy"), "--target-greedy-accuracy",
        help="Stop when every model reaches this greedy accuracy on the run's test set."),
    culture: bool = typer.Option(_d("culture"), "--culture/--no-culture",
                                 help="Make culture quizzes (--no-culture: train only)."),
    max_fail: int = typer.Option(_d("max_fail"), "--max-fail", help="At most this many models may fail a kept quiz."),
    proba_understands: float = typer.Option(
        _d("proba_understands"), "--proba-understands",
        help="Culture phase: a model solves a candidate when its solve probability is at least this."),
    proba_not_understands: float = typer.Option(
        _d("proba_not_understands"), "--proba-not-understands",
        help="Culture phase: a model fails a candidate when its solve probability is at most this."),
    temperature_hot: float = typer.Option(_d("temperature_hot"), "--temperature-hot",
                                          help="Culture phase: temperature of a candidate's first block."),
    temperature_cold: float = typer.Option(_d("temperature_cold"), "--temperature-cold",
                                           help="Culture phase: temperature of the other blocks."),
    averaging_rounds: int = typer.Option(_d("averaging_rounds"), "--averaging-rounds",
                                         help="Culture phase: prompt-noise draws a solve probability averages."),
    c_quizzes_train: Optional[int] = typer.Option(
        _d("c_quizzes_train"), "--c-quizzes-train",
        help="Culture quizzes kept for training per phase (default: --train-samples / 100)."),
    c_quizzes_test: Optional[int] = typer.Option(
        _d("c_quizzes_test"), "--c-quizzes-test",
        help="Culture quizzes kept for the test set per phase (default: --test-samples / 100)."),
    culture_batch: int = typer.Option(_d("culture_batch"), "--culture-batch", help="Candidates generated per batch."),
    culture_max_batches: int = typer.Option(
        _d("culture_max_batches"), "--culture-max-batches",
        help="A culture phase stops after this many batches of candidates, even short of its quota."),
    eval_batch_size: int = typer.Option(_d("eval_batch_size"), "--eval-batch-size",
                                        help="Quizzes per forward pass when evaluating and scoring candidates."),
    fresh_optimizer: bool = typer.Option(_d("fresh_optimizer"), "--fresh-optimizer",
                                         help="New Adam every epoch (reference)."),
    ema_decay: Optional[float] = typer.Option(
        _d("ema_decay"), "--ema-decay",
        help="Keep an exponential moving average of each model's weights (decay per step, e.g. 0.999) and "
             "evaluate and save the average; off by default (the reference has none). With --resume: turn it "
             "on, change it, or 0 to turn it off."),
    train_structures: Optional[list[int]] = typer.Option(
        _d("train_structures"), "--train-structures",
        help="Draw training quizzes from these structures only (1..5 as in show-quiz; default: all five, "
             "as the reference), e.g. 1 2 for a stage on the noised structures. May change with --resume."),
    device: str = typer.Option(_d("device"), "--device", help="cpu, cuda or mps."),
) -> None:
    from culture.evaluation import check_device
    from culture.training import CultureRun

    given = given_options()
    if resume:
        fixed = sorted(given - set(RESUMABLE) - {"out", "resume"})
        if fixed:
            fail(f"--resume continues the run with its own settings: {', '.join(option_flag(n) for n in fixed)} "
                 f"cannot change on resume (it may change {', '.join(option_flag(n) for n in RESUMABLE)})")
    check_device(device)
    hooks = RichTrainingHooks()
    command = invocation()
    settings = {k: v for k, v in locals().items() if k in _FIELDS}  # the options named as TrainConfig fields
    settings["tasks"] = tuple(tasks) if tasks else None
    settings["train_structures"] = tuple(train_structures) if train_structures else None
    try:
        if resume:
            overrides = {k: settings[k] if k in given else None for k in RESUMABLE if k != "device"}
            run = CultureRun.resume(out, hooks=hooks, device=device, command=command, **overrides)
        else:
            config = TrainConfig(**{**settings, "ema_decay": ema_decay or None}).check()
            run = CultureRun.create(out, config, hooks=hooks, command=command, init_from=init_from)
    except TrainingSettingsError as exc:
        fail(f"{option_flag(exc.field)}: {exc.detail}")
    with hooks.progress:
        reason = run.train()
    _summary(run, reason)


class RichTrainingHooks:
    """Shows the run: one progress bar per epoch with loss and quizzes/s, a line per epoch."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("model {task.fields[model]} epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} quizzes/s"),
            TimeElapsedColumn(),
            console=err_console,
        )
        self.task = None

    def epoch_start(self, model, epoch, nb_batches):
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("", total=nb_batches, model=model, epoch=epoch + 1, loss=float("nan"),
                                           speed=0.0)

    def batch_end(self, model, batch, loss, quizzes_per_second):
        self.progress.update(self.task, completed=batch + 1, loss=loss, speed=quizzes_per_second)

    def epoch_end(self, report):
        self.progress.console.print(
            f"round {report.round:4d}  model {report.model}  epoch {report.epoch:3d}  "
            f"loss {report.train_loss:.4f}  perplexity {report.test_perplexity:.4f}  "
            f"accuracy {report.accuracy:.3f}  greedy {report.greedy_accuracy:.3f}  "
            f"{report.quizzes_per_second:.0f} quizzes/s"
        )

    def culture_end(self, report):
        self.progress.console.print(
            f"culture round {report.round}: {report.generated} generated, {report.trivial} trivial, "
            f"{report.undecided} undecided, {report.too_easy} solved by all, {report.too_hard} failed by too many, "
            f"[bold]{report.kept} kept[/bold]"
        )

    def log(self, line):
        pass


def _summary(run, reason: str) -> None:
    from rich.table import Table

    table = Table(title=f"{run.out} — {reason}")
    table.add_column("model", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("test accuracy", justify="right")
    for k, (acc, ep) in enumerate(zip(run.accuracies, run.epochs)):
        table.add_row(str(k), str(ep), f"{acc:.4f}")
    console.print(table)
    n_train, n_test = len(run.c_quizzes("train")), len(run.c_quizzes("test"))
    console.print(f"culture quizzes: {n_train} train, {n_test} test  ({run.out / 'c_quizzes.pth'})")
