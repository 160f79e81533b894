"""Inputs of a universality comparison: quiz tokens, models run at
TransformerLens hook names, random-init baselines, SAEs.

Activations are named by TransformerLens hook points (``blocks.3.mlp.hook_post``,
``blocks.0.hook_resid_pre``...) whatever the model is:

* a :class:`~culture.mygpt.MyGPT` runs natively, with PyTorch forward hooks on
  the modules that compute exactly those tensors (the residual stream before /
  between / after a block, attention and MLP outputs, MLP pre- and
  post-activations); its fused attention is several times faster than
  TransformerLens's explicit attention patterns on a CPU;
* a ``HookedTransformer``, or any hook the native path does not cover (e.g.
  ``attn.hook_z`` for an SAE), goes through TransformerLens
  (:func:`culture.hooked.mygpt_to_hooked` converts a MyGPT exactly).

Both paths stop after the deepest block a comparison needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from culture.defaults import PROMPT_NOISE
from culture.errors import first_sentence
from culture.hooks import RESIDUAL_KINDS, HookNameError, act_name, add_hook, hook_layer, is_native, parse_act_name
from culture.quiz import BLOCK_LEN, EVAL_STRUCTURES, QUIZ_LEN, STRUCTURES
from culture.universality_settings import POSITIONS, UniversalityError


# ------------------------------------------------------------------- tokens


def position_index(positions: str = "all") -> torch.Tensor:
    """Positions (into the 404 TransformerLens positions ``BOS + quiz[:-1]``)
    used as tokens: ``"all"`` = 0..403; ``"cells"`` = the positions whose input
    token is a grid cell (drops BOS at 0 and the four block markers at 1, 102,
    203, 304): 399 positions."""
    if positions not in POSITIONS:
        raise UniversalityError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    t = torch.arange(QUIZ_LEN)
    if positions == "all":
        return t
    keep = (t >= 1) & ((t - 1) % BLOCK_LEN != 0)
    return t[keep]


def world_quiz_stream(n_quizzes: int, tasks=None, seed: int = 0, noise: float = PROMPT_NOISE,
                      chunk: int = 256, with_clean: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """World quizzes in chunks: each quiz in a structure drawn uniformly from the
    four deterministic ones, with prompt noise ``noise`` (structures 1 and 2), as
    in the reference's test protocol. Yields (quizzes (m, 404), task (m,) index
    into :data:`culture.world.TASKS`), with ``with_clean`` (quizzes, the same
    before noise, task). Same (n_quizzes, tasks, seed, noise, chunk) -> same
    quizzes, whatever the forward batch size."""
    from culture.quiz import add_prompt_noise, random_structures
    from culture.world import generate_quizzes_with_tasks

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(int(seed))
    done = 0
    while done < n_quizzes:
        m = min(chunk, n_quizzes - done)
        q, t = generate_quizzes_with_tasks(m, tasks, seed=rng)
        q, _ = random_structures(q, EVAL_STRUCTURES, generator=g)
        noised = add_prompt_noise(q, noise, STRUCTURES, generator=g)
        yield (noised, q, t) if with_clean else (noised, t)
        done += m


# ------------------------------------------------------------------- models


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every activation is taken."""


def _stop_layer(names) -> int | None:
    """Blocks to run so that every hook in ``names`` has fired (None: all)."""
    deepest = -1
    for n in names:
        layer = hook_layer(n)
        if layer is not None:
            deepest = max(deepest, layer)
        elif n in ("hook_embed", "hook_pos_embed"):
            continue
        else:
            return None  # ln_final, unembed...: the whole model
    return deepest + 1


class ModelRunner:
    """One model, run on token batches, returning activations at TransformerLens
    hook names (see the module docstring). ``model`` is a MyGPT or a
    HookedTransformer; the runner moves it to ``device``."""

    def __init__(self, model, device):
        from culture.mygpt import MyGPT

        self.device = torch.device(device)
        self.mygpt: MyGPT | None = None
        self._hooked = None
        if isinstance(model, MyGPT):
            self.mygpt = model.to(self.device).eval()
        else:
            try:
                from transformer_lens import HookedTransformer
            except ImportError:  # pragma: no cover
                HookedTransformer = None
            if HookedTransformer is None or not isinstance(model, HookedTransformer):
                raise UniversalityError(f"models must be MyGPT or HookedTransformer, got {type(model).__name__}")
            param = next(iter(model.parameters()), None)
            if param is not None and param.device != self.device:
                model = model.to(self.device)
            self._hooked = model.eval()
        self.model_id = getattr(model, "model_id", None)

    # ------------------------------------------------------------- shape

    @property
    def hooked(self):
        """The TransformerLens model (converted from the MyGPT on first use)."""
        if self._hooked is None:
            from culture.hooked import mygpt_to_hooked

            self._hooked = mygpt_to_hooked(self.mygpt)
        return self._hooked

    @property
    def n_layers(self) -> int:
        return self.mygpt.config.nb_blocks if self.mygpt is not None else int(self._hooked.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return self.mygpt.config.dim_model if self.mygpt is not None else int(self._hooked.cfg.d_model)

    @property
    def d_mlp(self) -> int:
        return self.mygpt.config.dim_hidden if self.mygpt is not None else int(self._hooked.cfg.d_mlp)

    def shape(self) -> dict:
        if self.mygpt is not None:
            c = self.mygpt.config
            return {"n_layers": c.nb_blocks, "d_model": c.dim_model, "d_mlp": c.dim_hidden, "n_heads": c.nb_heads,
                    "dim_keys": c.dim_keys}
        c = self._hooked.cfg
        return {"n_layers": int(c.n_layers), "d_model": int(c.d_model), "d_mlp": int(c.d_mlp),
                "n_heads": int(c.n_heads), "d_head": int(c.d_head)}

    def _native(self, name: str) -> bool:
        return self.mygpt is not None and is_native(name, self.n_layers)

    def has_hook(self, name: str) -> bool:
        return self._native(name) or name in self.hooked.hook_dict

    def hook_width(self, name: str) -> int | None:
        """Features per token at a hook (None for head-shaped hooks)."""
        try:
            kind, _ = parse_act_name(name)
        except HookNameError:
            return None
        if kind in RESIDUAL_KINDS:
            return self.d_model
        return self.d_mlp if kind in ("pre", "post") else None

    # --------------------------------------------------------------- run

    def run(self, tokens: torch.Tensor, names, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """{hook name: activation at positions ``pos``, (n, len(pos), ...)} for
        TransformerLens input tokens (n, T) (``BOS + quiz[:-1]``)."""
        names = list(dict.fromkeys(names))
        if all(self._native(n) for n in names):
            return self._run_native(tokens, names, pos)
        return self._run_hooked(tokens, names, pos)

    def _run_native(self, tokens, names, pos):
        model = self.mygpt
        store: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(act):
                store[name] = act[:, pos]
            return hook

        handles = [add_hook(model, name, keep(name)) for name in names]  # the one hook map (culture.hooks)
        stop = _stop_layer(names)
        if stop is not None and stop < self.n_layers:
            def halt(*_):
                raise _Stop

            # registered last: runs after the capture hooks of the same module
            last = act_name("resid_post", stop - 1) if stop > 0 else act_name("resid_pre", 0)
            handles.append(add_hook(model, last, halt))
        try:
            with torch.no_grad():
                model.forward_tokens(tokens.to(self.device))
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return store

    def _run_hooked(self, tokens, names, pos):
        hooked = self.hooked
        store: dict[str, torch.Tensor] = {}

        def keep(act, hook):
            store[hook.name] = act[:, pos].detach()

        stop = _stop_layer(names)
        kwargs = {"stop_at_layer": stop} if stop is not None and stop < self.n_layers else {}
        with torch.no_grad():
            hooked.run_with_hooks(tokens.to(self.device), return_type=None, fwd_hooks=[(n, keep) for n in names],
                                  **kwargs)
        return store

    # ---------------------------------------------------------- baseline

    def random_like(self, seed: int) -> ModelRunner:
        """A randomly initialised model of the same shape (the chance level):
        ``MyGPT(cfg)`` with the reference initialisation, seeded; a
        HookedTransformer that is not culture-shaped gets TransformerLens's own
        seeded initialisation. The global torch RNG is left untouched."""
        from culture.mygpt import MyGPT

        cfg = self.mygpt.config if self.mygpt is not None else None
        if cfg is None:
            try:
                from culture.hooked import gpt_config_from_hooked

                cfg = gpt_config_from_hooked(self._hooked.cfg)
            except Exception:  # noqa: BLE001 - not a culture-shaped model
                cfg = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            if cfg is not None:
                return ModelRunner(MyGPT(cfg), self.device)
            import copy

            from transformer_lens import HookedTransformer

            tl_cfg = copy.deepcopy(self._hooked.cfg)
            tl_cfg.seed = int(seed)
            return ModelRunner(HookedTransformer(tl_cfg), self.device)


def permuted_mlp_copy(model, seed: int = 1):
    """A copy of a MyGPT computing exactly the same function with the MLP
    neurons of every layer permuted (rows of ``up``, columns of ``down``):
    universality's ceiling, the same model in another basis. Returns
    (copy, per-layer permutations: neuron n of the copy is neuron perm[n])."""
    import copy

    from culture.mygpt import MyGPT

    if not isinstance(model, MyGPT):
        raise UniversalityError(f"a permuted copy needs a MyGPT, got {type(model).__name__}")
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(seed))
    perms = []
    with torch.no_grad():
        for blk in out.mlp_blocks:
            p = torch.randperm(blk.up.weight.shape[0], generator=g)
            blk.up.weight.copy_(blk.up.weight[p])
            blk.up.bias.copy_(blk.up.bias[p])
            blk.down.weight.copy_(blk.down.weight[:, p])
            perms.append(p)
    return out, perms


def baseline_seed(seed: int, k: int) -> int:
    """Seed of the random model that stands beside model number k."""
    return (int(seed) + 1) * 7919 + int(k)


# --------------------------------------------------------------------- SAEs


def load_saes(paths: Sequence, device="cpu") -> list:
    """SAELens SAEs, one per entry (``None`` entries stay None); see :func:`load_sae`."""
    return [None if p is None else load_sae(p, device) for p in paths]


def load_sae(path, device="cpu"):
    """One SAELens SAE: a local directory (``cfg.json`` + ``sae_weights.safetensors``)
    or, through :func:`culture.sae.load_sae` when that module is present, also a
    hub repo spec (``owner/name/gpt-0/blocks_8_mlp_out``), with the activation
    norm scaling of ``expected_average_only_in`` SAEs folded in. Failures are
    one-line CultureErrors."""
    try:
        from culture.sae.loading import load_sae as culture_load_sae
    except ImportError:  # pragma: no cover - the SAE module is optional here
        culture_load_sae = None
    if culture_load_sae is not None:
        return culture_load_sae(os.fspath(path), device=str(device))
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise UniversalityError(f"SAE directory not found: {path}")
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not os.path.isfile(os.path.join(path, name)):
            raise UniversalityError(f"{path}: no {name} (expected a SAELens directory: cfg.json + "
                                    f"sae_weights.safetensors)")
    from sae_lens import SAE

    from culture.io import check_finite

    try:
        sae = SAE.load_from_disk(path, device=str(device))
    except Exception as exc:  # noqa: BLE001 - SAELens raises many kinds
        raise UniversalityError(f"{path}: not a loadable SAELens SAE ({first_sentence(exc)})") from None
    check_finite(dict(sae.state_dict()), os.path.join(path, "sae_weights.safetensors"), UniversalityError)
    return sae


__all__ = [
    "UniversalityError", "ModelRunner", "position_index", "world_quiz_stream", "baseline_seed", "permuted_mlp_copy",
    "load_saes",
    "load_sae", "POSITIONS",
]
