"""Model sources: local directory, bundled zoo, Hugging Face repo (offline cache,
and the online paths with huggingface_hub's functions replaced: no network)."""

import importlib

import pytest
import torch

from culture import sources
from culture.errors import CultureError
from culture.mygpt import GPTConfig, MyGPT
from culture.sources import (
    DEFAULT_SOURCE,
    BundledSource,
    HubSource,
    LocalSource,
    SourceError,
    load_culture,
    load_model,
    resolve_source,
)
from tests.helpers_sources import (
    TINY,
    TINY_4M_LIKE,
    accuracy_of,
    hub_files_from_dir,
    make_local_source,
    make_offline_hub_cache,
    make_zoo,
    use_hub_env,
)

REPO = "someone/culture-test"


def _httpx():
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("no httpx")


# ------------------------------------------------------------------ local


def test_local_source(tmp_path):
    root = make_local_source(tmp_path, [TINY, TINY_4M_LIKE, TINY])
    src = resolve_source(str(root))
    assert isinstance(src, LocalSource) and src.kind == "local" and src.name == str(root)
    assert src.model_ids() == [0, 1, 2]
    assert src.checkpoint_path(1) == root / "gpt_001.pth"
    train, test = src.c_quizzes()
    assert train.shape == (5, 404) and test.shape == (2, 404)
    assert src.file("c_quizzes.pth") == root / "c_quizzes.pth"
    # a PathLike works too
    assert resolve_source(root).model_ids() == [0, 1, 2]


def test_load_culture_and_load_model(tmp_path):
    root = make_local_source(tmp_path, [TINY, TINY_4M_LIKE])
    models = load_culture([0, 1], source=root)
    assert isinstance(models, list) and len(models) == 2
    assert all(isinstance(m, MyGPT) and not m.training for m in models)
    assert models[1].config == GPTConfig(*TINY_4M_LIKE)
    assert models[1].accuracy == accuracy_of(1) and models[1].model_id == 1
    one = load_culture(0, source=str(root))
    assert isinstance(one, list) and len(one) == 1
    model, acc = load_model(1, source=root)
    assert acc == accuracy_of(1)
    q = torch.randint(0, 15, (2, 404))
    with torch.no_grad():
        assert torch.equal(model(q), models[1](q))


def test_unknown_id_lists_available(tmp_path):
    root = make_local_source(tmp_path, TINY, n_models=2)
    with pytest.raises(SourceError, match=r"model 7 is not in source .*\(models there: 0, 1\)"):
        load_culture([0, 7], source=root)
    with pytest.raises(SourceError, match="integer"):
        load_culture(["x"], source=root)


def test_local_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        resolve_source(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(SourceError, match="directory not found"):
        resolve_source(tmp_path / "nope")
    f = tmp_path / "file.pth"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match="is a file"):
        resolve_source(str(f))
    root = make_local_source(tmp_path, TINY, n_models=1, with_c_quizzes=False)
    src = resolve_source(root)
    assert src.c_quizzes() is None
    with pytest.raises(SourceError, match="not found"):
        src.file("gpt-0/blocks_8_mlp_out/cfg.json")
    with pytest.raises(SourceError, match="invalid file name"):
        src.file("../secret")
    assert issubclass(SourceError, CultureError)


def test_corrupt_checkpoint_is_a_culture_error(tmp_path):
    root = make_local_source(tmp_path, TINY, n_models=1)
    (root / "gpt_000.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CultureError, match="gpt_000.pth"):
        load_culture(0, source=root)


def test_generic_file_in_subfolder(tmp_path):
    root = make_local_source(tmp_path, TINY, n_models=1)
    (root / "gpt-0" / "blocks_8_mlp_out").mkdir(parents=True)
    (root / "gpt-0" / "blocks_8_mlp_out" / "cfg.json").write_text("{}")
    src = resolve_source(root)
    assert src.file("gpt-0/blocks_8_mlp_out/cfg.json").read_text() == "{}"
    assert src.model_ids() == [0]  # files in subfolders are not models


# ---------------------------------------------------------------- bundled


def test_bundled_source(tmp_path, monkeypatch):
    zoo = make_zoo(tmp_path, TINY, n_models=3)
    monkeypatch.setattr(sources, "ZOO_DIR", zoo)
    src = resolve_source("bundled")
    assert isinstance(src, BundledSource) and src.kind == "bundled" and src.name == "bundled"
    assert src.model_ids() == [0, 1, 2]
    assert src.model_card == zoo / "MODEL_CARD.md"
    assert src.c_quizzes() is None
    models = load_culture([2, 0], source="bundled")
    assert [m.model_id for m in models] == [2, 0]
    with pytest.raises(SourceError, match=r"not in source bundled .*0, 1, 2"):
        load_culture(5, source="bundled")


@pytest.mark.parametrize("exists", [True, False])
def test_empty_zoo(tmp_path, monkeypatch, exists):
    zoo = tmp_path / "zoo"
    if exists:
        zoo.mkdir()
        (zoo / "MODEL_CARD.md").write_text("soon")
    monkeypatch.setattr(sources, "ZOO_DIR", zoo)
    with pytest.raises(SourceError, match="bundled model zoo is empty") as info:
        load_culture(0, source="bundled")
    assert "\n" not in str(info.value)
    assert DEFAULT_SOURCE in str(info.value)


# -------------------------------------------------------------- hub offline


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    root = make_local_source(tmp_path, [TINY, TINY_4M_LIKE])
    files = hub_files_from_dir(root)
    files["gpt-0/blocks_8_mlp_out/cfg.json"] = b'{"d_in": 32}'
    env = make_offline_hub_cache(tmp_path, REPO, files, commit="a" * 40)
    use_hub_env(monkeypatch, env)
    return env


def test_hub_offline_from_cache(hub_cache):
    src = resolve_source(REPO)
    assert isinstance(src, HubSource) and src.kind == "hub" and src.name == REPO
    assert src.offline
    assert src.model_ids() == [0, 1]
    path = src.checkpoint_path(1)
    assert path.is_file() and hub_cache["HF_HUB_CACHE"] in str(path)
    # the layout is the one huggingface_hub itself reads
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    assert hf_hub_download(REPO, "gpt_001.pth", cache_dir=hub_cache["HF_HUB_CACHE"],
                           local_files_only=True) == str(path)
    assert try_to_load_from_cache(REPO, "gpt_001.pth", cache_dir=hub_cache["HF_HUB_CACHE"]) == str(path)
    models = load_culture([0, 1], source=REPO)
    assert models[1].config == GPTConfig(*TINY_4M_LIKE) and models[1].accuracy == accuracy_of(1)
    train, test = src.c_quizzes()
    assert train.shape == (5, 404)
    assert src.file("gpt-0/blocks_8_mlp_out/cfg.json").read_text() == '{"d_in": 32}'
    # revisions: a commit hash and a branch name
    assert resolve_source(f"{REPO}@{'a' * 40}").model_ids() == [0, 1]
    assert resolve_source(f"hf://{REPO}").model_ids() == [0, 1]


def test_hub_offline_copies_instead_of_symlinks(tmp_path, monkeypatch):
    root = make_local_source(tmp_path, TINY, n_models=1, with_c_quizzes=False)
    use_hub_env(monkeypatch, make_offline_hub_cache(tmp_path, REPO, hub_files_from_dir(root), symlinks=False))
    assert len(load_culture(0, source=REPO)) == 1


def test_hub_offline_not_cached(hub_cache):
    with pytest.raises(SourceError) as info:
        load_culture(0, source="other/repo")
    msg = str(info.value)
    assert "\n" not in msg
    for needle in ("other/repo", "not in the Hugging Face cache", "HF_HUB_OFFLINE", "--source bundled", "DIR"):
        assert needle in msg
    src = resolve_source(REPO)
    with pytest.raises(SourceError, match="not in the Hugging Face cache"):
        src.file("gpt-1/blocks_8_mlp_out/cfg.json")
    with pytest.raises(SourceError, match=r"model 3 .*cached models: 0, 1"):
        src.checkpoint_path(3)
    with pytest.raises(SourceError, match="not in the Hugging Face cache"):
        resolve_source(f"{REPO}@v9").model_ids()


def test_offline_flag_read_at_call_time(hub_cache, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_source(REPO).offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not resolve_source(REPO).offline
    monkeypatch.setenv("HF_HUB_CACHE", "/somewhere/else")
    assert str(resolve_source(REPO).cache_dir) == "/somewhere/else"


def test_default_source_is_the_published_repo(hub_cache):
    src = resolve_source()
    assert src.kind == "hub" and src.name == DEFAULT_SOURCE == "tommyp111/culture-gpt"
    with pytest.raises(SourceError, match="tommyp111/culture-gpt"):
        src.model_ids()


def test_existing_directory_wins_over_repo_id(tmp_path, monkeypatch):
    root = make_local_source(tmp_path, TINY, n_models=1, name="owner")
    (root / "name").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_source("owner").kind == "local"
    assert resolve_source("owner/name").kind == "local"
    assert resolve_source("owner/other").kind == "hub"


# ------------------------------------------------- hub online (no network)


@pytest.fixture
def online(hub_cache, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_cache


def test_hub_online_lists_and_downloads(online, monkeypatch, tmp_path):
    import huggingface_hub

    root = make_local_source(tmp_path / "remote", TINY, n_models=3, with_c_quizzes=False)
    calls = []
    _remote(monkeypatch, sorted(hub_files_from_dir(root)))

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, cache_dir))
        return str(root / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    src = resolve_source(REPO)
    assert not src.offline
    assert src.model_ids() == [0, 1, 2]
    assert src.c_quizzes() is None
    assert len(load_culture([2], source=src)) == 1
    assert calls == [(REPO, "gpt_002.pth", online["HF_HUB_CACHE"])]


def test_hub_unreachable_falls_back_to_cache(online, monkeypatch):
    import huggingface_hub

    httpx = _httpx()

    def must_not_download(*a, **k):
        raise AssertionError("no download once the Hub is known unreachable")

    _remote(monkeypatch, error=httpx.ConnectError("[Errno -2] Name or service not known"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", must_not_download)
    src = resolve_source(REPO)
    assert src.model_ids() == [0, 1]
    assert len(load_culture([0, 1], source=src)) == 2
    with pytest.raises(SourceError) as info:
        resolve_source("other/repo").model_ids()
    msg = str(info.value)
    assert "cannot be reached" in msg and "Name or service not known" in msg and "--source bundled" in msg


def _remote(monkeypatch, names=None, error=None):
    """Replace the Hub's file listing (huggingface_hub.model_info) by ``names`` or ``error``."""
    import types

    import huggingface_hub

    def model_info(repo_id, revision=None, **kwargs):
        if error is not None:
            raise error
        return types.SimpleNamespace(siblings=[types.SimpleNamespace(rfilename=n) for n in names])

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)


def _http_error(cls, status=404):
    httpx = _httpx()
    response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    return cls("404 Client Error. Repository Not Found for url", response=response)


@pytest.mark.parametrize("error, pattern", [
    ("RepositoryNotFoundError", "not found on the Hugging Face Hub"),
    ("GatedRepoError", "gated"),
    ("RevisionNotFoundError", "revision"),
    ("HfHubHTTPError", "HfHubHTTPError"),
])
def test_hub_errors_become_one_line(online, monkeypatch, error, pattern):
    from huggingface_hub import errors

    _remote(monkeypatch, error=_http_error(getattr(errors, error)))
    with pytest.raises(SourceError, match=pattern) as info:
        load_culture(0, source="other/repo")
    assert "\n" not in str(info.value)


def test_hub_download_errors(online, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    _remote(monkeypatch, ["gpt_000.pth"])

    def missing(*a, **k):
        raise _http_error(errors.RemoteEntryNotFoundError)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    with pytest.raises(SourceError, match="no such file"):
        resolve_source(REPO).file("gpt-0/cfg.json")

    def no_net(*a, **k):
        raise errors.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_net)
    with pytest.raises(SourceError, match="not in the Hugging Face cache"):
        load_culture(0, source=REPO)


def test_bad_source_strings():
    with pytest.raises(SourceError, match="empty"):
        resolve_source("  ")
    with pytest.raises(SourceError, match="neither a directory nor"):
        resolve_source("a/b/c")
    with pytest.raises(SourceError, match="repo id"):
        resolve_source("hf://nope")


def test_hub_listing_falls_back_to_list_repo_files(online, monkeypatch):
    import types

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, revision=None, **kw: types.SimpleNamespace(siblings=None))
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: ["gpt_004.pth", "x/gpt_001.pth"])
    assert resolve_source(REPO).model_ids() == [4]
