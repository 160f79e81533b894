"""``eval``, ``convert`` and the Python API from each kind of source: a local
result directory, the bundled zoo, and a Hugging Face repo read from an
offline hub cache (HF_HUB_OFFLINE=1, built in a temp dir)."""

from __future__ import annotations

import json

import pytest
import torch

from culture import sources
from culture.hooked import load_hooked, max_logit_diff
from tests.cli import run_cli
from tests.helpers_sources import (
    TINY_4M_LIKE,
    hub_files_from_dir,
    make_local_source,
    make_offline_hub_cache,
    make_zoo,
    random_quizzes,
    use_hub_env,
)

KINDS = ("local", "bundled", "hub")


@pytest.fixture(params=KINDS)
def source(request, tmp_path, monkeypatch):
    """The source argument of one kind, holding the same two checkpoints
    (one 17K-shaped, one with dim_keys != dim_model // heads) and c-quizzes."""
    shapes = [(32, 32, 32, 2, 2), TINY_4M_LIKE]
    local = make_local_source(tmp_path, shapes=shapes)
    if request.param == "local":
        return request.param, str(local)
    if request.param == "bundled":
        zoo = make_zoo(tmp_path / "z", shapes=shapes, n_models=2, with_c_quizzes=True)
        monkeypatch.setattr(sources, "ZOO_DIR", zoo)
        return request.param, "bundled"
    use_hub_env(monkeypatch, make_offline_hub_cache(tmp_path, "someone/culture-gpt", hub_files_from_dir(local)))
    return request.param, "someone/culture-gpt"


def test_python_api(source):
    kind, name = source
    src = sources.resolve_source(name)
    assert src.kind == kind
    assert src.model_ids() == [0, 1]
    models = sources.load_culture([0, 1], source=name)
    hooked = load_hooked([0, 1], source=name)
    quizzes = random_quizzes(3, seed=4)
    for model, h in zip(models, hooked):
        assert max_logit_diff(model, h, quizzes) < 1e-4
    train, test = src.c_quizzes()
    assert train.shape[1] == test.shape[1] == 404


def test_eval_and_convert(source, tmp_path, capsys):
    kind, name = source
    path = tmp_path / "eval.json"
    code, out, err = run_cli(capsys, "eval", "--models", 0, 1, "--source", name, "--num-samples", 10,
                             "--json", path)
    assert code == 0, err
    result = json.loads(path.read_text())
    assert [m["model"] for m in result["models"]] == ["0", "1"]
    assert all(0.0 <= m["greedy_accuracy"] <= 1.0 for m in result["models"])
    code, out, err = run_cli(capsys, "convert", "--models", 1, "--source", name, "--out", tmp_path / "conv",
                             "--n-quizzes", 2)
    assert code == 0, err
    assert (tmp_path / "conv" / "gpt-1" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "conv" / "gpt-1" / "config.json").read_text())
    assert config["culture"]["source_kind"] == kind
    assert config["culture"]["max_abs_logit_diff"] < 1e-4


def test_unknown_id_is_one_line(source, capsys):
    kind, name = source
    code, out, err = run_cli(capsys, "eval", "--models", 7, "--source", name, "--num-samples", 4)
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1
    # offline, the hub source can only say which models it has cached
    assert "model 7" in lines[0]
    assert "models there: 0, 1" in lines[0] or "cached models: 0, 1" in lines[0]


class _Payload:
    """Unpickling this would run code (it must never be)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("command", [["eval", "--num-samples", 4], ["convert", "--out", "OUT"]])
def test_pickle_payload_and_corrupt_checkpoint_are_refused(tmp_path, capsys, command):
    marker = tmp_path / "payload-ran"
    root = make_local_source(tmp_path, n_models=2)
    torch.save(({"embedding.0.f.0.weight": _Payload(marker)}, 0.5), root / "gpt_000.pth")
    (root / "gpt_001.pth").write_bytes(b"\x80\x02 definitely not a checkpoint")
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    for k, pattern in ((0, "refused"), (1, "not a readable checkpoint")):
        code, out, err = run_cli(capsys, argv[0], "--models", k, "--source", root, *argv[1:])
        lines = [l for l in err.splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1 and pattern in lines[0], err
        assert "Traceback" not in err
    assert not marker.exists()
