"""TransformerLens bridge: a culture GPT as a ``HookedTransformer`` (released
transformer-lens 3.x from PyPI, no fork).

    >>> from culture.hooked import load_hooked, to_hooked_tokens
    >>> hooked = load_hooked(0, source="bundled")
    >>> logits, cache = hooked.run_with_cache(to_hooked_tokens(quizzes))
    >>> cache["blocks.0.attn.hook_pattern"].shape        # (n, heads, 404, 404)

Conventions (REFERENCE.md section 4):

* Input: MyGPT shifts its input right by one inside (token 0 first, last token
  dropped). TransformerLens does not, so a quiz is fed as ``BOS 0 + quiz[:-1]``
  (:func:`to_hooked_tokens`); position t then predicts quiz token t, exactly as
  ``MyGPT(quiz)[:, t]``. :func:`hooked_logits` does both steps.
* No final LayerNorm: ``ln_final`` is :class:`IdentityLNFinal`, which returns its
  input unchanged but keeps the ``ln_final.hook_scale`` (always 1) and
  ``ln_final.hook_normalized`` hook points, so caches look like any TL model's.
* Sinusoidal positions are the ``W_pos`` table (405 rows, n_ctx 405).
* All biases of attention (b_Q, b_K, b_V, b_O) are zero; MLP and unembed keep theirs.

Heads whose key size differs from their value size (presets 4M, 122M: dim_keys
!= dim_model // nb_heads): TransformerLens has one ``d_head`` for Q, K and V.
We use ``d_head = max(dim_keys, dim_value)`` and zero-pad the smaller side:
padded Q/K columns add 0 to every q.k, padded V columns give z = 0 there and
the matching (zero) rows of W_O add nothing to the output. The attention scale
is set explicitly, ``cfg.attn_scale = sqrt(dim_keys)``, so the scores stay
q.k / sqrt(dim_keys) as in the reference whatever d_head is. The conversion is
therefore exact (float rounding only). Caveat: ``hook_q``/``hook_k`` (or
``hook_v``/``hook_z``) carry the zero padding in their last dimension.

Do not run TransformerLens weight processing that folds LayerNorms into the
model (``load_and_process_state_dict(fold_ln=True)``, ``process_weights_``):
it replaces ``ln_final`` by a real LayerNormPre, which this model does not
have. Likewise ``ActivationCache.apply_ln_to_stack`` at the final layer centres
the stack; use ``apply_ln=False`` there (no final LayerNorm to apply).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from culture.errors import CultureError, first_sentence
from culture.mygpt import GPTConfig, MyGPT, sinusoidal_positions
from culture.quiz import QUIZ_LEN
from culture.sources import DEFAULT_SOURCE

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer, HookedTransformerConfig

#: TransformerLens context: BOS + 404 quiz tokens (the last quiz token is never input).
N_CTX = QUIZ_LEN + 1
BOS = 0
CONVERTED_FORMAT = "culture-interp/hooked-transformer-v1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class HookedConversionError(CultureError, ValueError):
    """A model cannot be converted (to or from TransformerLens), or a converted
    directory is missing or unreadable."""


# --------------------------------------------------------------------- config


def hooked_config(cfg: GPTConfig, device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> HookedTransformerConfig:
    """The HookedTransformerConfig of a culture GPT (device None -> "cpu")."""
    from transformer_lens import HookedTransformerConfig

    d_head = max(cfg.dim_keys, cfg.dim_value)
    return HookedTransformerConfig(
        model_name="culture-gpt",
        d_model=cfg.dim_model,
        d_head=d_head,
        n_heads=cfg.nb_heads,
        n_layers=cfg.nb_blocks,
        d_mlp=cfg.dim_hidden,
        n_ctx=N_CTX,
        d_vocab=cfg.vocabulary_size,
        d_vocab_out=cfg.vocabulary_size,
        act_fn="relu",
        normalization_type="LN",
        positional_embedding_type="standard",
        default_prepend_bos=False,
        eps=1e-5,
        use_attn_scale=True,
        # scores = q.k / sqrt(dim_keys) even when d_head > dim_keys (see module doc)
        attn_scale=float(math.sqrt(cfg.dim_keys)),
        attention_dir="causal",
        original_architecture=None,
        tokenizer_name=None,
        init_weights=False,
        device=str(device) if device is not None else "cpu",
        dtype=dtype,
    )


def gpt_config_from_hooked(cfg: HookedTransformerConfig) -> GPTConfig:
    """The GPTConfig a HookedTransformerConfig made by :func:`hooked_config` encodes
    (dim_keys from the attention scale)."""
    if not cfg.use_attn_scale:
        raise HookedConversionError("the TransformerLens model does not scale attention: not a culture GPT")
    dim_keys = int(round(float(cfg.attn_scale) ** 2))
    if cfg.d_model % cfg.n_heads or dim_keys > cfg.d_head or cfg.d_model // cfg.n_heads > cfg.d_head:
        raise HookedConversionError(
            f"TransformerLens config (d_model {cfg.d_model}, n_heads {cfg.n_heads}, d_head {cfg.d_head}, "
            f"attn_scale {cfg.attn_scale}) is not the layout of a culture GPT")
    return GPTConfig(cfg.d_model, dim_keys, cfg.d_mlp, cfg.n_heads, cfg.n_layers,
                     vocabulary_size=cfg.d_vocab)


# --------------------------------------------------------------- ln_final


class IdentityLNFinal(nn.Module):
    """Stands in for ``ln_final`` (the culture GPT has no final LayerNorm): returns
    its input unchanged, through the usual ``hook_scale`` (ones, (batch, pos, 1))
    and ``hook_normalized`` hook points."""

    def __init__(self):
        super().__init__()
        from transformer_lens.hook_points import HookPoint

        self.hook_scale = HookPoint()  # [batch, pos, 1], always 1
        self.hook_normalized = HookPoint()  # [batch, pos, d_model], the residual itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.hook_scale(torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device))
        return self.hook_normalized(x)


# ------------------------------------------------------------- speed


def _hooked(point) -> bool:
    """Whether a HookPoint has a hook on it now (run_with_cache, hooks(), add_hook)."""
    return bool(point._forward_hooks or point._forward_pre_hooks or point._backward_hooks)


def _fused_attention_forward(attn):
    """A forward for TransformerLens attention module ``attn`` that computes
    softmax(q.k / attn_scale) v with ``F.scaled_dot_product_attention`` (one
    fused kernel) instead of TransformerLens's explicit scores, mask, softmax
    and NaN filter -- 4-7x faster on the culture shapes, whose 405-token
    attention dominates a forward. Written here (TransformerLens has no fused
    path). Every hook point keeps its meaning: ``hook_q``/``hook_k``/``hook_v``
    and ``hook_z`` run as usual; when ``hook_attn_scores`` or ``hook_pattern``
    has a hook (``run_with_cache``, ``hooks()``), when a padding mask or a
    multi-token KV-cache step needs TransformerLens's masking, or when the
    config asks for something else (``use_attn_result``...), TransformerLens's
    own forward runs. Results agree to float rounding (tests/test_hooked.py)."""
    original = attn.forward
    cfg = attn.cfg

    def forward(query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
                attention_mask=None, position_bias=None):
        if (not _plain_config(cfg) or _hooked(attn.hook_attn_scores) or _hooked(attn.hook_pattern)
                or additive_attention_mask is not None
                or position_bias is not None or query_input.dim() != 3
                or (attention_mask is not None and not bool(attention_mask.all()))):
            return original(query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                            additive_attention_mask=additive_attention_mask, attention_mask=attention_mask,
                            position_bias=position_bias)
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
        if past_kv_cache_entry is not None:
            offset = past_kv_cache_entry.past_keys.size(1)
            if offset and q.shape[1] != 1:  # several new tokens after a cache: let TransformerLens mask them
                return original(query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                                attention_mask=attention_mask)
            k, v = past_kv_cache_entry.append(k, v)
            causal = offset == 0
        else:
            causal = True
        # (batch, pos, head, d_head) -> (batch, head, pos, d_head)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal and q.shape[1] > 1, scale=1.0 / float(attn.attn_scale))
        z = attn.hook_z(z.transpose(1, 2))
        w = attn.W_O.reshape(cfg.n_heads * cfg.d_head, cfg.d_model)
        return F.linear(z.reshape(z.shape[0], z.shape[1], cfg.n_heads * cfg.d_head), w.t(), attn.b_O)

    return forward


def _layer_norm_forward(ln):
    """TransformerLens's LayerNorm through ``F.layer_norm`` (one kernel) while
    its ``hook_scale`` / ``hook_normalized`` have no hook; its own forward otherwise."""
    original = ln.forward

    def forward(x):
        if (_hooked(ln.hook_scale) or _hooked(ln.hook_normalized) or x.dim() != 3
                or x.dtype not in (torch.float32, torch.float64) or x.dtype != ln.w.dtype):
            return original(x)
        return F.layer_norm(x, (x.shape[-1],), ln.w, ln.b, ln.eps)

    return forward


def _plain_config(cfg) -> bool:
    """The configuration the fused path computes exactly (read at each call:
    ``set_use_attn_result(True)`` and the like switch it off)."""
    return not (cfg.use_attn_result or cfg.use_split_qkv_input or cfg.use_attn_in
                or cfg.positional_embedding_type != "standard" or getattr(cfg, "use_attention_sinks", False)
                or getattr(cfg, "load_in_4bit", False) or getattr(cfg, "use_qk_norm", False)
                or getattr(cfg, "clip_qkv", None) is not None or getattr(cfg, "use_logn_attn", False)
                or cfg.original_architecture is not None)


def _speed_up(model) -> None:
    """Fused attention and LayerNorm in every block of a culture HookedTransformer
    (see :func:`_fused_attention_forward`)."""
    for block in model.blocks:
        block.attn.forward = _fused_attention_forward(block.attn)
        for ln in (block.ln1, block.ln2):
            if type(ln).__name__ == "LayerNorm":
                ln.forward = _layer_norm_forward(ln)


def _empty_hooked(cfg: HookedTransformerConfig, sae: bool, fused: bool = True) -> HookedTransformer:
    """A HookedTransformer (or HookedSAETransformer) shell with identity ln_final."""
    import warnings

    if sae:
        from sae_lens import HookedSAETransformer as cls
    else:
        from transformer_lens import HookedTransformer as cls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "HookedTransformer is deprecated" (TL 3.x)
        model = cls(cfg)
    model.ln_final = IdentityLNFinal().to(cfg.device)
    model.setup()  # rebuild mod_dict / hook_dict with the new hook points
    if fused:
        _speed_up(model)
    return model


# ------------------------------------------------------------- conversion


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(t, (0, size - t.shape[-1])) if t.shape[-1] < size else t


def _block_tensors(attn_block, mlp_block) -> dict[str, tuple[torch.Tensor, bool]]:
    """The one map between the two namings of a block's LayerNorms and MLP:
    TransformerLens parameter (after ``blocks.L.``) -> (MyGPT tensor, stored
    transposed). The attention weights need reshaping and padding: see
    :func:`hooked_state_dict` and :func:`hooked_to_mygpt`."""
    a, m = attn_block, mlp_block
    return {"ln1.w": (a.ln.weight, False), "ln1.b": (a.ln.bias, False),
            "ln2.w": (m.ln.weight, False), "ln2.b": (m.ln.bias, False),
            "mlp.W_in": (m.up.weight, True), "mlp.b_in": (m.up.bias, False),
            "mlp.W_out": (m.down.weight, True), "mlp.b_out": (m.down.bias, False)}


def _blocks(model: MyGPT):
    """(layer, "blocks.L." prefix, attention block, MLP block) of each block of ``model``."""
    for layer, (a, m) in enumerate(zip(model.attention_blocks, model.mlp_blocks)):
        yield layer, f"blocks.{layer}.", a, m


def hooked_state_dict(model: MyGPT) -> dict[str, torch.Tensor]:
    """TransformerLens parameters (no buffers) of a MyGPT, REFERENCE section 4."""
    cfg = model.config
    h, dk, dv, D = cfg.nb_heads, cfg.dim_keys, cfg.dim_value, cfg.dim_model
    d_head = max(dk, dv)
    ref = model.token_embedding.weight
    sd: dict[str, torch.Tensor] = {
        "embed.W_E": ref.detach().clone(),
        "pos_embed.W_pos": sinusoidal_positions(N_CTX, D, cfg.len_max).to(ref),
    }
    for _layer, p, a, m in _blocks(model):
        for name, (t, transposed) in _block_tensors(a, m).items():
            sd[p + name] = t.detach().t().contiguous() if transposed else t.detach().clone()
        att = a.attn
        # (heads, d, D) -> (heads, D, d), zero-padded to d_head
        sd[p + "attn.W_Q"] = _pad_last(att.w_q.detach().transpose(1, 2), d_head).contiguous()
        sd[p + "attn.W_K"] = _pad_last(att.w_k.detach().transpose(1, 2), d_head).contiguous()
        sd[p + "attn.W_V"] = _pad_last(att.w_v.detach().transpose(1, 2), d_head).contiguous()
        w_o = att.w_o.detach().reshape(h, dv, D)
        sd[p + "attn.W_O"] = F.pad(w_o, (0, 0, 0, d_head - dv)).contiguous() if d_head > dv else w_o.clone()
        for b in ("b_Q", "b_K", "b_V"):
            sd[p + "attn." + b] = torch.zeros(h, d_head).to(ref)
        sd[p + "attn.b_O"] = torch.zeros(D).to(ref)
    sd["unembed.W_U"] = model.unembed.weight.detach().t().contiguous()
    sd["unembed.b_U"] = model.unembed.bias.detach().clone()
    return sd


def _load_hooked_params(hooked: HookedTransformer, params: dict[str, torch.Tensor]) -> None:
    expected = hooked.state_dict()
    buffers = {k for k in expected if k.endswith(("attn.mask", "attn.IGNORE"))}
    missing = sorted(set(expected) - set(params) - buffers)
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise HookedConversionError(f"weights do not match the TransformerLens model ({detail})")
    for k, v in params.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise HookedConversionError(
                f"weight shape mismatch at {k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}")
    hooked.load_state_dict(params, strict=False)


def mygpt_to_hooked(model: MyGPT, sae: bool = False, fused: bool = True) -> HookedTransformer:
    """The exact TransformerLens equivalent of ``model`` (same device and dtype),
    a ``HookedSAETransformer`` when ``sae`` (SAELens), in eval mode. ``fused``:
    attention and LayerNorm run as fused kernels while their inner hooks are
    unused (see :func:`_fused_attention_forward`); False keeps TransformerLens's
    own computation everywhere."""
    ref = model.token_embedding.weight
    cfg = hooked_config(model.config, device=ref.device, dtype=ref.dtype)
    hooked = _empty_hooked(cfg, sae, fused)
    _load_hooked_params(hooked, hooked_state_dict(model))
    return hooked.eval()


def hooked_to_mygpt(hooked: HookedTransformer, atol: float = 1e-6) -> MyGPT:
    """The inverse of :func:`mygpt_to_hooked`: a MyGPT (eval mode) with the same
    function. Raises HookedConversionError when the TransformerLens model holds
    something MyGPT cannot express (non-zero attention biases or padding, other
    positions, a real final LayerNorm)."""
    cfg = gpt_config_from_hooked(hooked.cfg)
    if not isinstance(hooked.ln_final, IdentityLNFinal):
        raise HookedConversionError("the TransformerLens model has a final LayerNorm; culture GPTs have none "
                                    "(was fold_ln / process_weights applied?)")
    sd = {k: v.detach() for k, v in hooked.state_dict().items()}
    h, dk, dv, D = cfg.nb_heads, cfg.dim_keys, cfg.dim_value, cfg.dim_model

    def must_be_zero(t: torch.Tensor, what: str):
        if t.numel() and t.abs().max().item() > atol:
            raise HookedConversionError(f"cannot convert back to MyGPT: {what} is not zero")

    W_pos = sd["pos_embed.W_pos"]
    table = sinusoidal_positions(W_pos.shape[0], D, cfg.len_max).to(W_pos)
    if (W_pos - table).abs().max().item() > 1e-4:
        raise HookedConversionError("cannot convert back to MyGPT: W_pos is not the sinusoidal table")
    model = MyGPT(cfg)
    written: list[torch.Tensor] = []

    def put(t: torch.Tensor, value: torch.Tensor) -> None:
        t.copy_(value)
        written.append(t)

    with torch.no_grad():
        put(model.token_embedding.weight, sd["embed.W_E"])
        for _layer, p, a, m in _blocks(model):
            for b in ("b_Q", "b_K", "b_V", "b_O"):
                must_be_zero(sd[p + "attn." + b], f"{p}attn.{b}")
            W_Q, W_K, W_V, W_O = (sd[p + "attn." + n] for n in ("W_Q", "W_K", "W_V", "W_O"))
            must_be_zero(W_Q[..., dk:], f"{p}attn.W_Q padding")
            must_be_zero(W_K[..., dk:], f"{p}attn.W_K padding")
            must_be_zero(W_V[..., dv:], f"{p}attn.W_V padding")
            must_be_zero(W_O[:, dv:], f"{p}attn.W_O padding")
            for name, (t, transposed) in _block_tensors(a, m).items():
                put(t, sd[p + name].t() if transposed else sd[p + name])
            put(a.attn.w_q, W_Q[..., :dk].transpose(1, 2))
            put(a.attn.w_k, W_K[..., :dk].transpose(1, 2))
            put(a.attn.w_v, W_V[..., :dv].transpose(1, 2))
            put(a.attn.w_o, W_O[:, :dv].reshape(h * dv, D))
        put(model.unembed.weight, sd["unembed.W_U"].t())
        put(model.unembed.bias, sd["unembed.b_U"])
    assert {id(t) for t in written} == {id(t) for t in model.parameters()}, "a MyGPT parameter was not converted"
    return model.to(device=W_pos.device, dtype=W_pos.dtype).eval()


# ------------------------------------------------------------------ inputs


def to_hooked_tokens(quizzes: torch.Tensor) -> torch.Tensor:
    """TransformerLens input for quizzes (n, T): ``BOS 0 + quiz[:-1]`` (n, T), the
    shift MyGPT applies inside. A single quiz (T,) becomes (1, T)."""
    quizzes = torch.as_tensor(quizzes)
    if quizzes.dtype.is_floating_point or quizzes.dtype == torch.bool:
        raise HookedConversionError(f"quizzes must be integer tokens, got {quizzes.dtype}")
    if quizzes.dim() == 1:
        quizzes = quizzes.unsqueeze(0)
    if quizzes.dim() != 2 or quizzes.shape[1] > QUIZ_LEN:
        raise HookedConversionError(f"quizzes must have shape (n, <= {QUIZ_LEN}), got {tuple(quizzes.shape)}")
    return F.pad(quizzes.long(), (1, -1), value=BOS)


def hooked_logits(hooked: HookedTransformer, quizzes: torch.Tensor) -> torch.Tensor:
    """Logits (n, T, vocab) aligned with ``MyGPT(quizzes)``: position t predicts quiz token t."""
    device = hooked.cfg.device
    with torch.no_grad():
        return hooked(to_hooked_tokens(quizzes).to(device), return_type="logits")


# ------------------------------------------------------------------ loading


def load_hooked(models: int | Sequence[int] | None, source=DEFAULT_SOURCE, sae: bool = False, device="cpu"):
    """TransformerLens model(s) of a source: one HookedTransformer for an int id,
    a list for a sequence of ids (HookedSAETransformer with ``sae``). The
    checkpoint accuracy is kept as ``.accuracy`` and the id as ``.model_id``.
    ``models=None``: every model of the source (a list)."""
    import operator

    from culture.sources import as_model_ids, resolve_source

    src = resolve_source(source)
    try:
        ids, single = [operator.index(models)], True
    except TypeError:
        ids, single = (src.model_ids() if models is None else as_model_ids(models)), False
    for k in ids:  # every id checked before any loading
        src.check_model_id(k)
    out = []
    for k in ids:  # one MyGPT in memory at a time
        model, accuracy = src.load_model(k, device=device)
        hooked = mygpt_to_hooked(model, sae=sae)
        hooked.accuracy = accuracy
        hooked.model_id = k
        out.append(hooked)
        del model
    return out[0] if single else out


# ------------------------------------------------------- saved conversions


def _json_config(cfg: HookedTransformerConfig) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if k == "device":
            continue  # chosen when loading
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif hasattr(v, "item") and not isinstance(v, torch.Tensor):
            v = v.item()  # numpy scalars
        try:
            json.dumps(v)
        except TypeError:
            v = repr(v)
        out[k] = v
    return out


def save_converted(hooked: HookedTransformer, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``directory/model.safetensors`` (TransformerLens parameters) and
    ``directory/config.json`` (HookedTransformerConfig fields + a ``culture``
    section: original GPTConfig, dim_keys, format, ``extra``), atomically."""
    from safetensors.torch import save_file

    from culture.io import atomic_path, atomic_write_json

    directory = Path(directory)
    cfg = gpt_config_from_hooked(hooked.cfg)
    params = {k: v.detach().cpu().contiguous().clone() for k, v in hooked.state_dict().items()
              if not k.endswith(("attn.mask", "attn.IGNORE"))}
    config = _json_config(hooked.cfg)
    config["culture"] = {
        "format": CONVERTED_FORMAT,
        "gpt_config": cfg.to_dict(),
        "dim_keys": cfg.dim_keys,
        "dim_value": cfg.dim_value,
        "bos_token": BOS,
        "final_layer_norm": False,
        **(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(params, str(tmp), metadata={"format": "pt", "culture_format": CONVERTED_FORMAT})
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def load_converted(directory: str | os.PathLike, device="cpu", sae: bool = False) -> HookedTransformer:
    """The HookedTransformer (HookedSAETransformer with ``sae``) saved by
    :func:`save_converted` / ``culture-interp convert``. Its ``culture`` config
    section is kept as ``.culture_info``."""
    import dataclasses

    from transformer_lens import HookedTransformerConfig

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise HookedConversionError(f"converted model directory not found: {directory}")
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise HookedConversionError(f"{p} not found (not a directory written by culture-interp convert)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise HookedConversionError(f"{cfg_path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("culture", {}).get("format") != CONVERTED_FORMAT:
        raise HookedConversionError(f"{cfg_path}: not a culture-interp converted model config")
    info = raw.pop("culture")
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    kwargs = {k: v for k, v in raw.items() if k in fields and k != "n_params"}
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    kwargs["device"] = str(device)
    kwargs["init_weights"] = False
    try:
        cfg = HookedTransformerConfig(**kwargs)
    except Exception as exc:  # noqa: BLE001 - bad field values
        raise HookedConversionError(f"{cfg_path}: invalid TransformerLens config ({exc})") from None
    try:
        from safetensors.torch import load_file

        params = load_file(str(w_path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
        raise HookedConversionError(f"{w_path}: not a readable safetensors file ({first_sentence(exc)})") from None
    from culture.io import check_finite

    check_finite(params, str(w_path), HookedConversionError)
    hooked = _empty_hooked(cfg, sae)
    try:
        _load_hooked_params(hooked, params)
    except HookedConversionError as exc:
        raise HookedConversionError(f"{w_path}: {exc}") from None
    hooked.culture_info = info
    hooked.accuracy = info.get("accuracy")
    hooked.model_id = info.get("model_id")
    return hooked.eval()


def max_logit_diff(model: MyGPT, hooked: HookedTransformer, quizzes: torch.Tensor,
                   with_scale: bool = False) -> float | tuple[float, float]:
    """max |MyGPT(quizzes) - hooked(BOS + quizzes[:-1])| over all logits; with
    ``with_scale`` also max |logit|, the scale float32 rounding is relative to
    (both models compute in float32; fp16 checkpoints are upcast on load)."""
    device = model.token_embedding.weight.device
    quizzes = quizzes.to(device)
    with torch.inference_mode():
        ours = model(quizzes)
        theirs = hooked_logits(hooked, quizzes).to(ours)
    diff = float((ours - theirs).abs().max().item())
    return (diff, float(ours.abs().max().item())) if with_scale else diff


__all__ = [
    "BOS", "N_CTX", "HookedConversionError", "IdentityLNFinal",
    "hooked_config", "gpt_config_from_hooked", "hooked_state_dict", "mygpt_to_hooked", "hooked_to_mygpt",
    "to_hooked_tokens", "hooked_logits", "load_hooked", "save_converted", "load_converted", "max_logit_diff",
]
