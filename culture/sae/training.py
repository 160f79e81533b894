"""Training SAEs with SAELens's own runner.

:func:`train_sae` builds a ``LanguageModelSAERunnerConfig`` from
:class:`SAETrainSettings` and runs ``LanguageModelSAETrainingRunner`` with
``override_model`` = the culture GPT as a TransformerLens model (no tokenizer:
the dataset is pre-tokenized, ``prepend_bos=False``, no special token is
excluded, so token 0 -- BOS and the empty cell -- is never treated as padding)
and ``override_dataset`` = a ``datasets.Dataset`` with an ``input_ids`` column
(405 tokens: BOS 0 + the quiz), either a ``culture-interp dataset build``
directory or quizzes generated on the fly (:func:`generate_training_dataset`:
random structures among the four deterministic ones and prompt noise
:data:`culture.defaults.PROMPT_NOISE`, as in evaluation).

Defaults = the earlier toolkit's configuration (REFERENCE.md section 9, its
``train_sae.py``, itself the SAELens tutorial's): standard architecture,
expansion 32, L1 coefficient 5 (sparsity weighted by decoder norms, SAELens's
standard SAE), lr 2e-5 constant then linear decay to 0 over the last 20% of
steps, L1 warm-up over the first 5%, 4,096 tokens a batch, 30,000 steps,
context 405, activations normalised ``expected_average_only_in`` (the scale is
estimated on ``n_batches_for_norm_estimate`` batches before training -- by
default one per 10 training steps, at most 1,000
(:func:`culture.sae.settings.norm_estimate_batches`) -- and folded into the
weights at the end, so the saved SAE reads raw activations),
decoder rows initialised at norm 0.1 ("heuristic init"), encoder = decoder
transpose, b_dec not subtracted from the input, buffer 64 batches of 16
prompts, feature-sampling and dead-feature windows 1,000 steps, dead-feature
threshold 1e-4, seed 42, float32, wandb off.

The output directory holds SAELens's files (``cfg.json``,
``sae_weights.safetensors``, ``sparsity.safetensors``, ``runner_cfg.json``)
plus ``training_summary.json``; it is written into a temporary folder next to
it and renamed into place at the end (``SAE.load_from_disk(out)`` works).
``seed`` seeds the run (SAELens 6 does not: SAE init and buffer shuffles use
torch's global RNG, forked here).

Resuming (``resume=True``, ``sae train --resume``): SAELens checkpoints go to
``<out>.checkpoints/<samples>/`` beside ``out`` -- ``n_checkpoints`` evenly
spaced ones, and one when the run is stopped by Ctrl-C or SIGTERM -- with the
run's settings in ``<out>.checkpoints/culture_run.json``. A checkpoint counts
once SAELens has written all of it (``.complete`` marks it, so a kill while
writing one leaves the previous one in use). A resumed run starts from the
latest one with SAELens's ``resume_from_checkpoint`` (SAE weights, Adam,
schedules, the position in the data); its activation buffer is refilled, so
it is not bit-identical to an uninterrupted run. After a run that finishes,
the folder is removed unless ``n_checkpoints`` asked for checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from culture.defaults import PROMPT_NOISE
from culture.errors import first_sentence
from culture.hooks import parse_act_name
from culture.io import OutputSet, atomic_write_json, check_out_dir, json_safe
from culture.sae.common import SAEError, activation_size, hook_dirname
from culture.sae.settings import SEQ_LEN, SAETrainSettings
#: quizzes generated per chunk
_CHUNK = 1 << 15

Progress = Callable[[str, int, int, dict], None]  # (phase, done, total, info)


@dataclass
class SAETrainResult:
    """What :func:`train_sae` returns: the trained (inference) SAE, where it was
    written, and the run's summary (also in ``out/training_summary.json``)."""

    sae: object
    out: Path
    summary: dict


# ------------------------------------------------------------------ data


def _rows_needed(s: SAETrainSettings) -> int:
    tokens = s.total_tokens + s.norm_batches * s.train_batch_size_tokens
    rows = math.ceil(tokens / s.context_size)
    return rows + s.n_batches_in_buffer + 2 * s.store_batch_size_prompts


def generate_training_dataset(n: int, tasks=None, seed: int = 42, noise: float = PROMPT_NOISE,
                              progress: Callable[[int, int], None] | None = None):
    """An in-memory ``datasets.Dataset`` of ``n`` world quizzes: column
    ``input_ids`` = Sequence(int32, 405), BOS 0 + the quiz, each quiz in a
    structure drawn uniformly from the four deterministic ones with prompt
    noise ``noise`` (as in evaluation and ``dataset build``)."""
    import datasets
    import pyarrow as pa

    from culture.dataset import augment
    from culture.world import generate_quizzes_with_tasks, resolve_tasks

    names = resolve_tasks(tasks)
    n = int(n)
    if n < 1:
        raise SAEError(f"the training dataset needs at least one quiz, got {n}")
    rng = np.random.default_rng(int(seed))
    parts = []
    done = 0
    while done < n:
        m = min(_CHUNK, n - done)
        quizzes, _ = generate_quizzes_with_tasks(m, names, seed=rng)
        rows, _ = augment(quizzes, int(rng.integers(2**62)), noise)
        parts.append(rows.numpy().astype(np.int32).reshape(-1))
        done += m
        if progress is not None:
            progress(done, n)
    flat = np.concatenate(parts)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat), SEQ_LEN)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"), length=SEQ_LEN)})
    ds = datasets.Dataset(datasets.table.InMemoryTable(pa.table({"input_ids": column})))
    return ds.cast(features) if ds.features != features else ds


def load_training_dataset(path: str | os.PathLike, context_size: int = SEQ_LEN):
    """A ``dataset build`` directory (``load_from_disk``) reduced to its
    ``input_ids`` column; a DatasetDict gives its ``train`` split, or all its
    splits concatenated."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise SAEError(f"dataset directory not found: {path}")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises several kinds
        line = first_sentence(exc)
        raise SAEError(f"{path} is not a dataset saved with save_to_disk (culture-interp dataset build): "
                       f"{line}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else datasets.concatenate_datasets(list(ds.values()))
    return check_training_dataset(ds, context_size, str(path))


def check_training_dataset(ds, context_size: int = SEQ_LEN, name: str = "dataset"):
    if "input_ids" not in ds.column_names:
        raise SAEError(f"{name} has no input_ids column (columns: {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise SAEError(f"{name} is empty")
    first = ds[0]["input_ids"]
    if len(first) < context_size:
        raise SAEError(f"{name}: rows have {len(first)} tokens, fewer than the context size {context_size}")
    if int(first[0]) != 0:
        raise SAEError(f"{name}: rows do not start with BOS 0 (expected BOS + quiz, as culture-interp dataset "
                       "build writes)")
    return ds.select_columns(["input_ids"])


# ------------------------------------------------------------------ runner config


def _is_hook_z(hook_name: str) -> bool:
    try:
        return parse_act_name(hook_name)[0] == "z"
    except ValueError:
        return False


def _extra(settings: SAETrainSettings) -> dict:
    """The SAELens fields set by name: ``settings.extra``, and ``k`` when given."""
    return {**settings.extra, **({"k": settings.k} if settings.k is not None else {})}


def _sae_config(settings: SAETrainSettings, d_in: int):
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    arch = settings.architecture
    if arch not in SAE_TRAINING_CLASS_REGISTRY:
        known = ", ".join(sorted(SAE_TRAINING_CLASS_REGISTRY))
        raise SAEError(f"unknown SAE architecture {arch!r}; SAELens has: {known}")
    cfg_cls = SAE_TRAINING_CLASS_REGISTRY[arch][1]
    r = settings.resolved()
    wanted = {
        "d_in": d_in,
        "d_sae": settings.d_sae or settings.expansion_factor * d_in,
        "dtype": settings.dtype,
        "device": settings.device,
        "apply_b_dec_to_input": settings.apply_b_dec_to_input,
        "normalize_activations": settings.normalize_activations,
        "decoder_init_norm": settings.decoder_init_norm or None,  # 0: no heuristic init
        "l1_coefficient": settings.l1_coefficient,
        "lp_norm": settings.lp_norm,
        "l1_warm_up_steps": r["l1_warm_up_steps"],
    }
    extra = _extra(settings)
    if _is_hook_z(settings.hook_name) and extra.get("hook_head_index") is None:
        wanted["reshape_activations"] = "hook_z"  # heads flattened in training, unflattened when spliced in
    names = {f.name for f in fields(cfg_cls)}
    kwargs = {k: v for k, v in wanted.items() if k in names}
    kwargs.update({k: v for k, v in extra.items() if k in names})
    if not (isinstance(kwargs.get("d_sae"), int) and kwargs["d_sae"] >= 1):
        raise SAEError(f"d_sae must be an integer >= 1, got {kwargs.get('d_sae')!r}")
    try:
        return cfg_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SAEError(f"invalid {arch} SAE settings: {exc}") from None


def runner_config(settings: SAETrainSettings, d_in: int, *, output_path: str | None,
                  model_name: str = "culture-gpt", dataset_path: str = "", checkpoint_path: str | None = None):
    """The ``LanguageModelSAERunnerConfig`` of a run (verbose off)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    settings.check()
    r = settings.resolved()
    sae_cfg = _sae_config(settings, d_in)
    runner_fields = {f.name for f in fields(LanguageModelSAERunnerConfig)}
    sae_fields = {f.name for f in fields(type(sae_cfg))}
    extra = _extra(settings)
    unknown = sorted(set(extra) - runner_fields - sae_fields - {"logger"})
    if unknown:
        raise SAEError(f"unknown SAELens option(s) {', '.join(unknown)} (not a field of "
                       f"LanguageModelSAERunnerConfig or of the {settings.architecture} SAE config)")
    kwargs = dict(
        sae=sae_cfg,
        model_name=model_name,
        model_class_name="HookedTransformer",
        hook_name=settings.hook_name,
        dataset_path=dataset_path,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=settings.context_size,
        prepend_bos=False,
        exclude_special_tokens=False,
        training_tokens=r["training_tokens"],
        train_batch_size_tokens=settings.train_batch_size_tokens,
        n_batches_in_buffer=settings.n_batches_in_buffer,
        store_batch_size_prompts=settings.store_batch_size_prompts,
        activations_mixing_fraction=settings.activations_mixing_fraction,
        lr=settings.lr,
        lr_scheduler_name=settings.lr_scheduler_name,
        lr_warm_up_steps=settings.lr_warm_up_steps,
        lr_decay_steps=r["lr_decay_steps"],
        lr_end=settings.lr_end,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        feature_sampling_window=settings.feature_sampling_window,
        dead_feature_window=settings.dead_feature_window,
        dead_feature_threshold=settings.dead_feature_threshold,
        n_batches_for_norm_estimate=r["n_batches_for_norm_estimate"],
        seed=settings.seed,
        dtype=settings.dtype,
        device=settings.device,
        autocast=settings.autocast,
        compile_sae=settings.compile_sae,
        n_checkpoints=settings.n_checkpoints,
        checkpoint_path=checkpoint_path,
        output_path=output_path,
        model_from_pretrained_kwargs={},
        verbose=False,
        logger=LoggingConfig(
            log_to_wandb=settings.wandb,
            wandb_project=settings.wandb_project,
            wandb_log_frequency=settings.wandb_log_frequency,
            eval_every_n_wandb_logs=settings.eval_every_n_wandb_logs,
        ),
    )
    kwargs.update({k: v for k, v in extra.items() if k in runner_fields})
    try:
        return LanguageModelSAERunnerConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SAEError(f"invalid SAELens runner settings: {exc}") from None


# ------------------------------------------------------------------ instrumentation


class _CountingProvider:
    """Stands in for the runner's ActivationsStore as the trainer's data
    provider: counts the batches drawn (the first ones estimate the norm)."""

    def __init__(self, store, on_batch: Callable[[int], None]):
        self.__dict__["_store"] = store
        self.__dict__["_on_batch"] = on_batch
        self.__dict__["n_batches"] = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._store)
        self.__dict__["n_batches"] += 1
        self._on_batch(self.n_batches)
        return batch

    def __getattr__(self, name):
        return getattr(self._store, name)

    def __setattr__(self, name, value):
        setattr(self._store, name, value)


class _StepStats:
    """Wraps the SAE's ``training_forward_pass`` to watch the run (loss, L0,
    variance explained; one device sync per recorded step) without changing
    it, and times it: ``first_start`` (the first step begins: the set-up is
    over), ``first_done`` and ``last_done`` (both after a sync)."""

    def __init__(self, total_steps: int, progress: Progress | None):
        self.total = total_steps
        self.progress = progress
        self.step = 0
        self.every = max(1, total_steps // 400)
        self.records: list[tuple[int, dict]] = []
        self.first_start: float | None = None
        self.first_done: float | None = None
        self.last_done: float | None = None
        self.steps_timed = 0

    def wrap(self, fn):
        def training_forward_pass(step_input):
            if self.first_start is None:
                self.first_start = time.perf_counter()
            out = fn(step_input=step_input)
            self.step += 1
            if self.step % self.every == 0 or self.step == self.total or self.step == 1:
                self.records.append((self.step, self._measure(out)))  # syncs: the times below are real
                now = time.perf_counter()
                if self.first_done is None:
                    self.first_done = now
                else:
                    self.last_done, self.steps_timed = now, self.step - 1
            if self.progress is not None:
                self.progress("train", self.step, self.total, self.records[-1][1] if self.records else {})
            return out

        return training_forward_pass

    @staticmethod
    def _measure(out) -> dict:
        with torch.no_grad():
            x = out.sae_in.float()
            err = (out.sae_out.float() - x).pow(2).sum(-1).mean()
            var = (x - x.mean(0)).pow(2).sum(-1).mean()
            names = ["mse_loss", "loss", "l0", "err", "var", *out.losses]
            scalars = [out.losses.get("mse_loss", err), out.loss, (out.feature_acts > 0).float().sum(-1).mean(),
                       err, var, *out.losses.values()]
            values = torch.stack([torch.as_tensor(v, device=x.device).detach().float().reshape(())
                                  for v in scalars]).tolist()  # one sync
        info = dict(zip(names, values))
        err, var = info.pop("err"), info.pop("var")
        info["explained_variance"] = 1 - err / var if var > 0 else float("nan")
        return info

    def train_seconds(self) -> float | None:
        """Seconds from the start of the first step to the end of the last timed one."""
        end = self.last_done or self.first_done
        return None if end is None or self.first_start is None else end - self.first_start

    def steady_seconds_per_step(self) -> float | None:
        """Seconds per step from the end of the first step to the end of the last one (None: one step)."""
        if self.first_done is None or self.last_done is None or self.steps_timed < 1:
            return None
        return (self.last_done - self.first_done) / self.steps_timed

    def final(self) -> dict:
        """Means over the records of the last 10% of the steps."""
        if not self.records:
            return {}
        cut = self.total - max(1, self.total // 10)
        tail = [info for step, info in self.records if step > cut] or [self.records[-1][1]]
        keys = tail[0].keys()
        return {k: float(np.nanmean([t[k] for t in tail])) for k in keys}


@contextlib.contextmanager
def _quiet_sae_lens():
    """SAELens's tqdm bars and info/warning logs off (we show our own progress)."""
    import functools
    import logging
    import warnings

    import sae_lens.training.activation_scaler as scaler_mod
    import sae_lens.training.sae_trainer as trainer_mod

    saved = {m: m.tqdm for m in (scaler_mod, trainer_mod)}
    log = logging.getLogger("sae_lens")
    level = log.level
    try:
        for m, t in saved.items():
            m.tqdm = functools.partial(t, disable=True)
        log.setLevel(logging.CRITICAL)  # also "Error during view operation" (benign: it reshapes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, t in saved.items():
            m.tqdm = t
        log.setLevel(level)


@contextlib.contextmanager
def _keep_signal_handlers():
    """The runner installs SIGINT/SIGTERM handlers; put the old ones back.
    A run stopped by SIGTERM (SAELens turns it into an interruption, saved as
    a checkpoint) then gets SIGTERM again, under the old handler: the caller
    sees a termination (the CLI exits 143; without a handler the process
    ends by SIGTERM), not a Ctrl-C."""
    from sae_lens import llm_sae_training_runner as runner_module

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            saved[sig] = signal.getsignal(sig)
    received: list[int] = []
    callback = getattr(runner_module, "interrupt_callback", None)
    if callback is not None:
        def interrupt_callback(sig_num, frame):
            received.append(sig_num)
            callback(sig_num, frame)

        runner_module.interrupt_callback = interrupt_callback
    try:
        yield
    finally:
        if callback is not None:
            runner_module.interrupt_callback = callback
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)
        if signal.SIGTERM in received and signal.SIGTERM in saved:
            signal.raise_signal(signal.SIGTERM)


# ------------------------------------------------------------------ checkpoints

#: the run's settings, beside its checkpoints
RUN_RECORD = "culture_run.json"
_COMPLETE = ".complete"
_CHECKPOINT_FILES = ("cfg.json", "sae_weights.safetensors", "trainer_state.pt", "activations_store_state.safetensors")


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where the checkpoints of the SAE run writing ``out`` go: ``<out>.checkpoints/``."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of the run writing ``out`` (None: none)."""
    folder = checkpoint_dir(out)  # SAELens adds a folder per run: <out>.checkpoints/<run id>/<samples>/
    done = [p.parent for p in folder.rglob(_COMPLETE)] if folder.is_dir() else []
    return max(done, key=lambda p: int(p.name) if p.name.isdigit() else -1, default=None)


def read_run_record(out: str | os.PathLike) -> dict:
    """The settings of the interrupted run writing ``out`` (``culture_run.json``
    beside its checkpoints); one-line SAEError when there is nothing to resume."""
    out = Path(out)
    folder = checkpoint_dir(out)
    if out.is_dir() and (out / "training_summary.json").is_file():
        raise SAEError(f"{out} holds a finished SAE: nothing to resume")
    if not (folder / RUN_RECORD).is_file():
        raise SAEError(f"nothing to resume for {out}: no {folder / RUN_RECORD} (a run saves checkpoints there "
                       "when it is stopped with Ctrl-C or SIGTERM, or with --n-checkpoints N)")
    if latest_checkpoint(out) is None:
        raise SAEError(f"nothing to resume for {out}: {folder} holds no complete checkpoint")
    try:
        record = json.loads((folder / RUN_RECORD).read_text())
        settings = dict(record["settings"])
        for key in ("tasks", "noise", "num_quizzes"):  # records written before these were settings
            if key not in settings and record.get(key) is not None:
                settings[key] = record[key]
        record["settings"] = SAETrainSettings.from_dict(settings)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SAEError(f"{folder / RUN_RECORD}: unreadable run record ({first_sentence(exc)})") from None
    return record


def _mark_complete(path) -> None:
    path = Path(path)
    if all((path / name).is_file() for name in _CHECKPOINT_FILES):
        (path / _COMPLETE).write_text("")


def _checkpoint_on_interrupt(runner):
    """Make SAELens's interruption handling save a *full* checkpoint (its own
    saves only the data position), and mark every complete checkpoint."""
    from sae_lens.training._interruption import InterruptedException

    save = runner.save_checkpoint

    def save_checkpoint(checkpoint_path):
        if checkpoint_path is not None:  # SAELens's interrupt path does not make the folder
            Path(checkpoint_path).mkdir(parents=True, exist_ok=True)
        save(checkpoint_path)
        if checkpoint_path is not None:
            _mark_complete(checkpoint_path)

    runner.save_checkpoint = save_checkpoint  # what the trainer calls after writing weights and state
    run_trainer = runner.run_trainer_with_interruption_handling

    def run_trainer_with_interruption_handling(trainer):
        try:
            return run_trainer(trainer)
        except (KeyboardInterrupt, InterruptedException):
            if runner.cfg.checkpoint_path is not None and trainer.n_training_steps > 0:
                trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
            raise

    runner.run_trainer_with_interruption_handling = run_trainer_with_interruption_handling


# ------------------------------------------------------------------ training


def prepare_out(out: Path, overwrite: bool) -> None:
    """One-line SAEError when ``out`` cannot receive a new SAE."""
    check_out_dir(out, overwrite, SAEError)


def train_sae(
    hooked,
    out: str | os.PathLike,
    settings: SAETrainSettings | None = None,
    *,
    dataset=None,
    tasks=None,
    noise: float | None = None,
    num_quizzes: int | None = None,
    model_name: str = "culture-gpt",
    overwrite: bool = False,
    progress: Progress | None = None,
    extra_summary: dict | None = None,
    summary_json: str | os.PathLike | None = None,
    resume: bool = False,
) -> SAETrainResult:
    """Train an SAE on ``hooked`` (a culture GPT as a TransformerLens model) at
    ``settings.hook_name`` with SAELens's runner; write it to ``out``.

    ``dataset``: None (generate ``settings.num_quizzes`` world quizzes of
    ``settings.tasks`` on the fly, default: as many as the run reads, so no
    quiz is seen twice), a ``dataset build`` directory, or a
    ``datasets.Dataset`` with ``input_ids``. ``tasks`` / ``noise`` /
    ``num_quizzes``, when given, replace the settings' own.
    ``progress(phase, done, total, info)`` is called with phases "data"
    (quizzes generated), "norm" (batches of the norm estimate) and "train"
    (steps; info holds the latest loss, L0 and variance explained).
    ``summary_json``: also write the summary to this file, all or nothing
    with ``out``. ``resume``: continue the interrupted run writing ``out``
    from its latest checkpoint (see the module docstring; the settings must
    be the run's own, as :func:`read_run_record` gives them).
    """
    t_start = time.perf_counter()
    settings = _with_data(settings or SAETrainSettings(), tasks, noise, num_quizzes).check()
    out = Path(out)
    prepare_out(out, overwrite)
    resume_from = _resume_point(out) if resume else None
    d_in = _check_model(hooked, settings)
    runner_config(settings, d_in, output_path=None, model_name=model_name)  # the whole configuration, before any data
    ds, dataset_label = training_data(settings, dataset, progress)
    checkpoints = checkpoint_dir(out)
    if not resume:
        _start_run_record(checkpoints, settings, dataset, model_name, extra_summary)
    staged = OutputSet()  # a staging folder next to out, renamed into place at the end
    tmp = staged.dir(out)
    try:
        cfg = runner_config(settings, d_in, output_path=str(tmp), model_name=model_name,
                            dataset_path=dataset_label, checkpoint_path=str(checkpoints))
        if resume_from is not None:
            cfg.resume_from_checkpoint = str(resume_from)
        stats = _StepStats(cfg.total_training_steps, progress)
        if resume_from is not None and resume_from.name.isdigit():
            stats.step = int(resume_from.name) // cfg.train_batch_size_tokens
        sae, seconds = _run_saelens(hooked, cfg, ds, settings, stats, progress)
        summary = _summary(sae, cfg, settings, stats, d_in, model_name, ds, dataset_label, seconds,
                           stats.first_start - t_start if stats.first_start is not None else None, extra_summary)
        text = json.dumps(json_safe(summary), indent=2, default=str) + "\n"  # strict JSON: NaN as null
        (tmp / "training_summary.json").write_text(text)
        if summary_json is not None:
            staged.file(summary_json).write_text(text)
        staged.commit()
    except BaseException:
        staged.rollback()
        raise
    if not settings.n_checkpoints:  # finished: the checkpoints were only there for a resume
        shutil.rmtree(checkpoints, ignore_errors=True)
    sae.eval()
    from culture.sae.loading import load_sae

    return SAETrainResult(sae=load_sae(out, device=str(sae.device)), out=out, summary=summary)


def _with_data(settings: SAETrainSettings, tasks, noise, num_quizzes) -> SAETrainSettings:
    """``settings`` with the data arguments of :func:`train_sae` that were given."""
    given = {k: v for k, v in (("tasks", tuple(tasks) if tasks else None), ("noise", noise),
                               ("num_quizzes", num_quizzes)) if v is not None}
    return replace(settings, **given) if given else settings


def _resume_point(out: Path) -> Path:
    found = latest_checkpoint(out)
    if found is None:
        raise SAEError(f"nothing to resume for {out}: no complete checkpoint in {checkpoint_dir(out)}")
    return found


def _check_model(hooked, settings: SAETrainSettings) -> int:
    """The activation width at the settings' hook, once the model and the settings agree on the device."""
    if torch.device(hooked.cfg.device).type != torch.device(settings.device).type:
        raise SAEError(f"the model is on {hooked.cfg.device} but the SAE settings say {settings.device}: "
                       "put both on one device")
    return activation_size(hooked, settings.hook_name, _extra(settings).get("hook_head_index"))


def training_data(settings: SAETrainSettings, dataset=None, progress: Progress | None = None):
    """(``datasets.Dataset``, label) a run reads: ``dataset`` (a ``dataset
    build`` directory or a Dataset), else quizzes generated from the
    settings' ``num_quizzes`` (default: as many rows as the run reads),
    ``tasks``, ``noise`` and ``seed``."""
    import datasets

    if dataset is None:
        from culture.world import resolve_tasks

        n = int(settings.num_quizzes) if settings.num_quizzes else _rows_needed(settings)
        ds = generate_training_dataset(
            n, settings.tasks, seed=settings.seed, noise=settings.noise,
            progress=(lambda d, t: progress("data", d, t, {})) if progress else None)
        names = ",".join(resolve_tasks(settings.tasks))
        return ds, f"generated:{n}:seed={settings.seed}:noise={settings.noise}:tasks={names}"
    if isinstance(dataset, (str, os.PathLike)):
        return load_training_dataset(dataset, settings.context_size), str(Path(dataset).resolve())
    if isinstance(dataset, datasets.Dataset):
        return check_training_dataset(dataset, settings.context_size), "in-memory"
    raise SAEError(f"dataset must be None, a directory or a datasets.Dataset, got {type(dataset).__name__}")


def _start_run_record(checkpoints: Path, settings: SAETrainSettings, dataset, model_name: str,
                      extra_summary: dict | None) -> None:
    """A fresh ``<out>.checkpoints/`` holding the run's settings (what ``--resume`` reads back)."""
    if checkpoints.exists():  # an earlier run's, not resumed: replaced by this run's
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True)
    record = {"settings": settings.to_dict(),
              "dataset": os.fspath(dataset) if isinstance(dataset, (str, os.PathLike)) else None,
              "model_name": model_name, **(extra_summary or {})}
    atomic_write_json(checkpoints / RUN_RECORD, record)


def _run_saelens(hooked, cfg, ds, settings: SAETrainSettings, stats: _StepStats, progress: Progress | None):
    """Run SAELens's runner on ``hooked`` (seeded, quiet, the caller's RNG
    and signal handlers kept); returns (the trained SAE, seconds)."""
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training._interruption import InterruptedException

    norm_batches = settings.norm_batches

    def on_batch(k: int) -> None:
        if progress is not None and k <= norm_batches:
            progress("norm", k, norm_batches, {})

    was_training = hooked.training
    hooked.eval()
    t0 = time.perf_counter()
    dev = torch.device(settings.device)
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    # SAELens 6 does not seed its runs (SAE init, buffer shuffles): seed here, without touching the caller's RNG
    with _quiet_sae_lens(), _keep_signal_handlers(), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(settings.seed)
        try:
            runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=hooked)
        except (RuntimeError, ValueError, TypeError, AssertionError) as exc:  # settings SAELens cannot build
            raise SAEError(f"SAELens cannot build this SAE: {first_sentence(exc)}") from None
        _checkpoint_on_interrupt(runner)
        runner.sae.training_forward_pass = stats.wrap(runner.sae.training_forward_pass)
        runner.activations_store = _CountingProvider(runner.activations_store, on_batch)
        try:
            sae = runner.run()
        except InterruptedException:
            raise KeyboardInterrupt from None
    seconds = time.perf_counter() - t0
    if was_training:
        hooked.train()
    return sae, seconds


def _summary(sae, cfg, settings: SAETrainSettings, stats: _StepStats, d_in: int, model_name: str, ds,
             dataset_label: str, seconds: float, setup_seconds: float | None, extra_summary: dict | None) -> dict:
    """The run's ``training_summary.json``."""
    tail = stats.final()
    meta = sae.cfg.metadata
    d_sae = int(sae.cfg.d_sae)
    dead = getattr(meta, "num_dead_features", None)
    tokens = cfg.total_training_steps * cfg.train_batch_size_tokens
    per_step = stats.steady_seconds_per_step()
    return {
        "model": model_name,
        "hook_name": settings.hook_name,
        "architecture": settings.architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "steps": cfg.total_training_steps,
        "training_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "setup_seconds": setup_seconds,
        "train_seconds": stats.train_seconds(),
        "steady_tokens_per_second": cfg.train_batch_size_tokens / per_step if per_step else None,
        "norm_estimate_batches": settings.norm_batches,
        "explained_variance": tail.get("explained_variance"),
        "l0": float(meta.l0) if getattr(meta, "l0", None) is not None else tail.get("l0"),
        "dead_features": int(dead) if dead is not None else None,
        "dead_fraction": (int(dead) / d_sae) if dead is not None else None,
        "mse_loss": tail.get("mse_loss"),
        "l1_loss": tail.get("l1_loss"),
        "dataset": dataset_label,
        "dataset_rows": len(ds),
        "settings": settings.resolved(),
        "note": "explained_variance / mse / l1: mean over the last 10% of the steps (training batches); "
                "l0 and dead features: SAELens's last sparsity window (dead = no firing in the last "
                f"{settings.dead_feature_window} steps); setup_seconds: from the call to the first step (data, "
                "runner, norm estimate, first buffer fill); train_seconds: from the first step to the end of the "
                "last; steady_tokens_per_second: from the end of the first step to the end of the last",
        **(extra_summary or {}),
    }


# ------------------------------------------------------------------ push


def push_sae(folder: str | os.PathLike, repo_id: str, path_in_repo: str | None = None, *,
             private: bool = False, token: str | None = None) -> str:
    """Upload an SAE folder to the hub model repo ``repo_id`` (created if
    needed) under ``path_in_repo`` (e.g. ``gpt-0/blocks_8_mlp_out``). Offline
    or refused -> one-line CultureError. Returns the commit URL."""
    from culture.hub import check_push, push_error

    check_push("SAE", repo_id, SAEError)
    import huggingface_hub

    try:
        huggingface_hub.create_repo(repo_id, private=private, exist_ok=True, token=token)
        info = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(folder), path_in_repo=path_in_repo or None, token=token,
            commit_message=f"culture-interp SAE {path_in_repo or ''}".strip(),
            ignore_patterns=["checkpoints/*"])
    except Exception as exc:  # noqa: BLE001 - network, auth, refusal: one line
        raise push_error("SAE", repo_id, exc) from None
    return str(getattr(info, "commit_url", None) or info)


def default_path_in_repo(model_id: int | None, hook_name: str) -> str:
    """``gpt-{k}/{hook}``, the earlier toolkit's layout (``gpt-0/blocks_8_mlp_out``)."""
    prefix = f"gpt-{model_id}/" if model_id is not None else ""
    return prefix + hook_dirname(hook_name)
