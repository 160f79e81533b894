"""The culture experiment: train GPTs on world quizzes, then let them make culture quizzes.

Faithful to the reference loop (REFERENCE.md section 6):

- every round, the model with the lowest test accuracy trains one epoch on
  fresh world quizzes (plus the train culture quizzes, at most half the
  epoch), with randomised structures (all five) and prompt noise, per-token
  cross-entropy over all 404 tokens, Adam;
- after its epoch the model is evaluated on the shared test set (world quizzes
  plus test culture quizzes), and its checkpoint ``gpt_{k:03d}.pth`` is written
  in the reference format;
- when every model reaches ``threshold``, the culture phase runs
  (:func:`culture_phase`): candidates are generated, filtered, and the kept ones
  join ``c_quizzes.pth``; every accuracy is reset so all models retrain.

Decisions where the reference is silent or where we deviate on purpose:

- the test accuracy is the *expected sampled accuracy* (exact expectation of
  the reference's sampled accuracy, from one teacher-forced pass) over the four
  deterministic structures;
- each model keeps its Adam state across epochs (the reference makes a fresh
  Adam every epoch; ``fresh_optimizer=True`` restores that);
- ``train_state.pth`` (weights_only-loadable: tensors, numbers, strings) holds
  the round, accuracies, optimiser states and RNG state, so ``resume`` continues
  a killed run losing at most the epoch in progress;
- optional, off by default (the reference has none): ``ema_decay`` keeps an
  exponential moving average of each model's weights (torch's
  ``AveragedModel``), updated after every optimiser step. The average is what
  is evaluated, written to ``gpt_{k:03d}.pth`` and used by the culture phase;
  the raw training weights live in ``train_state.pth`` for ``resume``;
- optional, off by default: ``train_structures`` restricts the structures the
  training quizzes are drawn from (numbers 1..5 of REFERENCE section 1, each
  with its own prompt noise), e.g. (1, 2) to spend a fine-tuning stage on the
  noised structures. Evaluation always uses the four deterministic ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from culture import quiz as Q
from culture.io import atomic_torch_save, atomic_write_json, load_tensors, make_parents, remove_empty
from culture.mygpt import MyGPT, read_checkpoint, save_checkpoint
from culture.quizfile import load_c_quizzes, save_c_quizzes
from culture.train_config import TrainConfig, TrainingError, TrainingSettingsError  # noqa: F401 - part of this API

STATE_FILE = "train_state.pth"
CONFIG_FILE = "train_config.json"
LOG_FILE = "train.log"
CULTURE_LOG_FILE = "culture_log.jsonl"
#: sidecar of c_quizzes.pth: for each kept quiz, its phase, generating model and solve probabilities
C_QUIZZES_INFO_FILE = "c_quizzes_info.json"


@dataclass
class EpochReport:
    round: int
    model: int
    epoch: int
    train_loss: float
    test_perplexity: float
    accuracy: float
    greedy_accuracy: float
    quizzes_per_second: float
    seconds: float


@dataclass
class CultureReport:
    """What one culture phase did: counts of candidates and why they were rejected."""

    round: int
    generated: int = 0
    trivial: int = 0
    undecided: int = 0  # some model strictly between proba_not_understands and proba_understands
    too_easy: int = 0  # no model fails
    too_hard: int = 0  # more than max_fail models fail
    kept: int = 0
    kept_train: int = 0
    kept_test: int = 0
    batches: int = 0
    seconds: float = 0.0
    rule: dict = field(default_factory=dict)


class TrainingHooks:
    """Callbacks for progress displays; the defaults do nothing."""

    def epoch_start(self, model: int, epoch: int, nb_batches: int) -> None: ...

    def batch_end(self, model: int, batch: int, loss: float, quizzes_per_second: float) -> None: ...

    def epoch_end(self, report: EpochReport) -> None: ...

    def culture_end(self, report: CultureReport) -> None: ...

    def log(self, line: str) -> None: ...


def _seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def training_record(source) -> tuple[list[dict], list[int] | None]:
    """(stages, epochs per model) of how a model source was trained, when it
    records it: a packed zoo (``zoo.json``) or a ``culture-interp train`` run
    directory. A stage is {command, rounds, epochs, training_seconds}; epochs
    are cumulative. ([], None) for sources that say nothing (published models)."""
    if source.has_file("zoo.json"):
        try:
            info = json.loads(source.file("zoo.json").read_text())
            return zoo_stages(info), info.get("epochs")
        except (OSError, ValueError, AttributeError):
            return [], None
    if source.has_file(CONFIG_FILE) and source.has_file(STATE_FILE):
        try:
            config = json.loads(source.file(CONFIG_FILE).read_text())
            state = load_tensors(source.file(STATE_FILE), TrainingError, "training state")
        except Exception:  # noqa: BLE001 -- an unreadable record is no record
            return [], None
        return run_stages(config, state), [int(e) for e in state["epochs"]]
    return [], None


def _stage(command, rounds, epochs, seconds) -> dict:
    return {"command": command, "rounds": rounds, "epochs": epochs, "training_seconds": seconds}


def zoo_stages(info: dict) -> list[dict]:
    """The training stages of a packed zoo's ``zoo.json``; a zoo packed before
    stages were recorded counts as one stage."""
    return info.get("stages") or [_stage(info.get("command"), info.get("rounds"), info.get("epochs"),
                                         info.get("training_seconds"))]


def run_stages(config: dict, state: dict) -> list[dict]:
    """The stages of a run directory: those of its --init-from source, then its own."""
    earlier = (config.get("init_from") or {}).get("stages") or []
    stage = _stage(config.get("command"), int(state["round"]), [int(e) for e in state["epochs"]],
                   float(state.get("seconds", 0.0)))
    stage["resumes"] = list(config.get("resumes", []))
    return [*earlier, stage]


class CultureRun:
    """A culture training run in a result directory (see module docstring).

    Notebook use::

        run = CultureRun.create("runs/demo", TrainConfig(nb_models=2, model="17K"))
        run.train(max_rounds=4)
    """

    def __init__(self, out: str | os.PathLike, config: TrainConfig, hooks: TrainingHooks | None = None):
        self.out = Path(out)
        self.config = config
        self.hooks = hooks or TrainingHooks()
        self.device = torch.device(config.device)
        self.models: list[MyGPT] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.averages: list = []  # AveragedModel per model when config.ema_decay, else empty
        self.accuracies: list[float] = []  # expected sampled accuracy: drives the loop, as the reference
        self.greedy_accuracies: list[float] = []  # greedy accuracy on the same test set (--target-greedy-accuracy)
        self.epochs: list[int] = []
        self.round = 0
        self.seconds = 0.0  # training + evaluation + culture time, summed over rounds
        self.train_c_quizzes: list[torch.Tensor] = []
        self.test_c_quizzes: list[torch.Tensor] = []
        self.culture_reports: list[dict] = []
        # one record per kept c-quiz, in the order of c_quizzes.pth (see C_QUIZZES_INFO_FILE)
        self.c_quiz_info: dict[str, list[dict]] = {"train": [], "test": []}
        self._test_set = None

    # ------------------------------------------------------------ creation

    @classmethod
    def create(cls, out, config: TrainConfig, hooks: TrainingHooks | None = None,
               command: str | None = None, init_from=None) -> "CultureRun":
        """A new run in ``out``. ``init_from`` (a model source: directory,
        "bundled", hub id) starts model k from that source's model k instead of
        random weights (same architecture required; Adam starts fresh)."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise TrainingError(f"{out} exists and is not a directory")
        if out.exists() and any(out.iterdir()):
            raise TrainingError(f"{out} is not empty: use --resume to continue it, or another --out")
        # every setting checked before anything is written
        config.check()  # bounds, tasks, structures, preset, heads that divide the width
        if init_from is not None:
            from culture.sources import resolve_source

            src = resolve_source(init_from)
            for k in range(config.nb_models):
                src.check_model_id(k)
        existed = out.exists()
        made = make_parents(out)
        try:
            return cls._create(out, config, hooks, command, init_from)
        except BaseException:  # a run that could not start leaves nothing behind
            if existed:  # it was empty
                for entry in out.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            else:
                shutil.rmtree(out, ignore_errors=True)
            remove_empty(made)
            raise

    @classmethod
    def _create(cls, out: Path, config: TrainConfig, hooks, command, init_from) -> "CultureRun":
        run = cls(out, config, hooks)
        torch.manual_seed(_seed(config.seed, 0))
        cfg = config.gpt_config()
        for k in range(config.nb_models):
            torch.manual_seed(_seed(config.seed, 1, k))
            run.models.append(MyGPT(cfg).to(run.device))
            run.accuracies.append(0.0)
            run.greedy_accuracies.append(0.0)
            run.epochs.append(0)
        record = {**config.to_dict(), "command": command}
        if init_from is not None:
            record["init_from"] = {"source": str(init_from), "stages": run._init_from(init_from)}
        atomic_write_json(out / CONFIG_FILE, record)
        run.optimizers = [run._make_optimizer(m) for m in run.models]
        run._make_averages()
        torch.manual_seed(_seed(config.seed, 2))
        run.log(f"created {config.nb_models} models of {run.models[0].num_parameters:,} parameters "
                f"({cfg.dim_model}/{cfg.dim_keys}/{cfg.dim_hidden}/{cfg.nb_heads}/{cfg.nb_blocks}) in {out}")
        run.save_all()
        return run

    @classmethod
    def resume(cls, out, hooks: TrainingHooks | None = None, device: str | None = None,
               command: str | None = None, **overrides) -> "CultureRun":
        """Reopen a run directory where a (possibly killed) run stopped.
        ``overrides``: settings to change (max_rounds, target_accuracy,
        target_greedy_accuracy, lr -- Adam's moments are kept); ``command`` is
        added to the run's record."""
        out = Path(out)
        cfg_path, state_path = out / CONFIG_FILE, out / STATE_FILE
        if not cfg_path.is_file() or not state_path.is_file():
            raise TrainingError(f"{out} holds no resumable run ({CONFIG_FILE} / {STATE_FILE} missing)")
        try:
            record = json.loads(cfg_path.read_text())
            config = TrainConfig.from_dict(record)
        except (ValueError, TypeError, AttributeError) as exc:
            raise TrainingError(f"{cfg_path}: unreadable run configuration ({exc})") from None
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        if device is not None:
            config.device = device
        config.check()
        run = cls(out, config, hooks)
        state = load_tensors(state_path, TrainingError, "training state")
        for k in range(config.nb_models):
            weights, accuracy = read_checkpoint(out / f"gpt_{k:03d}.pth")
            model = MyGPT(config.gpt_config())
            model.load_state_dict({n: v.float() for n, v in weights.items()})
            run.models.append(model.to(run.device))
        # with averaging, the checkpoints hold the averages and the state the raw
        # weights; a run that turns averaging on starts both from the checkpoints
        run._make_averages(started=True)
        raw = state.get("raw_weights") if run.averages else None
        for model, weights in zip(run.models, raw or []):
            model.load_state_dict(weights)
        run.optimizers = [run._make_optimizer(m) for m in run.models]
        for opt, opt_state in zip(run.optimizers, state["optimizers"]):
            if opt_state:
                opt.load_state_dict(opt_state)
            for group in opt.param_groups:  # the saved state holds the old lr; --lr on resume changes it
                group["lr"] = config.lr
        run.accuracies = [float(a) for a in state["accuracies"]]
        run.greedy_accuracies = [float(a) for a in state.get("greedy_accuracies", [0.0] * len(run.accuracies))]
        run.epochs = [int(e) for e in state["epochs"]]
        run.round = int(state["round"])
        run.seconds = float(state.get("seconds", 0.0))
        run.culture_reports = list(state.get("culture_reports", []))
        torch.set_rng_state(state["rng"])
        if (out / "c_quizzes.pth").is_file():
            train, test = load_c_quizzes(out / "c_quizzes.pth")
            run.train_c_quizzes = [train] if len(train) else []
            run.test_c_quizzes = [test] if len(test) else []
            run.c_quiz_info = read_c_quiz_info(out / C_QUIZZES_INFO_FILE, len(train), len(test))
        if command is not None or any(v is not None for v in overrides.values()):
            record = {**record, **config.to_dict()}
            record["resumes"] = [*record.get("resumes", []), {"round": run.round, "command": command}]
            atomic_write_json(cfg_path, record)
        run.log(f"resumed at round {run.round}, accuracies {_fmt(run.accuracies)}")
        return run

    def _init_from(self, source) -> list[dict]:
        """Copy model k of ``source`` into model k. When the source records
        its training (a packed zoo or a run directory), the epoch counts carry
        over -- so the next epochs draw fresh quizzes, not the source's first
        epochs again -- and its training stages are returned for the record."""
        from culture.sources import load_model, resolve_source

        src = resolve_source(source)
        stages, epochs = training_record(src)
        for k, model in enumerate(self.models):
            loaded, accuracy = load_model(k, source=src)
            if loaded.config.to_dict() | {"dropout": 0, "attention_dropout": None} != \
                    model.config.to_dict() | {"dropout": 0, "attention_dropout": None}:
                raise TrainingError(f"--init-from {source}: model {k} has another architecture "
                                    f"({loaded.config.dim_model}/{loaded.config.dim_keys}/{loaded.config.dim_hidden}/"
                                    f"{loaded.config.nb_heads}/{loaded.config.nb_blocks})")
            model.load_state_dict(loaded.state_dict())
            self.accuracies[k] = float(accuracy or 0.0)
            if epochs is not None and k < len(epochs):
                self.epochs[k] = int(epochs[k])
        self.log(f"initialised the models from {source} (epochs so far {self.epochs})")
        return stages

    def _make_averages(self, started: bool = False) -> None:
        """One exponential moving average of the weights per model (torch's
        AveragedModel), when config.ema_decay asks for it. ``started``: the
        models already hold averaged weights (resume), so the first update
        averages instead of copying."""
        self.averages = []
        if not self.config.ema_decay:
            return
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        decay = float(self.config.ema_decay)
        if not 0.0 < decay < 1.0:
            raise TrainingError(f"ema_decay must be in (0, 1), got {decay}")
        for model in self.models:
            average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            if started:
                average.n_averaged.fill_(1)
            self.averages.append(average)

    def published(self, k: int) -> MyGPT:
        """Model k as evaluated and checkpointed: its weight average when
        averaging is on, else the trained model itself."""
        return self.averages[k].module if self.averages else self.models[k]

    def _make_optimizer(self, model: MyGPT) -> torch.optim.Optimizer:
        # fused Adam: one kernel for all parameters (CPU and CUDA)
        try:
            return torch.optim.Adam(model.parameters(), lr=self.config.lr, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(model.parameters(), lr=self.config.lr, foreach=True)

    # ------------------------------------------------------------ persistence

    def save_model(self, k: int) -> None:
        save_checkpoint(self.published(k), self.accuracies[k], self.out / f"gpt_{k:03d}.pth")

    def save_state(self) -> None:
        state = {
            "round": self.round,
            "accuracies": [float(a) for a in self.accuracies],
            "greedy_accuracies": [float(a) for a in self.greedy_accuracies],
            "epochs": list(self.epochs),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "rng": torch.get_rng_state(),
            "culture_reports": self.culture_reports,
            "seconds": float(self.seconds),
        }
        if self.averages:
            state["raw_weights"] = [m.state_dict() for m in self.models]
        atomic_torch_save(state, self.out / STATE_FILE)

    def save_c_quizzes(self) -> None:
        # sidecar first: a kill between the two leaves records for quizzes not yet
        # saved, which read_c_quiz_info trims; never quizzes without records
        atomic_write_json(self.out / C_QUIZZES_INFO_FILE, {
            "description": "one record per quiz of c_quizzes.pth, same order: the culture phase that kept it "
                           "(1 = first), the training round, the model that generated it and every model's "
                           "probability of solving it both ways when it was kept",
            "nb_models": len(self.models), **self.c_quiz_info})
        save_c_quizzes(self.out / "c_quizzes.pth", self.train_c_quizzes, self.test_c_quizzes)

    def save_all(self) -> None:
        for k in range(len(self.models)):
            self.save_model(k)
        self.save_c_quizzes()
        self.save_state()

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.out / LOG_FILE, "a") as f:
            f.write(f"{stamp} {line}\n")
        self.hooks.log(line)

    # ------------------------------------------------------------ data

    @property
    def tasks(self):
        from culture.world import DEFAULT_TASKS

        return tuple(self.config.tasks) if self.config.tasks else tuple(DEFAULT_TASKS)

    def c_quizzes(self, split: str) -> torch.Tensor:
        parts = self.train_c_quizzes if split == "train" else self.test_c_quizzes
        return torch.cat(parts) if parts else torch.empty(0, Q.QUIZ_LEN, dtype=torch.long)

    def epoch_data(self, k: int) -> torch.Tensor:
        """Fresh training quizzes for model k's next epoch: world quizzes plus
        train culture quizzes (at most half), shuffled, random structures (all
        five unless config.train_structures), prompt noise."""
        from culture.world import generate_quizzes

        cfg = self.config
        g = torch.Generator().manual_seed(_seed(cfg.seed, 3, k, self.epochs[k]))
        c = self.c_quizzes("train")
        n = cfg.train_samples
        if len(c) > n // 2:
            c = c[torch.randperm(len(c), generator=g)[: n // 2]]
        world = generate_quizzes(n - len(c), tasks=self.tasks, seed=_seed(cfg.seed, 4, k, self.epochs[k]))
        quizzes = torch.cat([world, c])
        quizzes = quizzes[torch.randperm(len(quizzes), generator=g)]
        quizzes, _ = Q.random_structures(quizzes, cfg.structures(), generator=g)
        return Q.add_prompt_noise(quizzes, cfg.prompt_noise, generator=g)

    def test_set(self):
        """The shared test set: world quizzes + test culture quizzes, four
        deterministic structures, prompt noise (the evaluation protocol)."""
        if self._test_set is None:
            from culture.evaluation import make_test_set

            self._test_set = make_test_set(
                n=self.config.test_samples, tasks=self.tasks, c_quizzes=self.c_quizzes("test"),
                seed=_seed(self.config.seed, 5), noise=self.config.prompt_noise,
            )
        return self._test_set

    # ------------------------------------------------------------ training

    def train_epoch(self, k: int) -> EpochReport:
        """One epoch of model k on fresh data, then its evaluation and checkpoint."""
        cfg = self.config
        model, opt = self.models[k], self.optimizers[k]
        if cfg.fresh_optimizer:
            opt = self.optimizers[k] = self._make_optimizer(model)
        data = self.epoch_data(k)
        batches = data.split(cfg.batch_size)
        self.hooks.epoch_start(k, self.epochs[k], len(batches))
        model.train()
        start = time.perf_counter()
        total_loss, seen = 0.0, 0
        for b, batch in enumerate(batches):
            batch = batch.to(self.device, non_blocking=True)
            logits = model(batch)
            loss = F.cross_entropy(logits.transpose(1, 2), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.averages:
                self.averages[k].update_parameters(model)
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            self.hooks.batch_end(k, b, loss.item(), seen / max(time.perf_counter() - start, 1e-9))
        seconds = time.perf_counter() - start
        model.eval()
        published = self.published(k)
        published.eval()
        scores = self.evaluate_model(published)
        self.accuracies[k] = scores["accuracy"]
        self.greedy_accuracies[k] = scores["greedy_accuracy"]
        self.epochs[k] += 1
        report = EpochReport(
            round=self.round, model=k, epoch=self.epochs[k], train_loss=total_loss / max(seen, 1),
            test_perplexity=scores["perplexity"], accuracy=scores["accuracy"],
            greedy_accuracy=scores["greedy_accuracy"], quizzes_per_second=seen / max(seconds, 1e-9),
            seconds=seconds,
        )
        self.log(
            f"round {self.round} model {k} epoch {report.epoch} train_loss {report.train_loss:.4f} "
            f"test_perplexity {report.test_perplexity:.4f} accuracy {report.accuracy:.4f} "
            f"greedy {report.greedy_accuracy:.4f} ({report.quizzes_per_second:.1f} quizzes/s)"
        )
        self.hooks.epoch_end(report)
        return report

    def evaluate_model(self, model: MyGPT) -> dict:
        """Perplexity, expected sampled accuracy and greedy accuracy on the test set."""
        from culture.evaluation import score_quizzes

        ts = self.test_set()
        s = score_quizzes(model, ts, batch_size=self.config.eval_batch_size, device=self.device)
        return {
            "perplexity": float(math.exp(s["ce"].mean().item())),
            "accuracy": float(s["log_prob"].exp().mean().item()),
            "greedy_accuracy": float(s["greedy_correct"].float().mean().item()),
        }

    def weakest(self) -> int:
        """The model to train next: lowest accuracy; ties go to the model with
        fewer epochs (so untrained models all get their first epoch), then id."""
        return min(range(len(self.models)), key=lambda k: (self.accuracies[k], self.epochs[k], k))

    def should_stop(self, max_rounds: int | None) -> str | None:
        cfg = self.config
        limit = max_rounds if max_rounds is not None else cfg.max_rounds
        if limit is not None and self.round >= limit:
            return f"reached {limit} rounds"
        if cfg.target_accuracy is not None and min(self.accuracies) >= cfg.target_accuracy:
            return f"every model reached {cfg.target_accuracy}"
        target = cfg.target_greedy_accuracy
        if target is not None and min(self.greedy_accuracies) >= target:
            return f"every model reached greedy accuracy {target}"
        return None

    def step(self) -> EpochReport | CultureReport:
        """One round: the culture phase when every model is good enough, else
        one epoch of the weakest model. The changed checkpoints and the state
        are saved after it (checkpoints first: a kill in between only repeats
        an epoch)."""
        cfg = self.config
        start = time.perf_counter()
        if cfg.culture and min(self.accuracies) >= cfg.threshold:
            report = self.culture_phase()
            self.accuracies = [0.0] * len(self.models)  # force retraining, as the reference
            self.greedy_accuracies = [0.0] * len(self.models)
            self._test_set = None
            changed = range(len(self.models))
        else:
            report = self.train_epoch(self.weakest())
            changed = [report.model]
        self.round += 1
        self.seconds += time.perf_counter() - start
        for k in changed:
            self.save_model(k)
        self.save_state()
        return report

    def train(self, max_rounds: int | None = None) -> str:
        """Run rounds until a stopping rule holds; returns why it stopped."""
        while True:
            reason = self.should_stop(max_rounds)
            if reason:
                self.log(f"stopped: {reason}; accuracies {_fmt(self.accuracies)}")
                return reason
            self.step()

    # ------------------------------------------------------------ culture

    def culture_phase(self) -> CultureReport:
        cfg = self.config
        models = [self.published(k) for k in range(len(self.models))]
        report = culture_phase(
            models, nb_train=cfg.nb_c_quizzes_train, nb_test=cfg.nb_c_quizzes_test, config=cfg,
            seed=_seed(cfg.seed, 6, self.round), device=self.device, round=self.round,
        )
        kept_train, kept_test, rep, info = report
        phase = len(self.culture_reports) + 1
        for split, kept, records in (("train", kept_train, info["train"]), ("test", kept_test, info["test"])):
            if len(kept):
                (self.train_c_quizzes if split == "train" else self.test_c_quizzes).append(kept)
            self.c_quiz_info[split] += [{"phase": phase, "round": self.round, **r} for r in records]
        self.save_c_quizzes()
        self.culture_reports.append(asdict(rep))
        with open(self.out / CULTURE_LOG_FILE, "a") as f:
            f.write(json.dumps(asdict(rep)) + "\n")
        self.log(
            f"culture round {self.round}: generated {rep.generated}, trivial {rep.trivial}, "
            f"undecided {rep.undecided}, no model fails {rep.too_easy}, too many fail {rep.too_hard}, "
            f"kept {rep.kept} ({rep.kept_train} train, {rep.kept_test} test)"
        )
        self.hooks.culture_end(rep)
        return rep


# ---------------------------------------------------------------- culture phase


def solve_probabilities(models, quizzes: torch.Tensor, *, noise: float, rounds: int,
                        generator: torch.Generator, batch_size: int = 100, device="cpu") -> torch.Tensor:
    """(n, nb_models) probability that each model solves each quiz both ways:
    exp(log p(f_B | A, f_A, B) + log p(B | f_A, A, f_B)) — structures 1 and 2 of
    the reference with their prompt noise —, averaged over ``rounds`` noise draws."""
    from culture.evaluation import predicted_log_probs

    total = torch.zeros(len(quizzes), len(models))
    for _ in range(rounds):
        noisy = [Q.add_prompt_noise(Q.reconfigure(quizzes, s), noise, generator=generator)
                 for s in Q.STRUCTURES[:2]]
        for j, model in enumerate(models):
            logp = sum(predicted_log_probs(model, x, batch_size=batch_size, device=device).cpu() for x in noisy)
            total[:, j] += logp.exp()
    return total / rounds


def validation_rule(probas: torch.Tensor, *, understands: float, not_understands: float,
                    max_fail: int) -> dict[str, torch.Tensor]:
    """The reference's keep rule, with the reason for each rejection:
    every model is either >= understands or <= not_understands, and between 1
    and max_fail models are <= not_understands."""
    succeed = (probas >= understands).sum(1)
    fail = (probas <= not_understands).sum(1)
    decided = succeed + fail == probas.shape[1]
    return {
        "kept": decided & (fail >= 1) & (fail <= max_fail),
        "undecided": ~decided,
        "too_easy": decided & (fail == 0),
        "too_hard": decided & (fail > max_fail),
    }


def generate_candidates(model: MyGPT, n: int, *, temperature_hot: float, temperature_cold: float,
                        generator: torch.Generator, device="cpu") -> torch.Tensor:
    """Candidate culture quizzes, canonical structure: from an empty quiz in
    (f_B, f_A, A, B), f_B sampled hot, then f_A, A, B cold; then, in
    (A, f_A, B, f_B), f_B sampled again cold."""
    from culture.generation import generate_blocks

    s5 = Q.STRUCTURES[4]
    quizzes = Q.empty_quizzes(n, s5).to(device)
    block = Q.block_mask(n, [0], cells_only=True, device=device)
    rest = Q.block_mask(n, [1, 2, 3], cells_only=True, device=device)
    temperature = torch.full((Q.QUIZ_LEN,), float(temperature_cold))
    temperature[block[0].cpu()] = float(temperature_hot)
    # colours only: a marker token inside a grid would not be a quiz
    quizzes = generate_blocks(model, quizzes, block | rest, temperature=temperature.to(device),
                              generator=generator, colors_only=True)
    quizzes = Q.reconfigure(quizzes, Q.CANONICAL)
    last = Q.block_mask(n, [3], cells_only=True, device=device)
    quizzes = generate_blocks(model, quizzes, last, temperature=float(temperature_cold), generator=generator,
                              colors_only=True)
    return quizzes.cpu()


def culture_phase(models, *, nb_train: int, nb_test: int, config: TrainConfig, seed: int,
                  device="cpu", round: int = 0):
    """Generate, filter and keep culture quizzes. Returns (train, test,
    CultureReport, info): ``info["train"|"test"]`` has one record per kept quiz
    (``generator``: the model that made it, ``solve_probabilities``: every
    model's probability of solving it, as the rule saw them).

    Each batch, one model (drawn at random) generates candidates; trivial ones
    are dropped; the others are kept by :func:`validation_rule` on
    :func:`solve_probabilities`. Stops when nb_train + nb_test are kept or after
    ``config.culture_max_batches`` batches (logged)."""
    g = torch.Generator().manual_seed(seed)
    wanted = nb_train + nb_test
    report = CultureReport(round=round, rule={
        "understands": config.proba_understands, "not_understands": config.proba_not_understands,
        "max_fail": config.max_fail, "averaging_rounds": config.averaging_rounds,
        "prompt_noise": config.prompt_noise,
    })
    kept: list[torch.Tensor] = []
    records: list[dict] = []
    start = time.perf_counter()
    for _ in range(config.culture_max_batches):
        if sum(len(x) for x in kept) >= wanted:
            break
        report.batches += 1
        generator_id = int(torch.randint(len(models), (1,), generator=g))
        generator_model = models[generator_id]
        generator_model.eval()
        with torch.inference_mode():
            candidates = generate_candidates(
                generator_model, config.culture_batch, temperature_hot=config.temperature_hot,
                temperature_cold=config.temperature_cold, generator=g, device=device,
            )
        report.generated += len(candidates)
        trivial = Q.is_trivial(candidates)
        report.trivial += int(trivial.sum())
        candidates = candidates[~trivial]
        if not len(candidates):
            continue
        with torch.inference_mode():
            probas = solve_probabilities(models, candidates, noise=config.prompt_noise,
                                         rounds=config.averaging_rounds, generator=g,
                                         batch_size=config.eval_batch_size, device=device)
        verdict = validation_rule(probas, understands=config.proba_understands,
                                  not_understands=config.proba_not_understands, max_fail=config.max_fail)
        report.undecided += int(verdict["undecided"].sum())
        report.too_easy += int(verdict["too_easy"].sum())
        report.too_hard += int(verdict["too_hard"].sum())
        kept.append(candidates[verdict["kept"]])
        records += [{"generator": generator_id, "solve_probabilities": [float(f"{float(p):.6f}") for p in row]}
                    for row in probas[verdict["kept"]]]
    all_kept = torch.cat(kept) if kept else torch.empty(0, Q.QUIZ_LEN, dtype=torch.long)
    all_kept, records = all_kept[:wanted], records[:wanted]
    train, test = all_kept[:nb_train], all_kept[nb_train:wanted]
    report.kept, report.kept_train, report.kept_test = len(all_kept), len(train), len(test)
    report.seconds = time.perf_counter() - start
    return train, test, report, {"train": records[:nb_train], "test": records[nb_train:]}


def read_c_quiz_info(path: str | os.PathLike | None, nb_train: int, nb_test: int) -> dict[str, list[dict]]:
    """The per-quiz records of a c_quizzes sidecar (see C_QUIZZES_INFO_FILE),
    trimmed to the quizzes the c_quizzes file holds; records missing (no
    sidecar: ``path`` None or absent, or an older run) are ``{"phase": None}``."""
    try:
        data = json.loads(Path(path).read_text()) if path is not None and Path(path).is_file() else {}
    except (OSError, ValueError):
        data = {}
    out = {}
    for split, n in (("train", nb_train), ("test", nb_test)):
        records = [r for r in data.get(split, []) if isinstance(r, dict)][:n]
        out[split] = records + [{"phase": None}] * (n - len(records))
    return out


def _fmt(values) -> str:
    return " ".join(f"{v:.4f}" for v in values)
