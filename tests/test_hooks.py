"""culture.hooks: hook names follow TransformerLens's get_act_name, and the
MyGPT hook sites give the activations TransformerLens caches at those names."""

import pytest
import torch

from culture.hooks import (
    NATIVE_KINDS,
    HookNameError,
    act_name,
    add_hook,
    hook_layer,
    hook_site,
    is_native,
    parse_act_name,
    sae_hook_name,
)
from culture.mygpt import mygpt_from_state_dict
from tests.helpers_sources import random_quizzes
from tests.reference_forward import random_reference_state

KINDS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "q_input", "k_input", "v_input",
         "q", "k", "v", "z", "result", "pattern", "attn_scores", "pre", "post"]


def test_names_follow_transformer_lens():
    utils = pytest.importorskip("transformer_lens.utils")
    for kind in KINDS:
        for layer in (0, 7):
            name = act_name(kind, layer)
            assert name == utils.get_act_name(kind, layer)
            assert parse_act_name(name) == (kind, layer) and hook_layer(name) == layer
    for kind in ("embed", "pos_embed"):
        assert act_name(kind) == utils.get_act_name(kind) and parse_act_name(act_name(kind)) == (kind, None)
    for bad in ("blocks.x.hook_resid_pre", "blocks.1.mlp.hook_resid_pre", "resid_pre", "blocks.01.hook_z"):
        with pytest.raises(HookNameError):
            parse_act_name(bad)
    assert is_native("blocks.1.hook_mlp_out", 2) and not is_native("blocks.2.hook_mlp_out", 2)
    assert not is_native("blocks.0.attn.hook_z") and not is_native("hook_embed")


def test_native_sites_match_the_hooked_cache():
    from culture.hooked import mygpt_to_hooked, to_hooked_tokens

    model = mygpt_from_state_dict(random_reference_state(32, 16, 48, 2, 2, seed=3)).eval()
    quizzes = random_quizzes(3, seed=1)
    names = [act_name(k, layer) for k in NATIVE_KINDS for layer in range(2)]
    got, handles = {}, []
    for n in names:
        handles.append(add_hook(model, n, lambda act, n=n: got.__setitem__(n, act.detach().clone())))
    with torch.no_grad():
        model(quizzes)
    for h in handles:
        h.remove()
    _, cache = mygpt_to_hooked(model).run_with_cache(to_hooked_tokens(quizzes), names_filter=names)
    for n in names:
        torch.testing.assert_close(got[n], cache[n], rtol=0, atol=1e-5, msg=n)
    with pytest.raises(HookNameError, match="2 blocks"):
        hook_site(model, "blocks.2.hook_resid_pre")
    with pytest.raises(HookNameError, match="natively"):
        hook_site(model, "blocks.0.attn.hook_z")


def test_add_hook_replaces_an_input_activation():
    model = mygpt_from_state_dict(random_reference_state(32, 16, 48, 2, 2, seed=3)).eval()
    quizzes = random_quizzes(2, seed=2)
    with torch.no_grad():
        h = add_hook(model, act_name("resid_pre", 1), lambda act: torch.zeros_like(act))
        zeroed = model(quizzes)
        h.remove()
        plain = model(quizzes)
    assert not torch.allclose(zeroed, plain)
    # with block 1's input zeroed, the logits are those of block 1 alone on zeros
    assert torch.allclose(zeroed[0, 5], zeroed[1, 5])


def test_sae_hook_name():
    class Cfg:
        pass

    class SAE:
        cfg = Cfg()

    sae = SAE()
    assert sae_hook_name(sae) is None
    sae.cfg.hook_name = "blocks.1.hook_mlp_out"
    assert sae_hook_name(sae) == "blocks.1.hook_mlp_out"
    sae.cfg.metadata = Cfg()
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    assert sae_hook_name(sae) == "blocks.0.hook_resid_post"
