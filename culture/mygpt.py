"""MyGPT: the culture GPT, checkpoint-compatible with the reference code.

The module tree reproduces the reference's parameter names exactly (REFERENCE.md
section 3), so ``state_dict()`` of this model *is* a reference checkpoint and
vice versa. Readable aliases (``blocks``, ``ln``, ``attn``, ``up``, ``down``)
point into that tree.

Forward (reference convention): ``model(quizzes)`` takes (B, T) tokens without
BOS, shifts them right by one with token 0 internally, and returns (B, T, vocab)
logits where position t predicts token t. Attention runs on
``F.scaled_dot_product_attention``; an optional KV cache serves generation.
"""

from __future__ import annotations

from culture.errors import CultureError

import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from culture.quiz import QUIZ_LEN, VOCAB_SIZE

POSITIONAL_LEN_MAX = 1e5


@dataclass(frozen=True)
class GPTConfig:
    dim_model: int
    dim_keys: int
    dim_hidden: int
    nb_heads: int
    nb_blocks: int
    vocabulary_size: int = VOCAB_SIZE
    dropout: float = 0.0
    len_max: float = POSITIONAL_LEN_MAX
    #: dropout on the attention probabilities; None = ``dropout`` (the
    #: reference). 0 lets training use the fused attention kernels, which on
    #: CPU support no dropout (about 4x faster attention).
    attention_dropout: float | None = None

    @property
    def dim_value(self) -> int:
        return self.dim_model // self.nb_heads

    def to_dict(self) -> dict:
        return asdict(self)


#: The reference presets (dim_model, dim_keys, dim_hidden, nb_heads, nb_blocks).
PRESETS: dict[str, GPTConfig] = {
    "17K": GPTConfig(32, 32, 32, 2, 2),
    "4M": GPTConfig(256, 32, 1024, 4, 6),
    "37M": GPTConfig(512, 64, 2048, 8, 12),
    "122M": GPTConfig(768, 64, 2048, 8, 24),
    "352M": GPTConfig(1024, 64, 2048, 8, 48),
}


def sinusoidal_positions(length: int, dim: int, len_max: float = POSITIONAL_LEN_MAX) -> torch.Tensor:
    """The reference's table: PE[t, j] = sin(t / L^((j - j%2)/D) + pi/2 * (j%2)).

    Computed in float32 in the reference's order of operations, so the values
    are bit-identical to the ones the published models were trained with."""
    t = torch.arange(length, dtype=torch.float32)[:, None]
    j = torch.arange(dim, dtype=torch.float32)[None, :]
    k = j % 2
    return torch.sin(t / (len_max ** ((j - k) / dim)) + math.pi / 2 * k)


# The wrappers below exist only to reproduce the reference's parameter paths
# (``.f`` attributes and Sequential indices); they add no computation.


class _F(nn.Module):
    """Holds a sub-module under the attribute name ``f``."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with the reference's parameters: w_q, w_k
    (heads, dim_keys, D), w_v (heads, D//heads, D), w_o (D, D) used as y @ w_o."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()

        def randw(*d):
            return nn.Parameter(torch.randn(*d) / math.sqrt(d[-1]))

        self.nb_heads = cfg.nb_heads
        self.dim_keys = cfg.dim_keys
        self.dropout = cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout
        self.w_q = randw(cfg.nb_heads, cfg.dim_keys, cfg.dim_model)
        self.w_k = randw(cfg.nb_heads, cfg.dim_keys, cfg.dim_model)
        self.w_v = randw(cfg.nb_heads, cfg.dim_value, cfg.dim_model)
        self.w_o = randw(cfg.dim_value * cfg.nb_heads, cfg.dim_model)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        n, t, _ = x.shape
        h = self.nb_heads
        # one matmul for q, k, v of all heads: (n, t, D) @ (D, h*(2dk+dv))
        w = torch.cat([self.w_q.flatten(0, 1), self.w_k.flatten(0, 1), self.w_v.flatten(0, 1)], 0)
        qkv = x @ w.t()
        dk = self.dim_keys
        q, k, v = qkv.split([h * dk, h * dk, self.w_v.shape[0] * self.w_v.shape[1]], dim=-1)
        q = q.view(n, t, h, dk).transpose(1, 2)
        k = k.view(n, t, h, dk).transpose(1, 2)
        v = v.view(n, t, h, -1).transpose(1, 2)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        dv = v.shape[-1]
        scale = 1.0 / math.sqrt(dk)
        if dk != dv:
            # The fused (flash) CPU/GPU kernels want one head size for q, k and
            # v: zero-pad the smaller one. Padding q and k with zeros leaves
            # q.k unchanged; padded v columns are dropped after. Exact.
            d = max(dk, dv)
            q, k, v = (F.pad(z, (0, d - z.shape[-1])) for z in (q, k, v))
        causal = cache is None or cache.length(layer) == t
        if causal:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0, scale=scale
            )
        else:
            # new tokens at the end of a cached prefix: each sees the prefix and
            # the new tokens before it
            s = k.shape[2]
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return y[..., :dv].transpose(1, 2).reshape(n, t, -1) @ self.w_o


class KVCache:
    """Keys and values per layer for incremental decoding with MyGPT."""

    def __init__(self, nb_blocks: int):
        self.k: list[torch.Tensor | None] = [None] * nb_blocks
        self.v: list[torch.Tensor | None] = [None] * nb_blocks

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], 2)
            v = torch.cat([self.v[layer], v], 2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def length(self, layer: int = 0) -> int:
        k = self.k[layer]
        return 0 if k is None else k.shape[2]

    def __len__(self) -> int:
        return self.length(0)


class AttentionBlock(nn.Module):
    """x + Attn(LN(x)); parameters at ``f.0.f.0`` (LN) and ``f.1`` (attention)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.f = nn.Sequential(_F(nn.Sequential(nn.LayerNorm(cfg.dim_model))), CausalSelfAttention(cfg))

    @property
    def ln(self) -> nn.LayerNorm:
        return self.f[0].f[0]

    @property
    def attn(self) -> CausalSelfAttention:
        return self.f[1]

    def forward(self, x, cache=None, layer=0):
        return x + self.attn(self.ln(x), cache, layer)


class MLPBlock(nn.Module):
    """x + Dropout(W2 ReLU(W1 LN(x))); parameters at ``f.f.0`` / ``f.f.2`` / ``f.f.4``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.f = _F(
            nn.Sequential(
                nn.LayerNorm(cfg.dim_model),
                nn.Identity(),  # the reference's (inactive) noise injector
                nn.Linear(cfg.dim_model, cfg.dim_hidden),
                nn.ReLU(),
                nn.Linear(cfg.dim_hidden, cfg.dim_model),
                nn.Dropout(cfg.dropout),
            )
        )

    @property
    def ln(self) -> nn.LayerNorm:
        return self.f.f[0]

    @property
    def up(self) -> nn.Linear:
        return self.f.f[2]

    @property
    def down(self) -> nn.Linear:
        return self.f.f[4]

    def forward(self, x):
        return x + self.f.f(x)


class MyGPT(nn.Module):
    """The culture GPT. ``model(quizzes)`` -> logits, reference convention."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.temperature = 1.0
        self.embedding = nn.Sequential(
            _F(nn.Sequential(nn.Embedding(cfg.vocabulary_size, cfg.dim_model), nn.Dropout(cfg.dropout)))
        )
        layers: list[nn.Module] = []
        for _ in range(cfg.nb_blocks):
            layers += [AttentionBlock(cfg), MLPBlock(cfg)]
        self.trunk = nn.Sequential(*layers)
        self.readout = _F(nn.Linear(cfg.dim_model, cfg.vocabulary_size))
        self.register_buffer(
            "positions", sinusoidal_positions(QUIZ_LEN + 1, cfg.dim_model, cfg.len_max), persistent=False
        )
        with torch.no_grad():  # the reference's initialisation
            self.embedding[0].f[0].weight.normal_(mean=0, std=2e-2)

    # readable views into the reference-named tree
    @property
    def token_embedding(self) -> nn.Embedding:
        return self.embedding[0].f[0]

    @property
    def unembed(self) -> nn.Linear:
        return self.readout.f

    @property
    def attention_blocks(self) -> list[AttentionBlock]:
        return list(self.trunk)[0::2]

    @property
    def mlp_blocks(self) -> list[MLPBlock]:
        return list(self.trunk)[1::2]

    def _positions(self, start: int, length: int) -> torch.Tensor:
        if start + length > self.positions.shape[0]:
            self.positions = sinusoidal_positions(
                start + length, self.config.dim_model, self.config.len_max
            ).to(self.positions.device)
        return self.positions[start : start + length]

    def forward_tokens(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits for *already shifted* input tokens (BOS convention: position t
        sees tokens[:t+1] and predicts the next quiz token). With a cache, the
        tokens continue the cached prefix."""
        start = 0 if cache is None else len(cache)
        x = self.embedding(tokens) + self._positions(start, tokens.shape[1]).to(self.token_embedding.weight.dtype)
        for layer in range(self.config.nb_blocks):
            x = self.trunk[2 * layer](x, cache, layer)
            x = self.trunk[2 * layer + 1](x)
        logits = self.readout.f(x)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits

    def forward(self, quizzes: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(F.pad(quizzes, (1, -1)))

    def new_cache(self) -> KVCache:
        return KVCache(self.config.nb_blocks)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------- checkpoints


class CheckpointError(CultureError, ValueError):
    """A file is not a loadable culture checkpoint."""


def config_from_state_dict(state: dict, dropout: float = 0.0) -> GPTConfig:
    """Infer the architecture from a reference state dict's key names and shapes."""
    try:
        emb = state["embedding.0.f.0.weight"]
        vocab, dim_model = emb.shape
        nb_blocks = 0
        while f"trunk.{2 * nb_blocks}.f.1.w_q" in state:
            nb_blocks += 1
        w_q = state["trunk.0.f.1.w_q"]
        nb_heads, dim_keys, _ = w_q.shape
        dim_hidden = state["trunk.1.f.f.2.weight"].shape[0]
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"not a culture GPT state dict (missing or malformed {exc})") from None
    if nb_blocks == 0 or dim_model % nb_heads:
        raise CheckpointError("not a culture GPT state dict (no attention blocks or bad head count)")
    return GPTConfig(int(dim_model), int(dim_keys), int(dim_hidden), int(nb_heads), nb_blocks,
                     vocabulary_size=int(vocab), dropout=dropout)


def mygpt_from_state_dict(state: dict, dropout: float = 0.0) -> MyGPT:
    cfg = config_from_state_dict(state, dropout)
    model = MyGPT(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"state dict does not match the culture GPT layout ({detail})")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"state dict shape mismatch at {key}: {tuple(state[key].shape)} vs {tuple(value.shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def check_vocabulary(state: dict, where: str) -> None:
    """Refuse (one-line CheckpointError) a state dict whose token embedding or
    readout is not the quiz format's :data:`~culture.quiz.VOCAB_SIZE` tokens
    (colours 0..10 and the four markers): such a model cannot read or score
    a quiz, and would fail only after the test set is built."""
    for key, what in (("embedding.0.f.0.weight", "token embedding"), ("readout.f.weight", "readout")):
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] != VOCAB_SIZE:
            raise CheckpointError(
                f"{where}: the {what} has {value.shape[0]} tokens, the quiz format has {VOCAB_SIZE} "
                "(colours 0-10 and the markers A, f_A, B, f_B): not a culture GPT")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, float | None]:
    """(state_dict, main_test_accuracy) from a gpt_XXX.pth file, safely.

    Uses ``torch.load(weights_only=True)``: a pickle that would run code is
    refused, never executed. A vocabulary other than the quiz format's 15
    tokens is refused (:func:`check_vocabulary`).
    """
    from culture.io import check_finite, load_tensors

    path = os.fspath(path)
    obj = load_tensors(path, CheckpointError, "checkpoint")
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], dict):
        state, accuracy = obj
    elif isinstance(obj, dict):
        state, accuracy = obj, None
    else:
        raise CheckpointError(f"{path}: expected (state_dict, accuracy), got {type(obj).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state dict holds non-tensor values")
    for key, value in state.items():
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key} has dtype {str(value.dtype).removeprefix('torch.')}, "
                                  "expected floating-point weights")
    check_finite(state, path, CheckpointError)
    check_vocabulary(state, path)
    if accuracy is not None:
        try:
            accuracy = float(accuracy)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: accuracy is not a number") from None
        if not math.isfinite(accuracy):
            raise CheckpointError(f"{path}: the stored accuracy is {accuracy}, not a number in [0, 1]")
    return state, accuracy


def load_mygpt(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MyGPT, float | None]:
    """Load a reference checkpoint file -> (model in eval mode, main_test_accuracy)."""
    state, accuracy = read_checkpoint(path)
    try:
        model = mygpt_from_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{os.fspath(path)}: {exc}") from None
    return model.to(device).eval(), accuracy


def save_checkpoint(model: MyGPT, accuracy: float, path: str | os.PathLike, *, half: bool = False) -> None:
    """Write ``(state_dict, accuracy)`` in the reference format, atomically."""
    from culture.io import atomic_torch_save

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    atomic_torch_save((state, float(accuracy)), path)
