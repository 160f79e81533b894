"""Hook names and where they sit in MyGPT: the one map.

Names follow TransformerLens (``utils.get_act_name``): ``hook_embed``,
``blocks.3.hook_resid_pre``, ``blocks.3.attn.hook_z``, ``blocks.3.mlp.hook_post``...
:func:`act_name` builds them (every module that needs a hook name calls it);
:func:`hook_layer` reads the block back.

MyGPT (culture.mygpt) serves some of these hook points itself, without a
TransformerLens conversion (:data:`NATIVE_KINDS`): :func:`hook_site` says which
module and which side of it (input or output) carries the activation, and
:func:`add_hook` registers a function there. The TransformerLens bridge
(culture.hooked) gives the same activations at the same names, exactly.

Nothing heavy is imported here (no torch, no TransformerLens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from culture.errors import CultureError

#: activations inside the attention of a block (``blocks.L.attn.hook_<kind>``)
ATTN_KINDS = ("q", "k", "v", "z", "result", "pattern", "attn_scores", "rot_q", "rot_k")
#: activations inside the MLP of a block (``blocks.L.mlp.hook_<kind>``)
MLP_KINDS = ("pre", "post", "mid", "pre_linear")
#: hook points MyGPT serves natively: kind -> (which block, input or output, sub-module)
_NATIVE_SITES = {
    "resid_pre": ("attn", "input", None),
    "resid_mid": ("attn", "output", None),
    "resid_post": ("mlp", "output", None),
    "attn_out": ("attn", "output", "attn"),
    "mlp_out": ("mlp", "output", "mlp"),  # MLPBlock.forward calls f.f: the residual branch
    "pre": ("mlp", "output", "up"),
    "post": ("mlp", "output", "relu"),
}
#: the kinds :func:`hook_site` maps to MyGPT modules
NATIVE_KINDS = tuple(_NATIVE_SITES)
#: kinds whose activation is a residual-stream vector (width d_model)
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "embed", "pos_embed")

_NAME_RE = re.compile(r"^(?:blocks\.(\d+)\.)?(?:(attn|mlp)\.)?hook_(\w+)$")


class HookNameError(CultureError, ValueError):
    """A hook name that does not fit the model (one-line message)."""


def act_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of activation ``kind`` in block ``layer``
    (None: a hook outside the blocks, ``embed`` / ``pos_embed``): the
    convention of ``transformer_lens.utils.get_act_name`` for these kinds.

    >>> act_name("resid_pre", 3), act_name("z", 0), act_name("post", 2), act_name("embed")
    ('blocks.3.hook_resid_pre', 'blocks.0.attn.hook_z', 'blocks.2.mlp.hook_post', 'hook_embed')
    """
    if layer is None:
        return f"hook_{kind}"
    sub = "attn." if kind in ATTN_KINDS else "mlp." if kind in MLP_KINDS else ""
    return f"blocks.{int(layer)}.{sub}hook_{kind}"


def parse_act_name(name: str) -> tuple[str, int | None]:
    """``(kind, layer)`` of a hook name built by :func:`act_name` (layer None
    outside the blocks); HookNameError for anything else."""
    m = _NAME_RE.match(name)
    if m is None or act_name(m.group(3), None if m.group(1) is None else int(m.group(1))) != name:
        raise HookNameError(f"{name!r} is not a hook name (e.g. {act_name('resid_post', 0)})")
    return m.group(3), None if m.group(1) is None else int(m.group(1))


def hook_layer(name: str) -> int | None:
    """The block index of ``blocks.L.…`` (None for hook_embed, hook_pos_embed, ln_final…)."""
    m = re.match(r"^blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def is_native(name: str, n_layers: int | None = None) -> bool:
    """Whether MyGPT serves ``name`` itself (:func:`hook_site`), in a model of
    ``n_layers`` blocks when given."""
    try:
        kind, layer = parse_act_name(name)
    except HookNameError:
        return False
    return kind in _NATIVE_SITES and layer is not None and (n_layers is None or layer < n_layers)


@dataclass(frozen=True)
class HookSite:
    """Where a hook point sits in a MyGPT: ``module`` and whether the
    activation is its ``"input"`` (first positional argument) or its ``"output"``."""

    module: Any
    where: str


def hook_site(model, name: str) -> HookSite:
    """The module of MyGPT ``model`` carrying activation ``name`` (one of
    :data:`NATIVE_KINDS` in a block the model has), and on which side."""
    kind, layer = parse_act_name(name)
    n_layers = model.config.nb_blocks
    if kind not in _NATIVE_SITES or layer is None:
        raise HookNameError(f"{name} is not a hook point MyGPT serves natively "
                            f"({', '.join(act_name(k, 0) for k in NATIVE_KINDS)}, ...)")
    if not 0 <= layer < n_layers:
        raise HookNameError(f"{name}: the model has {n_layers} blocks (0..{n_layers - 1})")
    block_kind, where, sub = _NATIVE_SITES[kind]
    block = model.attention_blocks[layer] if block_kind == "attn" else model.mlp_blocks[layer]
    module = {None: lambda: block, "attn": lambda: block.attn, "mlp": lambda: block.f.f,
              "up": lambda: block.up, "relu": lambda: block.f.f[3]}[sub]()
    return HookSite(module, where)


def add_hook(model, name: str, fn: Callable):
    """Register ``fn(activation)`` at hook point ``name`` of MyGPT ``model``;
    when ``fn`` returns a tensor it replaces the activation (None: unchanged).
    Returns the torch hook handle (``.remove()`` it)."""
    site = hook_site(model, name)
    if site.where == "input":
        def pre(_module, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])
        return site.module.register_forward_pre_hook(pre)
    return site.module.register_forward_hook(lambda _module, _args, out: fn(out))


def sae_hook_name(sae) -> str | None:
    """The hook an SAELens SAE reads (``cfg.metadata.hook_name`` in SAELens 6,
    ``cfg.hook_name`` before), or None when its config names none."""
    cfg = getattr(sae, "cfg", None)
    meta = getattr(cfg, "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    name = name or getattr(cfg, "hook_name", None)
    return str(name) if name else None


__all__ = ["act_name", "parse_act_name", "hook_layer", "is_native", "hook_site", "add_hook", "HookSite",
           "HookNameError", "sae_hook_name", "NATIVE_KINDS", "ATTN_KINDS", "MLP_KINDS", "RESIDUAL_KINDS"]
