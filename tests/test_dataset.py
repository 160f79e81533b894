"""``culture.dataset`` / ``culture-interp dataset``: layout, labels, structures,
noise, determinism (seed, num_proc, n), partitions, parquet, push (mocked),
one-line errors."""

import json

import numpy as np
import pytest
import torch

from culture import world
from culture.dataset import (
    CULTURE_LABEL,
    SEQ_LEN,
    SHARD_SIZE,
    SHUFFLE_SEED,
    build_dataset,
    load_source_c_quizzes,
    push_dataset,
    regenerate,
    shard_seeds,
)
from culture.errors import CultureError
from culture.quiz import (
    BLOCK_LEN,
    CANONICAL,
    N_BLOCKS,
    STRUCTURES,
    grids_to_quizzes,
    reconfigure,
    structure_index,
    validate_quizzes,
)
from tests.cli import heavy_imports, run_cli

TASKS = ["grow", "frame", "contact"]
N = 150       # 50 per task
N_C = 37      # test c-quizzes
SEED = 3


@pytest.fixture(scope="module")
def c_quizzes_file(tmp_path_factory):
    """A reference-style c_quizzes.pth: (train_list, test_list) of canonical quizzes."""
    path = tmp_path_factory.mktemp("src") / "c_quizzes.pth"
    test = world.generate_quizzes(N_C, tasks=["translate", "detect"], seed=11)
    train = world.generate_quizzes(5, tasks=["translate"], seed=12)
    torch.save(([train], [test[:20], test[20:]]), path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, c_quizzes_file):
    out = tmp_path_factory.mktemp("ds") / "culture-ds"
    c = load_source_c_quizzes(c_quizzes_file)
    report = build_dataset(out, N, TASKS, c_quizzes=c, source=str(c_quizzes_file), seed=SEED, num_proc=1,
                           partitioned=True)
    return out, report, c


def load(path):
    from datasets import load_from_disk

    return load_from_disk(str(path))


def columns(ds):
    d = ds.with_format("numpy")[:]
    return {k: np.asarray(v) for k, v in d.items()}


# ------------------------------------------------------------------ layout


def test_layout_features_and_rows(built):
    from datasets import ClassLabel, Dataset, Sequence, Value

    out, report, _ = built
    ds = load(out)
    assert isinstance(ds, Dataset) and len(ds) == N + N_C == report.rows
    names = sorted(TASKS + [CULTURE_LABEL])
    assert ds.features["label"] == ClassLabel(names=names)
    assert ds.features["input_ids"] == Sequence(Value("int32"), length=405)
    assert ds.features["structure"] == Value("int8") and ds.features["seed_index"] == Value("int64")
    assert ds.data.table.schema.field("input_ids").type.value_type.bit_width == 32
    col = columns(ds)
    ids = torch.from_numpy(col["input_ids"].astype(np.int64))
    assert ids.shape == (N + N_C, SEQ_LEN) and (ids[:, 0] == 0).all()
    quizzes = validate_quizzes(ids[:, 1:])                     # markers once per block, cells 0..10
    # structures: one of the four deterministic ones, and the recorded index is right
    s = structure_index(quizzes)
    assert set(s.tolist()) == {0, 1, 2, 3}
    assert (s.numpy() == col["structure"]).all()
    # equal counts per task + every test c-quiz
    counts = {n: int((col["label"] == i).sum()) for i, n in enumerate(names)}
    assert counts == {**{t: N // len(TASKS) for t in TASKS}, CULTURE_LABEL: N_C}
    assert report.counts == {**{t: N // len(TASKS) for t in TASKS}, CULTURE_LABEL: N_C}
    for i, n in enumerate(names):
        assert sorted(col["seed_index"][col["label"] == i].tolist()) == list(range(counts[n]))
    info = json.loads((out / "build.json").read_text())
    assert info["seed"] == SEED and info["tasks"] == TASKS and info["rows"] == N + N_C
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("data-")) == [
        "build.json", "dataset_info.json", "parquet", "partitioned", "state.json"]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())     # no temp dir left


def test_rows_are_shuffled_with_seed_42(built):
    out, _, _ = built
    col = columns(load(out))
    names = sorted(TASKS + [CULTURE_LABEL])
    # the unshuffled order: tasks as given (each by seed_index), then culture
    unshuffled = [(names.index(t), k) for t in TASKS for k in range(N // len(TASKS))]
    unshuffled += [(names.index(CULTURE_LABEL), k) for k in range(N_C)]
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(unshuffled))
    assert list(zip(col["label"].tolist(), col["seed_index"].tolist())) == [unshuffled[i] for i in perm]


def test_labels_match_the_generating_task(built):
    """Undo the structure, compare with the world generator run directly on the
    shard's seed: every non-noised block is identical, the noised one differs
    in a few cells only."""
    out, _, c = built
    ds = load(out)
    col = columns(ds)
    names = ds.features["label"].names
    ids = torch.from_numpy(col["input_ids"].astype(np.int64))
    canon = reconfigure(ids[:, 1:], CANONICAL).reshape(-1, N_BLOCKS, BLOCK_LEN)
    for i, name in enumerate(names):
        rows = np.flatnonzero(col["label"] == i)
        seed_index = torch.from_numpy(col["seed_index"][rows])
        if name == CULTURE_LABEL:
            clean = c[seed_index]
        else:
            assert (seed_index < SHARD_SIZE).all()
            grids = world.generate_task_grids(name, SHARD_SIZE, seed=shard_seeds(SEED, name, 0)[0])
            clean = grids_to_quizzes(torch.from_numpy(grids).long())[seed_index]
        clean = clean.reshape(-1, N_BLOCKS, BLOCK_LEN)
        got = canon[torch.from_numpy(rows)]
        for j, r in enumerate(rows):
            s = STRUCTURES[int(col["structure"][r])]
            noised = {s.markers[b] for b in s.noised}           # markers of the noised blocks
            for b, marker in enumerate(CANONICAL):
                same = (got[j, b] == clean[j, b])
                if marker in noised:
                    assert same[0] and (~same).float().mean() < 0.3
                else:
                    assert same.all(), (name, int(seed_index[j]), b)


def test_noise_rate_and_regenerate(built):
    out, _, c = built
    ds = load(out)
    col = columns(ds)
    names = ds.features["label"].names
    changed = total = 0
    for i, name in enumerate(names):
        rows = np.flatnonzero(col["label"] == i)
        clean, again, structure = regenerate(name, col["seed_index"][rows], seed=SEED,
                                             c_quizzes=c if name == CULTURE_LABEL else None)
        assert torch.equal(again, torch.from_numpy(col["input_ids"][rows].astype(np.int64)))
        assert structure.tolist() == col["structure"][rows].tolist()
        # noise: only structures 1 and 2 (indices 0, 1), only block 3, about 5% * 10/11 of its cells
        noisy = reconfigure(again[:, 1:], CANONICAL) != clean
        blocks = noisy.reshape(-1, N_BLOCKS, BLOCK_LEN)
        quiet = torch.from_numpy(np.isin(col["structure"][rows], [2, 3]))
        assert not blocks[quiet].any()
        loud = blocks[~quiet]
        changed += int(loud.sum())
        total += int(loud.shape[0]) * 100
    assert 0.02 < changed / total < 0.08
    with pytest.raises(CultureError):
        regenerate(CULTURE_LABEL, [0], seed=SEED)


def test_partitions_sum_to_the_whole(built):
    from datasets import DatasetDict

    out, _, _ = built
    ds = load(out)
    parts = load(out / "partitioned")
    assert isinstance(parts, DatasetDict)
    names = ds.features["label"].names
    assert sorted(parts) == names
    assert sum(len(p) for p in parts.values()) == len(ds)
    col = columns(ds)
    for i, name in enumerate(names):
        pc = columns(parts[name])
        rows = np.flatnonzero(col["label"] == i)
        assert (pc["label"] == i).all()
        for k in ("input_ids", "seed_index", "structure"):
            assert np.array_equal(pc[k], col[k][rows])          # same rows, same (shuffled) order


def test_parquet_files_hold_the_same_rows(built):
    import pyarrow.parquet as pq

    out, _, _ = built
    ds = load(out)
    table = pq.read_table(str(out / "parquet"))
    assert table.equals(ds.data.table.select(table.column_names).combine_chunks()) or \
        table.to_pydict() == ds.data.table.to_pydict()
    from datasets import load_dataset

    again = load_dataset("parquet", data_dir=str(out / "parquet"), split="train")
    assert again.features == ds.features and again[:5] == ds[:5]
    for name in ds.features["label"].names:
        part = pq.read_table(str(out / "partitioned" / "parquet" / name))
        assert part.num_rows == len(load(out / "partitioned")[name])


# ------------------------------------------------------------------ determinism


def test_same_seed_same_dataset_whatever_num_proc(built, tmp_path):
    out, _, c = built
    other = build_dataset(tmp_path / "np2", N, TASKS, c_quizzes=c, seed=SEED, num_proc=2)
    assert other.num_proc == 2
    a, b = load(out), load(tmp_path / "np2")
    assert a.data.table.equals(b.data.table)
    different = build_dataset(tmp_path / "seed4", N, TASKS, c_quizzes=c, seed=SEED + 1, num_proc=1)
    assert not a.data.table.equals(load(different.out).data.table)


def test_rows_do_not_depend_on_n(built, tmp_path):
    """Streams: quiz k of a task is the same whatever n (and the other tasks)."""
    out, _, _ = built
    small = build_dataset(tmp_path / "small", 20, ["frame", "grow"], seed=SEED, num_proc=1)
    a, b = columns(load(out)), columns(load(small.out))
    names_a, names_b = sorted(TASKS + [CULTURE_LABEL]), sorted(["frame", "grow"])
    key_a = {(names_a[l], s): r for r, (l, s) in enumerate(zip(a["label"], a["seed_index"]))}
    for r, (l, s) in enumerate(zip(b["label"], b["seed_index"])):
        assert np.array_equal(b["input_ids"][r], a["input_ids"][key_a[(names_b[l], s)]])


# ------------------------------------------------------------------ push


@pytest.fixture
def fake_hub(monkeypatch):
    """Record Dataset/DatasetDict.push_to_hub calls instead of reaching the hub."""
    from datasets import Dataset, DatasetDict

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []
    monkeypatch.setattr(Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("Dataset", repo_id, kw.get("private"), len(self))))
    monkeypatch.setattr(DatasetDict, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("DatasetDict", repo_id, kw.get("private"),
                                                                  sorted(self))))
    return calls


def test_push_dataset_calls(built, fake_hub):
    out, _, _ = built
    assert push_dataset(out, "me/culture-puzzles", private=True) == ["me/culture-puzzles",
                                                                     "me/culture-puzzles-partitioned"]
    names = sorted(TASKS + [CULTURE_LABEL])
    assert fake_hub == [("Dataset", "me/culture-puzzles", True, N + N_C),
                        ("DatasetDict", "me/culture-puzzles-partitioned", True, names)]


def test_cli_build_with_push(tmp_path, fake_hub, capsys):
    code, out, err = run_cli(capsys, "dataset", "build", "--n", "40", "--tasks", "frame", "grow", "--out",
                             str(tmp_path / "d"), "--push", "me/ds", "--num-proc", "1")
    assert code == 0, err
    assert "quizzes/s" in out and "pushed me/ds" in out
    assert fake_hub == [("Dataset", "me/ds", False, 40)]
    code, out, err = run_cli(capsys, "dataset", "push", str(tmp_path / "d"), "--repo", "me/ds2", "--private")
    assert code == 0, err
    assert fake_hub[-1] == ("Dataset", "me/ds2", True, 40)


def test_push_offline_and_refused_are_one_line(built, tmp_path, monkeypatch, capsys):
    out, _, _ = built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CultureError, match="offline"):
        push_dataset(out, "me/ds")
    code, _, err = run_cli(capsys, "dataset", "build", "--n", "8", "--out", str(tmp_path / "x"), "--push", "me/ds")
    assert code == 2 and err.count("\n") == 1 and "offline" in err
    assert not (tmp_path / "x").exists()                      # checked before building
    from datasets import Dataset

    def refuse(self, repo_id, **kw):
        raise ConnectionError("Max retries exceeded with url: /api/repos/create\nmore")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(Dataset, "push_to_hub", refuse)
    code, _, err = run_cli(capsys, "dataset", "push", str(out), "--repo", "me/ds")
    assert code == 2 and err.count("\n") == 1
    assert "cannot push dataset to me/ds" in err and "Max retries" in err


# ------------------------------------------------------------------ CLI


def test_cli_build_prints_throughput_and_source(tmp_path, c_quizzes_file, capsys):
    code, out, err = run_cli(capsys, "dataset", "build", "--n", "30", "--tasks", "frame,contact", "--source",
                             str(c_quizzes_file), "--out", str(tmp_path / "d"), "--seed", "5", "--partitioned")
    assert code == 0, err
    assert "quizzes/s" in out and "culture 37" in out
    ds = load(tmp_path / "d")
    assert len(ds) == 30 + N_C
    assert sorted(load(tmp_path / "d" / "partitioned")) == ["contact", "culture", "frame"]


@pytest.mark.parametrize("args, message", [
    (["--n", "10", "--tasks", "nope"], "unknown task"),
    (["--n", "0"], "--n must be positive"),
    (["--n", "-5"], "--n must be positive"),
    (["--n", "3"], "smaller than the number of tasks"),
    (["--n", "10", "--tasks", "grow", "grow"], "listed twice"),
    (["--n", "10", "--seed", "-1"], "--seed"),
    (["--n", "10", "--num-proc", "0"], "--num-proc"),
    (["--n", "10", "--noise", "1.5"], "--noise"),
    (["--n", "10", "--private"], "--private needs --push"),
    (["--n", "10", "--source", "/nonexistent/c_quizzes.pth"], "not found"),
    (["--n", "10", "--push", "bad repo id"], "invalid hub repo id"),
])
def test_cli_bad_inputs_are_one_line(tmp_path, capsys, args, message):
    code, out, err = run_cli(capsys, "dataset", "build", "--out", str(tmp_path / "d"), *args)
    assert code == 2, err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "d").exists()


def test_cli_existing_output(tmp_path, capsys):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, out, err = run_cli(capsys, "dataset", "build", "--n", "8", "--out", str(target))
    assert code == 2 and err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert (target / "keep.txt").read_text() == "mine"
    code, out, err = run_cli(capsys, "dataset", "build", "--n", "8", "--tasks", "frame", "--out", str(target),
                             "--overwrite")
    assert code == 0, err
    assert not (target / "keep.txt").exists() and len(load(target)) == 8
    (tmp_path / "f").write_text("a file")
    code, out, err = run_cli(capsys, "dataset", "build", "--n", "8", "--out", str(tmp_path / "f"))
    assert code == 2 and "not a directory" in err


def test_help_imports_no_heavy_library():
    heavy, out, err = heavy_imports([["--help"]],
                                    ("datasets", "transformers", "pyarrow", "transformer_lens", "sae_lens"))
    assert heavy == [], out + err
