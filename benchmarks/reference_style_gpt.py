"""A GPT written the way the reference MyGPT computes (for benchmarks only).

Same parameters and numbers as culture.mygpt.MyGPT, but computed in the
reference's style: einsum attention with an explicit -inf mask, a
per-module output cache that every layer copies its result into (the
reference's CacheWrapper / BracketedSequence machinery), positional encodings
recomputed every forward, and a plain (for-each) Adam. It loads a
culture.mygpt state dict, so both run on identical weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _Cached(nn.Module):
    """Runs ``f`` and copies its output into a freshly allocated cache tensor."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        y = self.f(x)
        self.cache_y = y.new(*y.shape)
        self.cache_y[:] = y
        return self.cache_y


class _Attention(nn.Module):
    def __init__(self, d, dk, dv, heads, dropout):
        super().__init__()
        self.w_q = nn.Parameter(torch.randn(heads, dk, d) / math.sqrt(d))
        self.w_k = nn.Parameter(torch.randn(heads, dk, d) / math.sqrt(d))
        self.w_v = nn.Parameter(torch.randn(heads, dv, d) / math.sqrt(d))
        self.w_o = nn.Parameter(torch.randn(dv * heads, d) / math.sqrt(d))
        self.dropout = dropout

    def forward(self, x):
        n, t, _ = x.shape
        self.cache_k = x.new_zeros(n, self.w_k.shape[0], t, self.w_k.shape[1])
        self.cache_v = x.new_zeros(n, self.w_v.shape[0], t, self.w_v.shape[1])
        q = torch.einsum("ntc,hdc->nhtd", x, self.w_q)
        self.cache_k[:] = torch.einsum("ntc,hdc->nhtd", x, self.w_k)
        self.cache_v[:] = torch.einsum("ntc,hdc->nhtd", x, self.w_v)
        a = torch.einsum("nhtd,nhsd->nhts", q, self.cache_k) / math.sqrt(self.w_q.shape[1])
        mask = torch.arange(t, device=x.device)[:, None] < torch.arange(t, device=x.device)[None, :]
        a = a.masked_fill(mask[None, None], float("-inf")).softmax(dim=3)
        a = F.dropout(a, self.dropout, self.training)
        y = torch.einsum("nhts,nhsd->nthd", a, self.cache_v).flatten(2)
        out = x.new_zeros(n, t, self.w_o.shape[1])
        out[:] = y @ self.w_o
        return out


class ReferenceStyleGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, p = cfg.dim_model, cfg.dropout
        self.embedding = _Cached(nn.Sequential(nn.Embedding(cfg.vocabulary_size, d), nn.Dropout(p)))
        self.len_max = cfg.len_max
        blocks = []
        for _ in range(cfg.nb_blocks):
            blocks.append(nn.ModuleList([
                _Cached(nn.LayerNorm(d)),
                _Attention(d, cfg.dim_keys, d // cfg.nb_heads, cfg.nb_heads, p),
                _Cached(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.dim_hidden), nn.ReLU(),
                                      nn.Linear(cfg.dim_hidden, d), nn.Dropout(p))),
            ]))
        self.blocks = nn.ModuleList(blocks)
        self.readout = _Cached(nn.Linear(d, cfg.vocabulary_size))

    def load_mygpt_state(self, state):
        own = {}
        own["embedding.f.0.weight"] = state["embedding.0.f.0.weight"]
        for b in range(len(self.blocks)):
            a, m = f"trunk.{2 * b}.", f"trunk.{2 * b + 1}."
            own[f"blocks.{b}.0.f.weight"] = state[a + "f.0.f.0.weight"]
            own[f"blocks.{b}.0.f.bias"] = state[a + "f.0.f.0.bias"]
            for w in ("w_q", "w_k", "w_v", "w_o"):
                own[f"blocks.{b}.1.{w}"] = state[a + f"f.1.{w}"]
            for i in (0, 1, 3):
                j = {0: 0, 1: 2, 3: 4}[i]
                own[f"blocks.{b}.2.f.{i}.weight"] = state[m + f"f.f.{j}.weight"]
                own[f"blocks.{b}.2.f.{i}.bias"] = state[m + f"f.f.{j}.bias"]
        own["readout.f.weight"] = state["readout.f.weight"]
        own["readout.f.bias"] = state["readout.f.bias"]
        self.load_state_dict(own)
        return self

    def forward(self, quizzes):
        x = F.pad(quizzes, (1, -1))
        x = self.embedding(x)
        t = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)[:, None]
        j = torch.arange(x.shape[2], dtype=x.dtype, device=x.device)[None, :]
        k = j % 2
        pe = torch.sin(t / (self.len_max ** ((j - k) / x.shape[2])) + math.pi / 2 * k)
        cache = x.new(x.shape)
        cache[:] = x + pe
        x = cache
        for ln, attn, mlp in self.blocks:
            x = x + attn(ln(x))
            x = x + mlp(x)
        return self.readout(x)
