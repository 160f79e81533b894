"""The quiz tokenizer: vocabulary, round trips, save/push, and that
TransformerLens never takes a cell (above all the empty cell 0) for padding."""

import warnings

import pytest
import torch

from culture.errors import CultureError
from culture.quiz import QUIZ_LEN, empty_quizzes, reconfigure, STRUCTURES
from culture.tokenizer import (
    BOS_TOKEN_ID,
    MODEL_MAX_LENGTH,
    PAD_TOKEN_ID,
    TOKEN_WORDS,
    UNK_TOKEN_ID,
    VOCAB,
    build_tokenizer,
    push_tokenizer,
    save_tokenizer,
    text_to_tokens,
    tokens_to_text,
)
from tests.cli import run_cli

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def zero_heavy_quizzes(n=4, seed=0):
    """Quizzes that are mostly empty (0) cells, ending in runs of 0, in mixed structures."""
    g = torch.Generator().manual_seed(seed)
    q = empty_quizzes(n)
    cells = torch.randint(0, 11, q.shape, generator=g)
    keep = torch.rand(q.shape, generator=g) < 0.15
    marker = torch.zeros(QUIZ_LEN, dtype=torch.bool)
    marker[::101] = True
    q = torch.where(keep & ~marker, cells, q)
    q[:, -30:] = torch.where(marker[-30:], q[:, -30:], torch.zeros_like(q[:, -30:]))
    return reconfigure(q, torch.tensor([STRUCTURES[k % 4].markers for k in range(n)]))


# ------------------------------------------------------------------ vocabulary


def test_vocabulary_is_the_earlier_toolkits_plus_pad(tok):
    expected = {**{f"{i:x}": i for i in range(11)}, "X": 11, "f_X": 12, "Y": 13, "f_Y": 14, "[UNK]": 15, "[PAD]": 16}
    assert VOCAB == expected
    assert tok.get_vocab() == expected
    assert len(tok) == 17
    assert (tok.bos_token, tok.bos_token_id) == ("0", BOS_TOKEN_ID)
    assert (tok.pad_token, tok.pad_token_id) == ("[PAD]", PAD_TOKEN_ID)
    assert (tok.eos_token_id, tok.unk_token_id) == (PAD_TOKEN_ID, UNK_TOKEN_ID)
    assert tok.model_max_length == MODEL_MAX_LENGTH == 405
    assert tok.padding_side == "right"
    # padding never uses a model token: 0..14 are cells and markers only
    assert tok.pad_token_id >= 15


@pytest.mark.parametrize("token_id", range(17))
def test_every_token_round_trips(tok, token_id):
    word = tok.convert_ids_to_tokens(token_id)
    assert tok.convert_tokens_to_ids(word) == token_id
    assert tok.encode(word, add_special_tokens=False) == [token_id]
    assert tok.decode([token_id]) == word
    if token_id < 15:
        assert word == TOKEN_WORDS[token_id]


def test_quiz_text_round_trip(tok):
    quizzes = zero_heavy_quizzes(3)
    texts = tokens_to_text(quizzes)
    assert texts[0].split()[0] in ("X", "f_X", "Y", "f_Y")
    for q, text in zip(quizzes, texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == q.tolist()
        assert tok.decode(ids) == text
        # with special tokens: BOS 0 + quiz = the 405 model-input ids (the dataset rows)
        with_bos = tok(text)["input_ids"]
        assert with_bos == [0] + q.tolist() and len(with_bos) == 405
        assert tok(tok.decode(with_bos), add_special_tokens=False)["input_ids"] == with_bos
        assert text_to_tokens(text).tolist() == q.tolist()
    batch = tok(texts, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(batch, quizzes)


def test_all_words_and_unknown_words(tok):
    text = " ".join(TOKEN_WORDS)
    assert tok.encode(text, add_special_tokens=False) == list(range(15))
    assert tok.encode("X 0 b Z f_Q 3", add_special_tokens=False) == [11, 0, 15, 15, 15, 3]
    assert text_to_tokens("X 0 b").tolist() == [11, 0, 15]
    with pytest.raises(ValueError):
        tokens_to_text([0, 17])


# ------------------------------------------------------------------ save / push


def test_save_load_round_trip_and_atomic(tmp_path):
    from transformers import AutoTokenizer

    out = save_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(out))
    text = tokens_to_text(zero_heavy_quizzes(1))[0]
    assert loaded(text)["input_ids"] == build_tokenizer()(text)["input_ids"]
    assert (loaded.bos_token_id, loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 16, 16, 15)
    assert loaded.model_max_length == 405
    with pytest.raises(CultureError, match="not empty"):
        save_tokenizer(out)
    save_tokenizer(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp folder left over


def test_cli_tokenizer_build_and_errors(tmp_path, capsys):
    code, out, err = run_cli(capsys, "tokenizer", "build", "--out", str(tmp_path / "t"))
    assert code == 0, err
    assert (tmp_path / "t" / "tokenizer.json").is_file()
    code, out, err = run_cli(capsys, "tokenizer", "build", "--out", str(tmp_path / "t"))
    assert code == 2 and err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    code, out, err = run_cli(capsys, "tokenizer", "build", "--out", str(tmp_path / "t"), "--overwrite")
    assert code == 0, err


@pytest.fixture
def hub_online(monkeypatch):
    """Pretend the hub is reachable; the transport is mocked by the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def test_push_calls_push_to_hub_with_repo_and_private(monkeypatch, hub_online):
    from transformers import PreTrainedTokenizerFast

    calls = []

    def fake_push(self, repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("private"), self.pad_token_id, self.bos_token_id))
        return "https://huggingface.co/me/tok/commit/abc"

    monkeypatch.setattr(PreTrainedTokenizerFast, "push_to_hub", fake_push)
    assert push_tokenizer("me/tok", private=True).endswith("abc")
    push_tokenizer("me/tok2")
    assert calls == [("me/tok", True, 16, 0), ("me/tok2", False, 16, 0)]


def test_push_cli_private_flag(monkeypatch, hub_online, capsys):
    from transformers import PreTrainedTokenizerFast

    calls = []
    monkeypatch.setattr(PreTrainedTokenizerFast, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append((repo_id, kw.get("private"))) or "ok")
    code, out, err = run_cli(capsys, "tokenizer", "push", "--repo", "me/culture-tokenizer", "--private")
    assert code == 0, err
    assert calls == [("me/culture-tokenizer", True)]


def test_push_offline_and_transport_errors_are_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(capsys, "tokenizer", "push", "--repo", "me/tok")
    assert code == 2 and err.count("\n") == 1 and "offline" in err and "me/tok" in err
    code, out, err = run_cli(capsys, "tokenizer", "push", "--repo", "not a repo!")
    assert code == 2 and err.count("\n") == 1 and "invalid hub repo id" in err

    from transformers import PreTrainedTokenizerFast

    def refuse(self, repo_id, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(many more lines)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(PreTrainedTokenizerFast, "push_to_hub", refuse)
    code, out, err = run_cli(capsys, "tokenizer", "push", "--repo", "me/tok")
    assert code == 2 and err.count("\n") == 1
    assert "cannot push tokenizer to me/tok" in err and "Failed to resolve" in err and "many more" not in err


# ------------------------------------------------------------------ TransformerLens / SAELens


def tiny_pair(tokenizer):
    """Two identical tiny random HookedTransformers (d_vocab 15, n_ctx 405):
    one without a tokenizer, one with ``tokenizer``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(d_model=32, d_head=8, n_heads=4, d_mlp=64, n_layers=2, n_ctx=405, d_vocab=15, act_fn="relu",
               normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=False, seed=0)
    bare = HookedTransformer(HookedTransformerConfig(**cfg)).eval()
    with_tok = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer).eval()
    with_tok.load_state_dict(bare.state_dict())
    return bare, with_tok


def model_input(quizzes):
    """BOS 0 + quiz[:-1] (the TransformerLens bridge input)."""
    return torch.cat([torch.zeros(len(quizzes), 1, dtype=torch.long), quizzes[:, :-1]], 1)


def cell_masking_errors(tokenizer, x):
    """Max |logit difference| between a tiny HookedTransformer given
    ``tokenizer`` and the same model without one, on token batch ``x``, in the
    code paths where TransformerLens builds attention masks from pad tokens:
    left padding side (forward, run_with_cache) and the KV cache (a prompt,
    then one token at a time)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    bare, hooked = tiny_pair(tokenizer)
    errors = {}
    with torch.no_grad():
        ref = bare(x)
        _, ref_cache = bare.run_with_cache(x)
        for side in ("right", "left"):  # left padding makes TransformerLens build a mask
            hooked.tokenizer.padding_side = side
            errors[f"forward/{side}"] = (hooked(x) - ref).abs().max().item()
            _, cache = hooked.run_with_cache(x)
            errors[f"run_with_cache/{side}"] = max(
                (cache[name] - ref_cache[name]).abs().max().item()
                for name in ("blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"))
        hooked.tokenizer.padding_side = "right"
        kv = TransformerLensKeyValueCache.init_cache(hooked.cfg, hooked.cfg.device, len(x))
        cut = x.shape[1] - 12
        steps = [hooked(x[:, :cut], past_kv_cache=kv)[:, -1]]
        for t in range(cut, x.shape[1]):
            steps.append(hooked(x[:, t:t + 1], past_kv_cache=kv)[:, -1])
        errors["kv_cache"] = (torch.stack(steps[1:], 1) - ref[:, cut:]).abs().max().item()
    return errors


def test_transformer_lens_never_masks_a_cell(tok):
    from transformer_lens.utilities.tokenize_utils import get_attention_mask

    x = model_input(zero_heavy_quizzes(3))
    x = torch.cat([x, model_input(empty_quizzes(1))])        # an all-empty quiz, too
    assert (x == 0).float().mean() > 0.7
    for prepend_bos in (True, False):
        for side in ("left", "right"):
            assert get_attention_mask(tok, x, prepend_bos, side).all()
    errors = cell_masking_errors(build_tokenizer(), x)
    assert max(errors.values()) < 1e-4, errors


def test_the_old_pad_zero_choice_would_mask_cells():
    """Negative control: with pad = "0" (the earlier toolkit's choice)
    TransformerLens masks empty cells and the logits change: the same checks
    fail, so they do test the masking."""
    old = build_tokenizer()
    old.pad_token = "0"
    errors = cell_masking_errors(old, model_input(zero_heavy_quizzes(4)))
    assert errors["forward/right"] < 1e-4                     # no mask built on this path
    assert errors["forward/left"] > 1e-2 and errors["kv_cache"] > 1e-2, errors


def test_generate_with_and_without_cache_matches_greedy(tok):
    bare, hooked = tiny_pair(build_tokenizer())
    prompt = model_input(zero_heavy_quizzes(2))[:, :330]
    steps = 8
    with torch.no_grad():
        seq = prompt.clone()
        for _ in range(steps):  # reference greedy decoding, no tokenizer anywhere
            seq = torch.cat([seq, bare(seq)[:, -1].argmax(-1, keepdim=True)], 1)
        for use_cache in (False, True):
            for side in ("right", "left"):
                hooked.tokenizer.padding_side = side
                out = hooked.generate(prompt, max_new_tokens=steps, do_sample=False, use_past_kv_cache=use_cache,
                                      verbose=False, return_type="tokens")  # stops at EOS by default: never
                assert torch.equal(out, seq), (use_cache, side)
    hooked.tokenizer.padding_side = "right"


def test_transformer_lens_strings_and_bos(tok):
    _, hooked = tiny_pair(build_tokenizer())
    q = zero_heavy_quizzes(1)
    text = tokens_to_text(q)[0]
    assert hooked.cfg.tokenizer_prepends_bos
    assert hooked.to_tokens(text).tolist() == q.tolist()                       # default_prepend_bos False
    assert hooked.to_tokens(text, prepend_bos=True).tolist() == [[0] + q[0].tolist()]
    assert hooked.to_str_tokens(text)[:3] == text.split()[:3]


def test_saelens_special_tokens(tok):
    """SAELens never masks padding in a pretokenized dataset; its opt-in
    ``exclude_special_tokens=True`` would drop {BOS 0, PAD 16} (documented)."""
    from sae_lens.util import get_special_token_ids

    assert sorted(get_special_token_ids(tok)) == [0, 16]
