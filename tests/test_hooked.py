"""The TransformerLens bridge: exact logits for every head layout, hook names,
HookedSAETransformer, round trips (MyGPT <-> HookedTransformer <-> saved files)."""

import json
import math

import pytest
import torch

from culture import sources
from culture.hooked import (
    N_CTX,
    HookedConversionError,
    IdentityLNFinal,
    hooked_config,
    hooked_logits,
    hooked_to_mygpt,
    load_converted,
    load_hooked,
    max_logit_diff,
    mygpt_to_hooked,
    save_converted,
    to_hooked_tokens,
)
from culture.mygpt import PRESETS, GPTConfig, MyGPT, mygpt_from_state_dict
from tests.helpers_sources import make_local_source, make_zoo, random_quizzes
from tests.reference_forward import random_reference_state, reference_forward

SHAPES = {  # (dim_model, dim_keys, dim_hidden, nb_heads, nb_blocks)
    "17K": (32, 32, 32, 2, 2),
    "4M-like dk<dv": (64, 8, 96, 4, 2),
    "dk>dv": (32, 32, 64, 4, 1),
    "37M-like": (64, 16, 128, 4, 2),
}
TOL = 1e-4


def _model(shape, seed=1) -> MyGPT:
    return mygpt_from_state_dict(random_reference_state(*shape, seed=seed)).eval()


@pytest.fixture(scope="module")
def quizzes():
    return torch.cat([random_quizzes(1, seed=5), torch.randint(0, 15, (1, 404), generator=torch.Generator().manual_seed(6))])


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_logits_match_mygpt(shape, quizzes):
    model = _model(shape)
    hooked = mygpt_to_hooked(model)
    cfg = GPTConfig(*shape)
    assert hooked.cfg.d_head == max(cfg.dim_keys, cfg.dim_value)
    assert math.isclose(hooked.cfg.attn_scale, math.sqrt(cfg.dim_keys))
    assert isinstance(hooked.ln_final, IdentityLNFinal)
    diff = max_logit_diff(model, hooked, quizzes)
    assert diff <= TOL, diff
    # and against the independent reference implementation
    theirs = hooked_logits(hooked, quizzes)
    ref = reference_forward(random_reference_state(*shape, seed=1), quizzes)
    assert (theirs - ref).abs().max().item() <= TOL
    # inverse conversion is exact
    back = hooked_to_mygpt(hooked)
    assert back.config == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_attention_scale_matters_when_dk_differs(quizzes):
    """Guard against TransformerLens' default scale sqrt(d_head): with dk=8 padded
    to d_head=16 the default would be wrong."""
    model = _model(SHAPES["4M-like dk<dv"])
    hooked = mygpt_to_hooked(model)
    for block in hooked.blocks:
        block.attn.attn_scale = math.sqrt(hooked.cfg.d_head)
    assert max_logit_diff(model, hooked, quizzes) > 1e-3


def test_config_matches_reference_section_4():
    cfg = hooked_config(PRESETS["37M"])
    assert (cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_heads, cfg.n_layers) == (512, 64, 2048, 8, 12)
    assert (cfg.n_ctx, cfg.d_vocab, cfg.act_fn) == (405, 15, "relu")
    assert cfg.normalization_type == "LN" and cfg.positional_embedding_type == "standard"
    assert cfg.default_prepend_bos is False and cfg.eps == 1e-5 and cfg.device == "cpu"
    c4 = hooked_config(PRESETS["4M"])
    assert c4.d_head == 64 and math.isclose(c4.attn_scale, math.sqrt(32))


def test_run_with_cache_hook_names(quizzes):
    shape = SHAPES["17K"]
    model = _model(shape)
    hooked = mygpt_to_hooked(model)
    tokens = to_hooked_tokens(quizzes)
    assert tokens.shape == (2, 404) and (tokens[:, 0] == 0).all() and torch.equal(tokens[:, 1:], quizzes[:, :-1])
    logits, cache = hooked.run_with_cache(tokens)
    L = shape[4] - 1
    for name in ("hook_embed", "hook_pos_embed", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
                 f"blocks.{L}.hook_mlp_out", f"blocks.{L}.hook_resid_post", "blocks.0.ln1.hook_normalized",
                 "blocks.1.mlp.hook_post", "ln_final.hook_normalized", "ln_final.hook_scale"):
        assert name in cache, name
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 2, 404, 404)
    assert torch.equal(cache["ln_final.hook_normalized"], cache[f"blocks.{L}.hook_resid_post"])
    assert (cache["ln_final.hook_scale"] == 1).all()
    # residual stream at the end, through the unembed, gives the logits
    W_U, b_U = hooked.W_U, hooked.b_U
    assert torch.allclose(cache[f"blocks.{L}.hook_resid_post"] @ W_U + b_U, logits, atol=1e-5)
    with torch.no_grad():
        assert (logits - model(quizzes)).abs().max().item() <= TOL
    # a hook on ln_final.hook_normalized acts on the output
    zeroed = hooked.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_normalized", lambda x, hook: x * 0)])
    assert torch.allclose(zeroed, b_U.expand_as(zeroed))


def test_attention_pattern_matches_mygpt(quizzes):
    """hook_pattern is the attention the reference computes (scale sqrt(dk))."""
    shape = SHAPES["4M-like dk<dv"]
    state = random_reference_state(*shape, seed=1)
    hooked = mygpt_to_hooked(mygpt_from_state_dict(state).eval())
    _, cache = hooked.run_with_cache(to_hooked_tokens(quizzes[:1]))
    x = cache["blocks.0.ln1.hook_normalized"] * state["trunk.0.f.0.f.0.weight"] + state["trunk.0.f.0.f.0.bias"]
    q = torch.einsum("ntc,hdc->nhtd", x, state["trunk.0.f.1.w_q"])
    k = torch.einsum("ntc,hdc->nhtd", x, state["trunk.0.f.1.w_k"])
    a = torch.einsum("nhtd,nhsd->nhts", q, k) / math.sqrt(shape[1])
    a = a.masked_fill(torch.ones(404, 404, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    assert (a - cache["blocks.0.attn.hook_pattern"]).abs().max().item() < 1e-5


def test_sae_transformer(quizzes):
    from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig

    model = _model(SHAPES["17K"])
    hooked = mygpt_to_hooked(model, sae=True)
    assert isinstance(hooked, HookedSAETransformer)
    assert isinstance(hooked.ln_final, IdentityLNFinal)
    assert max_logit_diff(model, hooked, quizzes) <= TOL
    cfg = StandardSAEConfig(d_in=32, d_sae=64)
    cfg.metadata.hook_name = "blocks.1.hook_mlp_out"
    sae = StandardSAE(cfg)
    sae.use_error_term = True  # SAE + its error = the original activation
    tokens = to_hooked_tokens(quizzes)
    logits, cache = hooked.run_with_cache_with_saes(tokens, saes=[sae])
    assert "blocks.1.hook_mlp_out.hook_sae_acts_post" in cache
    with torch.no_grad():
        assert (logits - model(quizzes)).abs().max().item() <= TOL


def test_tokens_validation():
    assert to_hooked_tokens(torch.arange(404) % 11).shape == (1, 404)
    with pytest.raises(HookedConversionError):
        to_hooked_tokens(torch.zeros(2, 404))
    with pytest.raises(HookedConversionError):
        to_hooked_tokens(torch.zeros(2, 405, dtype=torch.long))


def test_save_and_load_converted(tmp_path, quizzes):
    shape = SHAPES["4M-like dk<dv"]
    model = _model(shape)
    hooked = mygpt_to_hooked(model)
    out = save_converted(hooked, tmp_path / "gpt-0", extra={"model_id": 0, "accuracy": 0.5})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["d_head"] == 16 and config["n_ctx"] == N_CTX and config["dtype"] == "float32"
    assert config["culture"]["dim_keys"] == 8 and config["culture"]["gpt_config"]["dim_model"] == 64
    loaded = load_converted(out)
    assert loaded.accuracy == 0.5 and loaded.model_id == 0
    assert isinstance(loaded.ln_final, IdentityLNFinal)
    assert max_logit_diff(model, loaded, quizzes) <= TOL
    for k, v in hooked.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(hooked_to_mygpt(loaded).state_dict()["trunk.0.f.1.w_q"], model.state_dict()["trunk.0.f.1.w_q"])
    sae_model = load_converted(out, sae=True)
    assert type(sae_model).__name__ == "HookedSAETransformer"


def test_load_converted_errors(tmp_path):
    with pytest.raises(HookedConversionError, match="not found"):
        load_converted(tmp_path / "missing")
    d = tmp_path / "bad"
    d.mkdir()
    with pytest.raises(HookedConversionError, match="config.json not found"):
        load_converted(d)
    (d / "config.json").write_text("{not json")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HookedConversionError, match="JSON"):
        load_converted(d)
    save_converted(mygpt_to_hooked(_model(SHAPES["17K"])), d)
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HookedConversionError, match="safetensors"):
        load_converted(d)


def test_hooked_to_mygpt_refuses_what_mygpt_cannot_express():
    hooked = mygpt_to_hooked(_model(SHAPES["4M-like dk<dv"]))
    with torch.no_grad():
        hooked.blocks[0].attn.W_Q[..., 12] += 1.0  # padding column
    with pytest.raises(HookedConversionError, match="padding"):
        hooked_to_mygpt(hooked)
    hooked = mygpt_to_hooked(_model(SHAPES["17K"]))
    with torch.no_grad():
        hooked.blocks[1].attn.b_V += 0.5
    with pytest.raises(HookedConversionError, match="b_V"):
        hooked_to_mygpt(hooked)


def test_load_hooked_from_sources(tmp_path, monkeypatch):
    root = make_local_source(tmp_path, SHAPES["17K"], n_models=2)
    one = load_hooked(1, source=root)
    assert not isinstance(one, list) and one.model_id == 1 and one.accuracy == 0.625
    both = load_hooked([0, 1], source=str(root))
    assert isinstance(both, list) and [h.model_id for h in both] == [0, 1]
    monkeypatch.setattr(sources, "ZOO_DIR", make_zoo(tmp_path, SHAPES["17K"], n_models=1))
    sae = load_hooked([0], source="bundled", sae=True)
    assert type(sae[0]).__name__ == "HookedSAETransformer"
    with pytest.raises(sources.SourceError, match="models there: 0, 1"):
        load_hooked(4, source=root)
