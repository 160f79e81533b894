"""``culture-interp train``: the culture experiment (culture.training)."""

from __future__ import annotations

from typing import Optional

import typer

from culture.defaults import PROMPT_NOISE, TEST_SAMPLES
from culture_cli.common import OutputDir, console, err_console, fail, given_options, invocation, option_flag


def register(app: typer.Typer) -> None:
    app.command("train", help="Train culture GPTs on world quizzes, with the culture phase (reference loop).")(train)


#: the settings a resume may change (every other option is the run's own)
RESUMABLE = ("max_rounds", "target_accuracy", "target_greedy_accuracy", "lr", "ema_decay", "train_structures",
             "threshold", "culture_max_batches", "device")


def train(
    out: OutputDir = typer.Option(..., "--out", help="Result directory (gpt_XXX.pth, c_quizzes.pth, train.log)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out where it stopped; may change only --max-rounds, "
        "--target-accuracy, --target-greedy-accuracy, --lr, --ema-decay, --train-structures, --threshold, "
        "--culture-max-batches and --device."),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="Start model k from model k of this source (directory, bundled, hub id)."),
    nb_models: int = typer.Option(5, "--nb-models", min=1, help="Number of GPTs."),
    model: str = typer.Option("37M", "--model", help="Size preset: 17K, 4M, 37M, 122M, 352M."),
    dim_model: Optional[int] = typer.Option(None, "--dim-model", min=1,
                                            help="Custom size: width of the residual stream (overrides the preset)."),
    dim_keys: Optional[int] = typer.Option(None, "--dim-keys", min=1,
                                           help="Custom size: key / query size per head (overrides the preset)."),
    dim_hidden: Optional[int] = typer.Option(None, "--dim-hidden", min=1,
                                             help="Custom size: hidden width of the MLPs (overrides the preset)."),
    nb_heads: Optional[int] = typer.Option(None, "--nb-heads", min=1,
                                           help="Custom size: attention heads per block; must divide --dim-model."),
    nb_blocks: Optional[int] = typer.Option(None, "--nb-blocks", min=1,
                                            help="Custom size: blocks (attention + MLP) (overrides the preset)."),
    dropout: float = typer.Option(0.1, "--dropout", min=0.0, max=0.99,
                                  help="Dropout (embedding, attention, MLP), as the reference."),
    attention_dropout: Optional[float] = typer.Option(
        None, "--attention-dropout", min=0.0, max=0.99,
        help="Dropout on attention probabilities (default: --dropout). 0 enables the fused attention kernels "
             "(about 2-3x faster training steps on CPU)."),
    tasks: Optional[list[str]] = typer.Option(None, "--tasks", help="World tasks (default: the eight)."),
    train_samples: int = typer.Option(40_000, "--train-samples", min=1, help="Quizzes per epoch."),
    test_samples: int = typer.Option(TEST_SAMPLES, "--test-samples", min=1, help="Test-set size."),
    batch_size: int = typer.Option(25, "--batch-size", min=1, help="Quizzes per training step."),
    lr: float = typer.Option(
        5e-4, "--lr", min=0.0, help="Adam learning rate; with --resume, a new one (Adam's moments are kept)."),
    prompt_noise: float = typer.Option(PROMPT_NOISE, "--prompt-noise", min=0.0, max=1.0,
                                       help="Prompt noise of the noised structures (1 and 2)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the models, quizzes and culture phases."),
    threshold: float = typer.Option(0.95, "--threshold", min=0.0, max=1.0,
                                    help="Accuracy every model needs before a culture phase."),
    max_rounds: Optional[int] = typer.Option(None, "--max-rounds", min=1, help="Stop after this many rounds."),
    target_accuracy: Optional[float] = typer.Option(
        None, "--target-accuracy", min=0.0, max=1.0,
        help="Stop when every model reaches this test accuracy (expected sampled)."),
    target_greedy_accuracy: Optional[float] = typer.Option(
        None, "--target-greedy-accuracy", min=0.0, max=1.0,
        help="Stop when every model reaches this greedy accuracy on the run's test set."),
    no_culture: bool = typer.Option(False, "--no-culture", help="Train only; never make culture quizzes."),
    max_fail: int = typer.Option(2, "--max-fail", min=1, help="At most this many models may fail a kept quiz."),
    culture_batch: int = typer.Option(500, "--culture-batch", min=1, help="Candidates generated per batch."),
    culture_max_batches: int = typer.Option(
        20, "--culture-max-batches", min=1,
        help="A culture phase stops after this many batches of candidates, even short of its quota."),
    fresh_optimizer: bool = typer.Option(False, "--fresh-optimizer", help="New Adam every epoch (reference)."),
    ema_decay: Optional[float] = typer.Option(
        None, "--ema-decay", min=0.0, max=0.9999,
        help="Keep an exponential moving average of each model's weights (decay per step, e.g. 0.999) and "
             "evaluate and save the average; off by default (the reference has none). With --resume: turn it "
             "on, change it, or 0 to turn it off."),
    train_structures: Optional[list[int]] = typer.Option(
        None, "--train-structures", min=1, max=5,
        help="Draw training quizzes from these structures only (1..5 as in show-quiz; default: all five, "
             "as the reference), e.g. 1 2 for a stage on the noised structures. May change with --resume."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or mps."),
) -> None:
    from culture.evaluation import check_device
    from culture.training import CultureRun, TrainConfig

    given = given_options()
    if resume:
        fixed = sorted(given - set(RESUMABLE) - {"out", "resume"})
        if fixed:
            fail(f"--resume continues the run with its own settings: {', '.join(option_flag(n) for n in fixed)} "
                 f"cannot change on resume (it may change {', '.join(option_flag(n) for n in RESUMABLE)})")
    if not lr > 0:
        fail(f"--lr must be > 0, got {lr}")
    check_device(device)
    hooks = RichTrainingHooks()
    command = invocation()
    structures = tuple(train_structures) if train_structures else None
    if resume:
        values = {"max_rounds": max_rounds, "target_accuracy": target_accuracy,
                  "target_greedy_accuracy": target_greedy_accuracy, "lr": lr, "ema_decay": ema_decay,
                  "train_structures": structures, "threshold": threshold,
                  "culture_max_batches": culture_max_batches}
        overrides = {k: (v if k in given else None) for k, v in values.items()}
        run = CultureRun.resume(out, hooks=hooks, device=device, command=command, **overrides)
    else:
        config = TrainConfig(
            nb_models=nb_models, model=model, dim_model=dim_model, dim_keys=dim_keys, dim_hidden=dim_hidden,
            nb_heads=nb_heads, nb_blocks=nb_blocks, dropout=dropout,
            attention_dropout=attention_dropout, tasks=tuple(tasks) if tasks else None,
            train_samples=train_samples, test_samples=test_samples, batch_size=batch_size,
            lr=lr,
            prompt_noise=prompt_noise, seed=seed, threshold=threshold, max_rounds=max_rounds,
            target_accuracy=target_accuracy, target_greedy_accuracy=target_greedy_accuracy,
            culture=not no_culture, max_fail=max_fail,
            culture_batch=culture_batch, culture_max_batches=culture_max_batches, fresh_optimizer=fresh_optimizer,
            ema_decay=ema_decay or None, train_structures=structures, device=device,
        )
        run = CultureRun.create(out, config, hooks=hooks, command=command, init_from=init_from)
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
