"""Hugging Face datasets of culture quizzes (the earlier toolkit's layout).

``build_dataset(out, n, tasks)`` writes ``n`` world quizzes, equal counts per
task, plus (when given) every *test* c-quiz of a source, as a
``datasets.Dataset`` saved in ``save_to_disk`` format (and as parquet files):

* ``input_ids``: ``Sequence(int32, length=405)`` — BOS 0, then the 404-token
  quiz. Each quiz is reconfigured to a structure drawn uniformly from the four
  deterministic ones and gets prompt noise (:data:`culture.defaults.PROMPT_NOISE`) on its structure's noised
  block, exactly as in evaluation (:func:`culture.quiz.random_structures`,
  :func:`culture.quiz.add_prompt_noise`).
* ``label``: ``ClassLabel`` over the sorted label names — the task name, or
  ``"culture"`` for c-quizzes.
* ``structure``: int8, the quiz's structure as an index into
  :data:`culture.quiz.STRUCTURES` (0..3; REFERENCE.md numbers them 1..4).
* ``seed_index``: int64, the quiz's index in its label's deterministic stream
  (for c-quizzes: its index in the source's test list), so analyses can
  regroup rows and regenerate the clean quiz (:func:`regenerate`).

Rows are shuffled with seed 42 (the permutation ``Dataset.shuffle(seed=42)``
would apply to the unshuffled concatenation: tasks in the given order, each by
seed_index, then culture). With ``partitioned`` the same rows, in the same
shuffled order, are also written as a ``DatasetDict`` keyed by label.

Determinism. Each label's stream is cut into shards of :data:`SHARD_SIZE`
quizzes; shard ``s`` of task ``t`` is generated from two seeds derived from
``(seed, index of t in culture.world.TASKS, s)`` (:func:`shard_seeds`) — one
for ``culture.world.generate_task_grids``, one for structures and noise — and
a whole shard is always generated, then cut to what is needed. So a row
depends only on (seed, label, seed_index): not on ``n``, not on the other
tasks, not on ``num_proc``.

Scale. Generation runs in ``num_proc`` processes writing uint8 rows into a
staging file (405 bytes per quiz); the rows are then written in shuffled order,
in chunks, straight into the Arrow files of the ``save_to_disk`` layout and the
parquet files. Memory stays bounded (about 0.5 GB + 405 bytes per quiz of
mapped staging) whatever ``n``.

Layout of ``out``::

    out/dataset_info.json, state.json, data-00000-of-0000K.arrow …  load_from_disk(out) -> Dataset
    out/parquet/train-00000-of-0000K.parquet …                       same rows, same order
    out/partitioned/                                                 load_from_disk(...) -> DatasetDict
        dataset_dict.json, <label>/…, parquet/<label>/…
    out/build.json                                                   parameters and counts

``datasets`` and ``pyarrow`` are imported only inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from culture.defaults import PROMPT_NOISE
from culture.errors import CultureError
from culture.workers import quiet_pool
from culture.io import OutputSet, check_out_dir, existing_ancestor
from culture.quiz import (
    EVAL_STRUCTURES,
    QUIZ_LEN,
    STRUCTURES,
    add_prompt_noise,
    grids_to_quizzes,
    random_structures,
)

#: quizzes per generation shard (fixed: it defines the streams, whatever num_proc)
SHARD_SIZE = 4096
#: seed of the final shuffle (the earlier toolkit's)
SHUFFLE_SEED = 42
#: label of the c-quizzes
CULTURE_LABEL = "culture"
#: stream id of the c-quizzes (world tasks use their index in culture.world.TASKS)
CULTURE_STREAM = 1000
#: tokens per row: BOS + quiz
SEQ_LEN = QUIZ_LEN + 1
#: rows per Arrow / parquet file (~400 MB of int32 per Arrow file)
ROWS_PER_FILE = 250_000
#: rows gathered and written per step of the writing phase
WRITE_CHUNK = 32_768
#: below this many rows the automatic num_proc generates in-process
_POOL_MIN_ROWS = 50_000

ProgressFn = Callable[[str, int, int], None]


class DatasetBuildError(CultureError):
    """Bad build parameters or an output that cannot be written."""


# ------------------------------------------------------------------ streams


def _world():
    try:
        from culture import world
    except ImportError as exc:  # pragma: no cover - the generator ships with the package
        raise DatasetBuildError(f"the world quiz generator (culture.world) is not available: {exc}") from None
    return world


def stream_id(label: str) -> int:
    """The stream number of a label: its index in ``culture.world.TASKS``,
    or :data:`CULTURE_STREAM` for ``"culture"``."""
    if label == CULTURE_LABEL:
        return CULTURE_STREAM
    tasks = _world().TASKS
    if label not in tasks:
        raise DatasetBuildError(f"unknown task {label!r}; valid tasks: {', '.join(tasks)}")
    return tasks.index(label)


def shard_seeds(seed: int, label: str, shard: int) -> tuple[int, int]:
    """(world seed, augmentation seed) of shard ``shard`` of ``label``'s stream:
    64-bit integers from ``numpy.random.SeedSequence(seed, spawn_key=(stream, shard))``.
    The world seed goes to ``culture.world.generate_task_grids(task,
    SHARD_SIZE, seed=...)``; the augmentation seed to a ``torch.Generator``
    that draws the structures, then the noise."""
    words = np.random.SeedSequence(int(seed), spawn_key=(stream_id(label), int(shard))).generate_state(4, np.uint32)
    w = [int(x) for x in words]
    return w[0] | (w[1] << 32), w[2] | (w[3] << 32)


def world_shard(task: str, shard: int, seed: int) -> torch.Tensor:
    """The clean quizzes (SHARD_SIZE, 404), canonical structure, of one shard of
    ``task``'s stream; quiz ``j`` has seed_index ``shard * SHARD_SIZE + j``."""
    world = _world()
    world_seed, _ = shard_seeds(seed, task, shard)
    gen = getattr(world, "generate_task_grids", None)
    if gen is not None:
        grids = torch.from_numpy(np.ascontiguousarray(gen(task, SHARD_SIZE, seed=world_seed)))
        return grids_to_quizzes(grids.long().reshape(SHARD_SIZE, 4, 10, 10))
    return torch.as_tensor(world.generate_quizzes(SHARD_SIZE, tasks=[task], seed=world_seed)).long()  # pragma: no cover


def augment(quizzes: torch.Tensor, aug_seed: int, noise: float = PROMPT_NOISE) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset rows from quizzes: a random structure among the four
    deterministic ones, prompt noise, BOS 0. Returns (rows uint8 (k, 405),
    structure int8 (k,), index into culture.quiz.STRUCTURES)."""
    g = torch.Generator().manual_seed(int(aug_seed))
    q, choice = random_structures(quizzes, EVAL_STRUCTURES, generator=g)
    q = add_prompt_noise(q, noise, STRUCTURES, generator=g)
    rows = torch.zeros(q.shape[0], SEQ_LEN, dtype=torch.uint8)
    rows[:, 1:] = q
    return rows, choice.to(torch.int8)


def regenerate(
    label: str,
    seed_index,
    *,
    seed: int = 0,
    noise: float = PROMPT_NOISE,
    c_quizzes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rebuild rows of a dataset from (label, seed_index) and the build's seed
    and noise. Returns (clean quizzes (k, 404) in canonical structure, the
    dataset rows (k, 405) LongTensor, structure (k,)). For ``"culture"`` pass
    the source's test c-quizzes as ``c_quizzes``."""
    idx = torch.as_tensor(seed_index, dtype=torch.long).reshape(-1)
    if label == CULTURE_LABEL and c_quizzes is None:
        raise DatasetBuildError("regenerating c-quiz rows needs the source's test c-quizzes (c_quizzes=...)")
    clean = torch.empty(idx.numel(), QUIZ_LEN, dtype=torch.long)
    rows = torch.empty(idx.numel(), SEQ_LEN, dtype=torch.long)
    structure = torch.empty(idx.numel(), dtype=torch.long)
    for shard in torch.unique(idx // SHARD_SIZE).tolist():
        sel = (idx // SHARD_SIZE == shard).nonzero().reshape(-1)
        if label == CULTURE_LABEL:
            q = torch.as_tensor(c_quizzes).long()[shard * SHARD_SIZE:(shard + 1) * SHARD_SIZE]
        else:
            q = world_shard(label, shard, seed)
        r, s = augment(q, shard_seeds(seed, label, shard)[1], noise)
        j = idx[sel] - shard * SHARD_SIZE
        clean[sel], rows[sel], structure[sel] = q[j], r[j].long(), s[j].long()
    return clean, rows, structure


# ------------------------------------------------------------------ plan


@dataclass(frozen=True)
class _Job:
    label: str
    shard: int
    keep: int          # rows of the shard kept (a prefix)
    offset: int        # first row in the staging file
    seed: int
    noise: float
    staging: str
    total: int         # rows of the staging file
    quizzes: np.ndarray | None = None   # c-quizzes of this shard (uint8), None for world tasks


def _run_job(job: _Job) -> tuple[int, np.ndarray, int]:
    """Generate one shard and write its kept rows into the staging file.
    Returns (first row, structures of the kept rows, this process's peak RSS in KiB)."""
    if job.quizzes is not None:
        quizzes = torch.from_numpy(job.quizzes).long()
    else:
        quizzes = world_shard(job.label, job.shard, job.seed)
    rows, structure = augment(quizzes, shard_seeds(job.seed, job.label, job.shard)[1], job.noise)
    staging = np.memmap(job.staging, dtype=np.uint8, mode="r+", shape=(job.total, SEQ_LEN))
    staging[job.offset:job.offset + job.keep] = rows[:job.keep].numpy()
    del staging  # MAP_SHARED: the page cache is shared at once, no msync needed
    return job.offset, structure[:job.keep].numpy(), _peak_rss_kib()


def _peak_rss_kib() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError):  # pragma: no cover - Windows
        return 0


def _pool_context(multiprocessing):
    """forkserver where available (children fork from one server that has
    imported this module once: quick to start, and no fork of a threaded
    parent), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["culture.dataset", "culture.world"])
        return ctx
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows


# ------------------------------------------------------------------ writing


def _features(names: Sequence[str]):
    from datasets import ClassLabel, Features, Sequence as HFSequence, Value

    return Features({
        "input_ids": HFSequence(Value("int32"), length=SEQ_LEN),
        "label": ClassLabel(names=list(names)),
        "structure": Value("int8"),
        "seed_index": Value("int64"),
    })


class _ShardedWriter:
    """Appends record batches to ``data-0000i-of-0000K.arrow`` (Arrow stream
    files, as ``save_to_disk`` writes them) and to parquet files, switching
    files every :data:`ROWS_PER_FILE` rows."""

    def __init__(self, folder: Path, parquet_folder: Path | None, parquet_prefix: str, total: int, schema):
        self.folder, self.parquet_folder, self.prefix = folder, parquet_folder, parquet_prefix
        self.total, self.schema = total, schema
        self.n_files = max(1, math.ceil(total / ROWS_PER_FILE))
        self.files = [f"data-{k:05d}-of-{self.n_files:05d}.arrow" for k in range(self.n_files)]
        self.file_index, self.in_file = -1, ROWS_PER_FILE
        self.arrow = self.parquet = self.sink = None
        folder.mkdir(parents=True, exist_ok=True)
        if parquet_folder is not None:
            parquet_folder.mkdir(parents=True, exist_ok=True)
        if total == 0:
            self._next_file()

    def _close_file(self) -> None:
        if self.arrow is not None:
            self.arrow.close()
            self.sink.close()
        if self.parquet is not None:
            self.parquet.close()
        self.arrow = self.parquet = self.sink = None

    def _next_file(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._close_file()
        self.file_index += 1
        self.in_file = 0
        self.sink = pa.OSFile(str(self.folder / self.files[self.file_index]), "wb")
        self.arrow = pa.ipc.new_stream(self.sink, self.schema)
        if self.parquet_folder is not None:
            name = f"{self.prefix}-{self.file_index:05d}-of-{self.n_files:05d}.parquet"
            self.parquet = pq.ParquetWriter(str(self.parquet_folder / name), self.schema)

    def write(self, batch) -> None:
        start = 0
        while start < batch.num_rows:
            if self.in_file >= ROWS_PER_FILE or self.arrow is None:
                self._next_file()
            m = min(batch.num_rows - start, ROWS_PER_FILE - self.in_file)
            part = batch.slice(start, m)
            self.arrow.write_batch(part)
            if self.parquet is not None:
                self.parquet.write_batch(part)
            self.in_file += m
            start += m

    def close(self) -> None:
        self._close_file()


def _record_batch(schema, tokens_u8: np.ndarray, labels, structure, seed_index):
    import pyarrow as pa

    values = pa.array(tokens_u8.astype(np.int32).reshape(-1))
    ids = pa.FixedSizeListArray.from_arrays(values, type=schema.field("input_ids").type)
    return pa.RecordBatch.from_arrays(
        [ids, pa.array(labels.astype(np.int64)), pa.array(structure.astype(np.int8)),
         pa.array(seed_index.astype(np.int64))],
        schema=schema,
    )


def _metadata_templates(scratch: Path, features, description: str) -> tuple[dict, dict]:
    """(state, dataset_info) as this ``datasets`` version writes them, from a
    one-row dataset saved with ``save_to_disk`` (public API only)."""
    from datasets import Dataset, DatasetInfo
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    row = {"input_ids": [[0] * SEQ_LEN], "label": [0], "structure": [0], "seed_index": [0]}
    tiny = Dataset.from_dict(row, features=features, info=DatasetInfo(description=description, features=features))
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        tiny.save_to_disk(str(scratch), num_shards=1)
    finally:
        if not was_disabled:
            enable_progress_bars()
    state = json.loads((scratch / "state.json").read_text())
    info = json.loads((scratch / "dataset_info.json").read_text())
    shutil.rmtree(scratch, ignore_errors=True)
    return state, info


def _write_dataset_metadata(folder: Path, files: list[str], state: dict, info: dict, fingerprint: str) -> None:
    state = dict(state)
    state["_data_files"] = [{"filename": f} for f in files]
    state["_fingerprint"] = fingerprint
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))


# ------------------------------------------------------------------ build


@dataclass
class BuildReport:
    """What :func:`build_dataset` wrote and how fast."""

    out: Path
    rows: int
    counts: dict[str, int]
    labels: list[str]
    seed: int
    num_proc: int
    partitioned: bool
    generate_seconds: float
    write_seconds: float
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def quizzes_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    @property
    def generate_per_second(self) -> float:
        return self.rows / self.generate_seconds if self.generate_seconds > 0 else float("inf")


def resolve_dataset_tasks(tasks: str | Iterable[str] | None) -> tuple[str, ...]:
    """Task names (default: the eight of the published models); unknown or
    repeated names raise a one-line error."""
    names = _world().resolve_tasks(list(tasks) if tasks is not None and not isinstance(tasks, str) else tasks)
    seen = set()
    for t in names:
        if t in seen:
            raise DatasetBuildError(f"task {t!r} is listed twice")
        seen.add(t)
    if CULTURE_LABEL in names:  # pragma: no cover - not a world task name
        raise DatasetBuildError(f"{CULTURE_LABEL!r} is reserved for c-quizzes")
    return names


def load_source_c_quizzes(source: str | os.PathLike) -> torch.Tensor:
    """The *test* c-quizzes (k, 404) of a model source (``bundled``, a
    directory, a hub repo id — see ``culture.sources``) or of a
    ``c_quizzes.pth`` file; none (0, 404) when the source has no c-quizzes
    (the bundled zoo, a run whose culture phase never ran)."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        from culture.quizfile import load_c_quizzes

        return load_c_quizzes(path)[1]
    try:
        from culture.sources import resolve_source
    except ImportError:  # pragma: no cover - culture.sources ships with the package
        raise DatasetBuildError(f"c-quiz file not found: {source}") from None
    pair = resolve_source(source).c_quizzes()
    if pair is None:
        return torch.empty(0, QUIZ_LEN, dtype=torch.long)
    return pair[1]


def check_build_args(
    out: str | os.PathLike,
    n: int,
    tasks: str | Iterable[str] | None = None,
    *,
    seed: int = 0,
    noise: float = PROMPT_NOISE,
    num_proc: int | None = None,
    overwrite: bool = False,
) -> tuple[str, ...]:
    """Check :func:`build_dataset`'s arguments (one-line errors, nothing
    written); returns the task names."""
    names = resolve_dataset_tasks(tasks)
    n = int(n)
    if n <= 0:
        raise DatasetBuildError(f"--n must be positive, got {n}")
    if n < len(names):
        raise DatasetBuildError(f"--n {n} is smaller than the number of tasks ({len(names)}): "
                                f"each task needs at least one quiz")
    if not 0.0 <= float(noise) <= 1.0:
        raise DatasetBuildError(f"--noise must be in [0, 1], got {noise}")
    if int(seed) < 0:
        raise DatasetBuildError(f"--seed must be >= 0, got {seed}")
    if num_proc is not None and int(num_proc) < 1:
        raise DatasetBuildError(f"--num-proc must be >= 1, got {num_proc}")
    check_out_dir(Path(out).expanduser(), overwrite, DatasetBuildError)
    return names


@dataclass(frozen=True)
class _Plan:
    """What a build writes: rows per label (tasks as given, then culture), the
    c-quizzes (uint8, or None), and the labels' ids (sorted names)."""

    names: tuple[str, ...]
    per_task: int
    counts: dict
    culture: np.ndarray | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def labels_sorted(self) -> list[str]:
        return sorted(self.counts)

    @property
    def label_id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels_sorted)}

    @property
    def order(self) -> list[str]:
        """Labels in the unshuffled order of the staging file."""
        return list(self.names) + ([CULTURE_LABEL] if CULTURE_LABEL in self.counts else [])


def _plan(names, n: int, c_quizzes) -> _Plan:
    per_task = n // len(names)
    counts = {t: per_task for t in names}
    culture = None
    if c_quizzes is not None:
        from culture.quiz import validate_quizzes

        culture = validate_quizzes(c_quizzes, what="c-quizzes").to(torch.uint8).numpy()
        if len(culture):
            counts[CULTURE_LABEL] = len(culture)
    return _Plan(tuple(names), per_task, counts, culture)


def _check_disk_space(out: Path, total: int, partitioned: bool) -> None:
    need = total * (SEQ_LEN * 4 * (2 if partitioned else 1) + SEQ_LEN) * 1.1
    free = shutil.disk_usage(existing_ancestor(out.parent)).free
    if need > free:
        raise DatasetBuildError(f"not enough disk space in {out.parent}: about {need / 1e9:.1f} GB needed, "
                                f"{free / 1e9:.1f} GB free")


def _jobs(plan: _Plan, seed: int, noise: float, staging: Path) -> tuple[list[_Job], np.ndarray, np.ndarray]:
    """(one job per shard, label id per staging row, seed index per staging row)."""
    total, label_id = plan.total, plan.label_id
    jobs: list[_Job] = []
    labels = np.empty(total, np.int64)
    seed_index = np.empty(total, np.int64)
    offset = 0
    for label in plan.order:
        count = plan.counts[label]
        labels[offset:offset + count] = label_id[label]
        seed_index[offset:offset + count] = np.arange(count)
        for shard in range(math.ceil(count / SHARD_SIZE)):
            keep = min(SHARD_SIZE, count - shard * SHARD_SIZE)
            qz = plan.culture[shard * SHARD_SIZE:shard * SHARD_SIZE + keep] if label == CULTURE_LABEL else None
            jobs.append(_Job(label, shard, keep, offset + shard * SHARD_SIZE, seed, float(noise),
                             str(staging), total, qz))
        offset += count
    return jobs, labels, seed_index


def _generate(jobs: list[_Job], total: int, num_proc: int, progress: ProgressFn | None) -> tuple[np.ndarray, int]:
    """Run the jobs (in-process, or a pool of ``num_proc``); returns (structure
    per staging row, the workers' peak RSS in KiB)."""
    structure = np.empty(total, np.int8)
    done = worker_rss = 0
    if progress:
        progress("generate", 0, total)
    threads = torch.get_num_threads()
    if num_proc == 1:
        torch.set_num_threads(1)  # small tensors: one thread is faster (and fair to the writer)
        results: Iterable = map(_run_job, jobs)
        pool = None
    else:
        import multiprocessing

        pool = quiet_pool(_pool_context(multiprocessing), num_proc)  # Ctrl-C: reported once, by the main process
        results = pool.imap_unordered(_run_job, jobs, chunksize=1)
    try:
        for first, struct, rss in results:
            worker_rss = max(worker_rss, rss)
            structure[first:first + len(struct)] = struct
            done += len(struct)
            if progress:
                progress("generate", done, total)
    except BaseException:
        if pool is not None:
            pool.terminate()  # interrupted or failed: do not wait for the other shards
        raise
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.close()
            pool.join()
    return structure, worker_rss


def _write_shuffled(tmp: Path, staging: Path, plan: _Plan, schema, labels, structure, seed_index, *,
                    partitioned: bool, parquet: bool, progress: ProgressFn | None):
    """Write the staging rows in the shuffled order (:data:`SHUFFLE_SEED`), and
    per label when ``partitioned``; returns (main writer, {label: writer})."""
    total, label_id = plan.total, plan.label_id
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(total)
    labels_sh, structure_sh, seed_index_sh = labels[perm], structure[perm], seed_index[perm]
    main = _ShardedWriter(tmp, tmp / "parquet" if parquet else None, "train", total, schema)
    parts: dict[str, _ShardedWriter] = {}
    if partitioned:
        for name in plan.labels_sorted:
            parts[name] = _ShardedWriter(tmp / "partitioned" / name,
                                         tmp / "partitioned" / "parquet" / name if parquet else None,
                                         name, plan.counts[name], schema)
    stage = np.memmap(staging, dtype=np.uint8, mode="r", shape=(total, SEQ_LEN))
    if progress:
        progress("write", 0, total)
    try:
        for c0 in range(0, total, WRITE_CHUNK):
            c1 = min(total, c0 + WRITE_CHUNK)
            idx = perm[c0:c1]
            order = np.argsort(idx, kind="stable")          # read the staging file in order
            tokens = np.empty((c1 - c0, SEQ_LEN), np.uint8)
            tokens[order] = stage[idx[order]]
            lab, st, si = labels_sh[c0:c1], structure_sh[c0:c1], seed_index_sh[c0:c1]
            main.write(_record_batch(schema, tokens, lab, st, si))
            for name, writer in parts.items():
                sel = np.flatnonzero(lab == label_id[name])
                if sel.size:
                    writer.write(_record_batch(schema, tokens[sel], lab[sel], st[sel], si[sel]))
            if progress:
                progress("write", c1, total)
    finally:
        main.close()
        for writer in parts.values():
            writer.close()
        del stage
    return main, parts


def _verify(tmp: Path, plan: _Plan, features, partitioned: bool) -> None:
    """Check what a reader sees: the row count and features, the partitions adding up."""
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp))
    if len(ds) != plan.total or ds.features != features:
        raise DatasetBuildError(f"internal error: the written dataset has {len(ds)} rows, expected {plan.total}")
    if partitioned:
        dd = load_from_disk(str(tmp / "partitioned"))
        if sorted(dd) != plan.labels_sorted or sum(len(d) for d in dd.values()) != plan.total:
            raise DatasetBuildError("internal error: the partitioned dataset does not add up")
        del dd
    del ds


def build_dataset(
    out: str | os.PathLike,
    n: int,
    tasks: str | Iterable[str] | None = None,
    *,
    c_quizzes: torch.Tensor | None = None,
    source: str | None = None,
    seed: int = 0,
    noise: float = PROMPT_NOISE,
    num_proc: int | None = None,
    partitioned: bool = False,
    parquet: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Build the dataset into ``out`` (see the module docstring).

    ``n`` world quizzes are split equally over ``tasks`` (``n // len(tasks)``
    each); ``c_quizzes`` (the test c-quizzes, e.g. from
    :func:`load_source_c_quizzes`) are all added with label ``"culture"``;
    ``source`` only names them in ``build.json``. ``num_proc`` generation
    processes (None: one per core for large builds, in-process for small ones)
    do not change the result. ``progress(phase, done, total)`` is called as
    work advances (phases ``"generate"`` and ``"write"``). The folder appears
    atomically: everything is written next to it and renamed at the end.

    Steps: plan the rows (:func:`_plan`), check the disk space, generate
    every shard into a staging file (:func:`_jobs`, :func:`_generate`), write
    it shuffled (:func:`_write_shuffled`) with the ``datasets`` metadata,
    check what a reader sees (:func:`_verify`), write ``build.json``, publish.
    """
    t_start = time.perf_counter()
    names = check_build_args(out, n, tasks, seed=seed, noise=noise, num_proc=num_proc, overwrite=overwrite)
    n, seed, out = int(n), int(seed), Path(out).expanduser()
    plan = _plan(names, n, c_quizzes)
    total, counts, labels_sorted = plan.total, plan.counts, plan.labels_sorted
    _check_disk_space(out, total, partitioned)

    # staging folder next to out (culture.io's temporary names: a killed build's is removed by the next one)
    staged = OutputSet()
    tmp = staged.dir(out)
    try:
        staging = tmp / ".staging.u8"
        with open(staging, "wb") as f:
            f.truncate(total * SEQ_LEN)
        jobs, labels, seed_index = _jobs(plan, seed, noise, staging)
        if num_proc is None:
            num_proc = 1 if total < _POOL_MIN_ROWS else min(os.cpu_count() or 1, 8)
        num_proc = max(1, min(int(num_proc), len(jobs)))
        structure, worker_rss = _generate(jobs, total, num_proc, progress)
        t_generated = time.perf_counter()

        features = _features(labels_sorted)
        description = (f"culture quizzes: {plan.per_task} per task for {', '.join(names)}"
                       + (f", plus {counts[CULTURE_LABEL]} test c-quizzes" if CULTURE_LABEL in counts else "")
                       + f"; seed {seed}, prompt noise {noise}; built by culture-interp")
        state, info = _metadata_templates(tmp / ".template", features, description)
        params = {"n": n, "tasks": list(names), "per_task": plan.per_task, "counts": counts, "seed": seed,
                  "noise": float(noise), "shard_size": SHARD_SIZE, "shuffle_seed": SHUFFLE_SEED,
                  "source": None if source is None else str(source)}
        if plan.culture is not None:
            params["c_quizzes_sha256"] = hashlib.sha256(plan.culture.tobytes()).hexdigest()
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        main, parts = _write_shuffled(tmp, staging, plan, features.arrow_schema, labels, structure, seed_index,
                                      partitioned=partitioned, parquet=parquet, progress=progress)
        os.unlink(staging)
        _write_dataset_metadata(tmp, main.files, state, info, fingerprint)
        if partitioned:
            for name, writer in parts.items():
                fp = hashlib.sha256(f"{fingerprint}/{name}".encode()).hexdigest()[:16]
                _write_dataset_metadata(tmp / "partitioned" / name, writer.files, state, info, fp)
            (tmp / "partitioned" / "dataset_dict.json").write_text(json.dumps({"splits": labels_sorted}))
        t_written = time.perf_counter()

        _verify(tmp, plan, features, partitioned)
        seconds = time.perf_counter() - t_start
        report = BuildReport(out=out, rows=total, counts=counts, labels=labels_sorted, seed=seed,
                             num_proc=num_proc, partitioned=partitioned,
                             generate_seconds=t_generated - t_start, write_seconds=t_written - t_generated,
                             seconds=seconds,
                             extra={"worker_peak_rss_mib": round(worker_rss / 1024) if num_proc > 1 else None})
        build = {**params, "rows": total, "labels": labels_sorted,
                 "structure": "index into culture.quiz.STRUCTURES (0..3)",
                 "seed_index": "index in the label's stream (see culture.dataset.regenerate)",
                 "num_proc": num_proc, "seconds": round(seconds, 3),
                 "quizzes_per_second": round(report.quizzes_per_second, 1),
                 "partitioned": partitioned, "parquet": parquet}
        (tmp / "build.json").write_text(json.dumps(build, indent=2) + "\n")
        check_out_dir(out, overwrite, DatasetBuildError)  # still free (nothing raced us)?
        staged.commit()
    except BaseException:
        staged.rollback()
        raise
    return report


# ------------------------------------------------------------------ loading / pushing


def push_dataset(
    path: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    partitioned_repo: str | None = None,
) -> list[str]:
    """Push a built dataset folder to the hub: the dataset to ``repo_id`` and,
    when the folder has ``partitioned/``, the DatasetDict to
    ``partitioned_repo`` (default ``repo_id + "-partitioned"``, as the earlier
    toolkit's ``culture-puzzles-1M-partitioned``). Returns the repo ids pushed.
    Offline or refused -> one-line :class:`CultureError`."""
    from culture.hub import check_online, check_repo_id, push_error

    path = Path(path)
    check_repo_id(repo_id)
    has_parts = (path / "partitioned" / "dataset_dict.json").is_file()
    part_repo = partitioned_repo or f"{repo_id}-partitioned"
    if has_parts:
        check_repo_id(part_repo)
    if not (path / "state.json").is_file():
        raise DatasetBuildError(f"{path} is not a dataset built by culture-interp (no state.json)")
    check_online("dataset", repo_id)
    from datasets import load_from_disk

    pushed = []
    try:
        load_from_disk(str(path)).push_to_hub(repo_id, private=private, token=token)
    except Exception as exc:  # noqa: BLE001 - network, auth, refusal: one line
        raise push_error("dataset", repo_id, exc) from None
    pushed.append(repo_id)
    if has_parts:
        try:
            load_from_disk(str(path / "partitioned")).push_to_hub(part_repo, private=private, token=token)
        except Exception as exc:  # noqa: BLE001
            raise push_error("partitioned dataset", part_repo, exc) from None
        pushed.append(part_repo)
    return pushed

