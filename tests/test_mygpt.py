import pytest
import torch

from culture.mygpt import (
    PRESETS,
    CheckpointError,
    GPTConfig,
    MyGPT,
    config_from_state_dict,
    load_mygpt,
    save_checkpoint,
)
from culture.quiz import QUIZ_LEN
from tests.reference_forward import random_reference_state, reference_forward, write_reference_checkpoint

SHAPES = {  # (dim_model, dim_keys, dim_hidden, nb_heads, nb_blocks)
    "17K": (32, 32, 32, 2, 2),
    "4M-like (dim_keys != D/heads)": (64, 8, 96, 4, 2),
    "37M-like": (64, 16, 128, 4, 2),
    "single head": (24, 12, 40, 1, 1),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_reference_checkpoint_loads_and_matches_reference_forward(tmp_path, shape):
    state = random_reference_state(*shape, seed=1)
    path = tmp_path / "gpt_000.pth"
    write_reference_checkpoint(path, state, accuracy=0.875)
    model, acc = load_mygpt(path)
    assert acc == 0.875
    assert model.config == GPTConfig(*shape)
    quizzes = torch.randint(0, 15, (3, QUIZ_LEN), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(quizzes)
        ref = reference_forward(state, quizzes)
    assert ours.shape == (3, QUIZ_LEN, 15)
    assert (ours - ref).abs().max().item() < 1e-5


def test_state_dict_has_reference_keys():
    model = MyGPT(PRESETS["17K"])
    keys = set(model.state_dict())
    ref = set(random_reference_state(32, 32, 32, 2, 2))
    assert keys == ref


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_recognised_from_shapes(name):
    cfg = PRESETS[name]
    # shapes only: use meta tensors so the 352M preset costs nothing
    with torch.device("meta"):
        state = MyGPT(cfg).state_dict()
    assert config_from_state_dict(state) == cfg


def test_kv_cache_matches_full_forward():
    model = MyGPT(GPTConfig(48, 16, 64, 3, 2)).eval()
    x = torch.randint(0, 15, (2, QUIZ_LEN), generator=torch.Generator().manual_seed(0))
    tokens = torch.nn.functional.pad(x, (1, -1))
    with torch.no_grad():
        full = model.forward_tokens(tokens)
        cache = model.new_cache()
        parts = [model.forward_tokens(tokens[:, :250], cache)]
        for t in range(250, 260):
            parts.append(model.forward_tokens(tokens[:, t : t + 1], cache))
        parts.append(model.forward_tokens(tokens[:, 260:], cache))
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


def test_save_checkpoint_round_trip(tmp_path):
    model = MyGPT(PRESETS["17K"])
    save_checkpoint(model, 0.25, tmp_path / "gpt_003.pth")
    state, acc = torch.load(tmp_path / "gpt_003.pth", weights_only=True)
    assert acc == 0.25 and set(state) == set(model.state_dict())
    loaded, acc2 = load_mygpt(tmp_path / "gpt_003.pth")
    x = torch.randint(0, 15, (1, QUIZ_LEN))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert not list(tmp_path.glob("*.tmp"))


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_payload_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gpt_000.pth"
    torch.save(({"x": _Evil()}, 0.5), path)
    with pytest.raises(CheckpointError, match="refused"):
        load_mygpt(path)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_and_wrong_layout_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_mygpt(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_mygpt(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(({"foo.weight": torch.zeros(3)}, 0.1), wrong)
    with pytest.raises(CheckpointError, match="not a culture GPT"):
        load_mygpt(wrong)
    state = random_reference_state(32, 32, 32, 2, 2)
    state["readout.f.bias"] = torch.zeros(7)
    torch.save((state, 0.1), wrong)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_mygpt(wrong)
