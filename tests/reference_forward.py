"""A straightforward re-implementation of the reference MyGPT forward, written
from REFERENCE.md section 3 directly on a state dict (einsum attention, explicit
mask, no caches). Tests compare culture.mygpt against it."""

import math

import torch
import torch.nn.functional as F


def reference_forward(state: dict, quizzes: torch.Tensor, len_max: float = 1e5) -> torch.Tensor:
    x = F.pad(quizzes, (1, -1))
    emb = state["embedding.0.f.0.weight"]
    d = emb.shape[1]
    h = emb[x]
    t = torch.arange(x.shape[1], dtype=h.dtype)[:, None]
    j = torch.arange(d, dtype=h.dtype)[None, :]
    k = j % 2
    h = h + torch.sin(t / (len_max ** ((j - k) / d)) + math.pi / 2 * k)
    l = 0
    T = x.shape[1]
    causal = torch.arange(T)[:, None] < torch.arange(T)[None, :]
    while f"trunk.{2 * l}.f.1.w_q" in state:
        p = f"trunk.{2 * l}."
        y = F.layer_norm(h, (d,), state[p + "f.0.f.0.weight"], state[p + "f.0.f.0.bias"], 1e-5)
        q = torch.einsum("ntc,hdc->nhtd", y, state[p + "f.1.w_q"])
        kk = torch.einsum("ntc,hdc->nhtd", y, state[p + "f.1.w_k"])
        v = torch.einsum("ntc,hdc->nhtd", y, state[p + "f.1.w_v"])
        a = torch.einsum("nhtd,nhsd->nhts", q, kk) / math.sqrt(q.shape[-1])
        a = a.masked_fill(causal, float("-inf")).softmax(-1)
        o = torch.einsum("nhts,nhsd->nthd", a, v).flatten(2) @ state[p + "f.1.w_o"]
        h = h + o
        p = f"trunk.{2 * l + 1}.f.f."
        y = F.layer_norm(h, (d,), state[p + "0.weight"], state[p + "0.bias"], 1e-5)
        y = F.relu(y @ state[p + "2.weight"].t() + state[p + "2.bias"])
        h = h + y @ state[p + "4.weight"].t() + state[p + "4.bias"]
        l += 1
    return h @ state["readout.f.weight"].t() + state["readout.f.bias"]


def random_reference_state(dim_model, dim_keys, dim_hidden, nb_heads, nb_blocks, vocab=15, seed=0):
    """A state dict with the reference's key names and shapes, random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1] if scale is None else scale)

    s = {"embedding.0.f.0.weight": r(vocab, dim_model, scale=1) * 0.5}
    dv = dim_model // nb_heads
    for l in range(nb_blocks):
        a, m = f"trunk.{2 * l}.", f"trunk.{2 * l + 1}."
        s[a + "f.0.f.0.weight"] = 1 + 0.1 * r(dim_model, scale=1)
        s[a + "f.0.f.0.bias"] = 0.1 * r(dim_model, scale=1)
        s[a + "f.1.w_q"] = r(nb_heads, dim_keys, dim_model)
        s[a + "f.1.w_k"] = r(nb_heads, dim_keys, dim_model)
        s[a + "f.1.w_v"] = r(nb_heads, dv, dim_model)
        s[a + "f.1.w_o"] = r(dv * nb_heads, dim_model)
        s[m + "f.f.0.weight"] = 1 + 0.1 * r(dim_model, scale=1)
        s[m + "f.f.0.bias"] = 0.1 * r(dim_model, scale=1)
        s[m + "f.f.2.weight"] = r(dim_hidden, dim_model)
        s[m + "f.f.2.bias"] = 0.1 * r(dim_hidden, scale=1)
        s[m + "f.f.4.weight"] = r(dim_model, dim_hidden)
        s[m + "f.f.4.bias"] = 0.1 * r(dim_model, scale=1)
    s["readout.f.weight"] = r(vocab, dim_model)
    s["readout.f.bias"] = 0.1 * r(vocab, scale=1)
    return s


def write_reference_checkpoint(path, state, accuracy=0.5):
    """Exactly what the reference code writes: torch.save((state_dict, accuracy))."""
    torch.save((state, accuracy), path)
