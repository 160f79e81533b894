"""Shared pieces of culture.sae: errors, defaults, hook-point helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from culture.errors import CultureError
from culture.hooks import RESIDUAL_KINDS, HookNameError, act_name, hook_layer, parse_act_name

if TYPE_CHECKING:
    import torch

#: hook point of the earlier toolkit's SAE (REFERENCE.md section 9): blocks.8.hook_mlp_out
DEFAULT_HOOK = act_name("mlp_out", 8)  # the published SAEs' hook (37M models, 12 blocks)


def default_hook(hooked) -> str:
    """The hook ``sae train`` uses when none is given: the middle block's MLP
    output of this model (``blocks.2.hook_mlp_out`` for the 4-block bundled models)."""
    return act_name("mlp_out", hooked.cfg.n_layers // 2)
#: hub repo of the earlier toolkit's SAEs
DEFAULT_SAE_REPO = "tommyp111/culture-sae"
#: folder of the published SAE in that repo
DEFAULT_SAE_SUBFOLDER = "gpt-0/blocks_8_mlp_out"
#: folder of the bundled zoo holding its SAEs (``--sae bundled``), laid out as on the hub: gpt-K/<hook>
BUNDLED_SAE_FOLDER = "sae"
#: file names of SAELens's format
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"

class SAEError(CultureError, ValueError):
    """Bad SAE input: missing directory, hook not in the model, feature id out of
    range, bad steering syntax, a training failure the user can fix..."""


def hook_dirname(hook_name: str) -> str:
    """The earlier toolkit's folder name for a hook: ``blocks.8.hook_mlp_out`` ->
    ``blocks_8_mlp_out``."""
    return hook_name.replace("hook_", "").replace(".", "_")


def check_hook(hooked, hook_name: str) -> str:
    """``hook_name`` if the model has that hook point, else a one-line SAEError
    naming a few valid ones."""
    if hook_name in hooked.hook_dict:
        return hook_name
    names = [n for n in hooked.hook_dict if "hook_sae" not in n]
    layer = hook_layer(hook_name)
    n_layers = hooked.cfg.n_layers
    hint = ""
    if layer is not None and layer >= n_layers:
        hint = f" (the model has {n_layers} blocks: 0..{n_layers - 1})"
    examples = [n for n in names if _kind(n) in ("mlp_out", "attn_out", "resid_post")][:3]
    raise SAEError(f"hook {hook_name!r} is not a hook point of the model{hint}; e.g. {', '.join(examples)}")


def _kind(hook_name: str) -> str | None:
    """The activation kind of a hook name (``mlp_out``, ``z``...; None for other names)."""
    try:
        return parse_act_name(hook_name)[0]
    except HookNameError:
        return None


def stop_layer(hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still computes ``hook_name`` (None: run everything)."""
    layer = hook_layer(hook_name)
    return None if layer is None else layer + 1


def ones_mask(tokens: torch.Tensor) -> torch.Tensor:
    """An explicit all-ones attention mask (pad "0" is also the empty cell)."""
    import torch

    return torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)


def hook_activations(hooked, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activations of ``tokens`` (hooked input, BOS first) at ``hook_name``, the
    forward stopped after the hook's block."""
    import torch

    with torch.no_grad():
        _, cache = hooked.run_with_cache(tokens, names_filter=[hook_name], stop_at_layer=stop_layer(hook_name),
                                         attention_mask=ones_mask(tokens))
    return cache[hook_name]


def activation_size(hooked, hook_name: str, head_index: int | None = None) -> int:
    """The width of one position's activation at ``hook_name`` (heads flattened
    for hook_z-like hooks, one head with ``head_index``)."""
    import torch

    check_hook(hooked, hook_name)
    tokens = torch.zeros(1, 2, dtype=torch.long, device=hooked.cfg.device)
    act = hook_activations(hooked, tokens, hook_name)
    if act.dim() == 4:
        return int(act.shape[-1]) if head_index is not None else int(act.shape[-2] * act.shape[-1])
    return int(act.shape[-1])


def ensure_sae_model(hooked):
    """``hooked`` if it is a HookedSAETransformer, else an equivalent one (same
    weights, converted through MyGPT)."""
    from sae_lens import HookedSAETransformer

    if isinstance(hooked, HookedSAETransformer):
        return hooked
    from culture.hooked import hooked_to_mygpt, mygpt_to_hooked

    out = mygpt_to_hooked(hooked_to_mygpt(hooked), sae=True)
    for attr in ("accuracy", "model_id"):
        if hasattr(hooked, attr):
            setattr(out, attr, getattr(hooked, attr))
    return out


def output_directions(hooked, hook_name: str) -> torch.Tensor | None:
    """A matrix M (d_in, d_model) such that a vector v written at ``hook_name``
    adds v @ M to the residual stream, or None when the hook does not write
    linearly into the residual stream (q, k, pre-activations...).

    resid / attn_out / mlp_out / embeddings: identity; ``mlp.hook_post``: W_out;
    ``attn.hook_z`` (heads flattened): W_O stacked."""
    import torch

    W = None
    kind, layer = _kind(hook_name), hook_layer(hook_name)
    d_model = hooked.cfg.d_model
    if kind in RESIDUAL_KINDS:
        W = torch.eye(d_model, device=hooked.W_U.device, dtype=hooked.W_U.dtype)
    elif kind == "post" and layer is not None:
        W = hooked.blocks[layer].mlp.W_out
    elif kind == "z" and layer is not None:
        W_O = hooked.blocks[layer].attn.W_O  # (heads, d_head, d_model)
        W = W_O.reshape(-1, d_model)
    return None if W is None else W.detach()
