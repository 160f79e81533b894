"""Autoregressive completion of quizzes by a culture GPT.

``generate(model, quizzes)`` fills each quiz's predicted block(s) (from its
structure, REFERENCE.md section 1) token by token, the way the reference does:
the positions between the first and the last generated cell are visited left
to right; a position outside the mask (a prompt cell, or the marker of a
predicted block, as in structure 5) keeps its token and is fed to the model as
is. Tokens are drawn at temperature 1 by default (the reference's accuracy
protocol), greedily with ``greedy=True`` or ``temperature=0``.

``model`` may be

* a :class:`culture.mygpt.MyGPT` -- decoding uses its own KV cache: the prompt
  prefix is run once, then one token per step;
* a TransformerLens ``HookedTransformer`` built by ``culture.hooked`` (input =
  BOS 0 + quiz[:-1]) -- decoding uses TransformerLens's KV cache with an
  explicit all-ones attention mask, so the tokenizer's pad token (``"0"``, the
  empty cell) never hides empty cells (REFERENCE.md section 4);
* any callable ``quizzes (n, 404) -> logits (n, 404, vocab)`` in the reference
  convention (position t predicts token t); always decoded without cache.

``use_cache=False`` recomputes a full forward over the prefix at every step
(the earlier toolkit's way); greedy generation gives the same tokens either way.

The lower-level :func:`generate_blocks` takes an explicit (n, 404) mask and a
temperature per block or per position; the culture phase uses it to create
quizzes (block 1 hot at 1.5, the rest at 1.0).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from culture.errors import CultureError
from culture.quiz import (
    BLOCK_LEN,
    N_BLOCKS,
    N_COLORS,
    QUIZ_LEN,
    Structure,
    ar_mask,
    block_mask,
    parse_structure,
    reconfigure,
    validate_quizzes,
)

#: quizzes per forward batch (the reference's inference batch is 50)
DEFAULT_BATCH_SIZE = 100

Progress = Callable[[int, int], None]  # (quizzes done, total)


class GenerationError(CultureError, ValueError):
    """Bad arguments to generation (temperature, mask, structure)."""


# --------------------------------------------------------------------- models


def model_kind(model) -> str:
    """"mygpt", "hooked" (TransformerLens HookedTransformer) or "callable"."""
    if hasattr(model, "forward_tokens") and hasattr(model, "new_cache"):
        return "mygpt"
    tl = sys.modules.get("transformer_lens")
    if tl is not None and isinstance(model, tl.HookedTransformer):
        return "hooked"
    if callable(model):
        return "callable"
    raise GenerationError(f"not a model: {type(model).__name__}")


def model_device(model, default: torch.device | str = "cpu") -> torch.device:
    """The device of a module's parameters (``default`` for plain callables)."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device(default)


def _bos_tokens(quizzes: torch.Tensor) -> torch.Tensor:
    """BOS 0 + quizzes[:, :-1]: the input whose position t predicts quiz token t."""
    return F.pad(quizzes, (1, -1))


def _hooked_logits(model, tokens: torch.Tensor, cache=None) -> torch.Tensor:
    if cache is None and getattr(model, "tokenizer", None) is None:
        # no tokenizer: TransformerLens builds no padding mask, and none is needed (cheaper without)
        return model(tokens, return_type="logits")
    # an explicit all-ones mask: no pad-token masking (pad "0" = empty cell)
    mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
    return model(tokens, return_type="logits", attention_mask=mask, past_kv_cache=cache)


def logits_fn(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``quizzes (n, T) -> logits (n, T, vocab)`` in the reference
    convention (position t predicts quiz token t; T <= 404) for a MyGPT, a
    HookedTransformer (BOS 0 prepended, last token dropped) or a callable that
    already follows that convention."""
    kind = model_kind(model)
    if kind == "mygpt":
        return model
    if kind == "hooked":
        return lambda quizzes: _hooked_logits(model, _bos_tokens(quizzes))
    return model


# ------------------------------------------------------------------ steppers
# A stepper yields the logits predicting position s, for s = s0, s0+1, ...;
# ``advance(x, s)`` is called once x[:, s] is final.


class _MyGPTStepper:
    def __init__(self, model, x: torch.Tensor, s0: int):
        self.model = model
        self.cache = model.new_cache()
        self.logits = model.forward_tokens(_bos_tokens(x)[:, : s0 + 1], self.cache)[:, -1]

    def advance(self, x: torch.Tensor, s: int) -> None:
        self.logits = self.model.forward_tokens(x[:, s : s + 1], self.cache)[:, -1]


def _tl_cache_class():
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as cls
    except ImportError:  # older TransformerLens releases
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache as cls
    return cls


class _HookedStepper:
    def __init__(self, model, x: torch.Tensor, s0: int):
        self.model = model
        self.cache = _tl_cache_class().init_cache(model.cfg, x.device, x.shape[0])
        self.logits = _hooked_logits(model, _bos_tokens(x)[:, : s0 + 1], self.cache)[:, -1]

    def advance(self, x: torch.Tensor, s: int) -> None:
        self.logits = _hooked_logits(self.model, x[:, s : s + 1], self.cache)[:, -1]


class _UncachedStepper:
    """A full forward at every step: over the prefix for known models, over the
    whole (partly stale, causally invisible) quiz for plain callables."""

    def __init__(self, model, x: torch.Tensor, s0: int):
        self.fn = logits_fn(model)
        self.prefix = model_kind(model) != "callable"
        self.logits = self._at(x, s0)

    def _at(self, x: torch.Tensor, s: int) -> torch.Tensor:
        inp = x[:, : s + 1] if self.prefix else x
        return self.fn(inp)[:, s]

    def advance(self, x: torch.Tensor, s: int) -> None:
        self.logits = self._at(x, s + 1)


# ------------------------------------------------------------------ sampling


def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
            colors_only: bool) -> torch.Tensor:
    """Argmax at temperature 0, else a draw from softmax(logits / T) by inverse
    CDF with one uniform per row (drawn on the generator's device, so a seed
    gives the same draws on every device)."""
    logits = logits.float()
    if colors_only:
        logits = logits.clone()
        logits[:, N_COLORS:] = float("-inf")
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    gen_device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape[0], generator=generator, device=gen_device).to(logits.device)
    cdf = probs.cumsum(-1)
    index = (cdf < u[:, None] * cdf[:, -1:]).sum(-1)
    return index.clamp_max(logits.shape[-1] - 1)


def _position_temperatures(temperature) -> list[float]:
    """A temperature per quiz position (404) from a number, 4 per-block values,
    or 404 per-position values."""
    if isinstance(temperature, torch.Tensor):
        values = temperature.detach().flatten().tolist()
    elif isinstance(temperature, Sequence) and not isinstance(temperature, str):
        values = [float(t) for t in temperature]
    else:
        try:
            values = [float(temperature)]
        except (TypeError, ValueError):
            raise GenerationError(f"temperature must be a number, got {temperature!r}") from None
    if any(not (v >= 0) or v == float("inf") for v in values):
        raise GenerationError(f"temperatures must be finite and >= 0, got {values}")
    if len(values) == 1:
        return values * QUIZ_LEN
    if len(values) == N_BLOCKS:
        return [v for v in values for _ in range(BLOCK_LEN)]
    if len(values) == QUIZ_LEN:
        return values
    raise GenerationError(
        f"temperature: give one value, {N_BLOCKS} (one per block) or {QUIZ_LEN} (one per position), "
        f"got {len(values)}"
    )


# ------------------------------------------------------------------- public


def _stepper_class(model, use_cache: bool):
    kind = model_kind(model)
    if use_cache and kind == "mygpt":
        return _MyGPTStepper
    if use_cache and kind == "hooked":
        return _HookedStepper
    return _UncachedStepper


def _generate_batch(model, x, m, temps, generator, use_cache, colors_only):
    cols = m.any(0).nonzero().flatten()
    if cols.numel() == 0:
        return x
    s0, s1 = int(cols[0]), int(cols[-1])
    x = torch.where(m, torch.zeros_like(x), x)  # the reference clears the cells to predict
    stepper = _stepper_class(model, use_cache)(model, x, s0)
    for s in range(s0, s1 + 1):
        token = _choose(stepper.logits, temps[s], generator, colors_only)
        x[:, s] = torch.where(m[:, s], token, x[:, s])
        if s < s1:
            stepper.advance(x, s)
    return x


def generate_blocks(
    model,
    quizzes: torch.Tensor,
    mask: torch.Tensor,
    temperature: float | Sequence[float] | torch.Tensor = 1.0,
    *,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    colors_only: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Generate the tokens of ``quizzes`` where ``mask`` is True; keep the rest.

    ``mask``: (n, 404) or (404,) bool. ``temperature``: a number, 4 values (one
    per block position 0..3) or 404 values (one per position); 0 = argmax.
    ``colors_only`` restricts draws to the colours 0..10 (the reference draws
    from the full vocabulary). Returns a new (n, 404) LongTensor on the device
    of ``quizzes``; the quizzes are not checked for markers (a partly generated
    quiz is fine), only for shape.
    """
    quizzes = torch.as_tensor(quizzes)
    if quizzes.dim() == 1:
        quizzes = quizzes.unsqueeze(0)
    if quizzes.dim() != 2 or quizzes.shape[1] != QUIZ_LEN:
        raise GenerationError(f"quizzes must have shape (n, {QUIZ_LEN}), got {tuple(quizzes.shape)}")
    mask = torch.as_tensor(mask, device=quizzes.device).bool()
    if mask.dim() == 1:
        mask = mask.unsqueeze(0).expand_as(quizzes)
    if tuple(mask.shape) != tuple(quizzes.shape):
        raise GenerationError(f"mask must have shape {tuple(quizzes.shape)}, got {tuple(mask.shape)}")
    if batch_size < 1:
        raise GenerationError(f"batch size must be >= 1, got {batch_size}")
    temps = _position_temperatures(temperature)
    device = model_device(model, quizzes.device)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    out = []
    try:
        with torch.inference_mode():
            done = 0
            for x, m in zip(quizzes.long().split(batch_size), mask.split(batch_size)):
                y = _generate_batch(model, x.to(device), m.to(device), temps, generator, use_cache, colors_only)
                out.append(y.to(quizzes.device))
                done += x.shape[0]
                if progress is not None:
                    progress(done, quizzes.shape[0])
    finally:
        if was_training:
            model.train()
    if not out:
        return quizzes.long().clone()
    return torch.cat(out)


def generate(
    model,
    quizzes: torch.Tensor,
    structure: int | str | Structure | None = None,
    temperature: float | Sequence[float] | torch.Tensor = 1.0,
    *,
    greedy: bool = False,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    colors_only: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Fill each quiz's predicted block(s) with the model's answer.

    ``structure`` (1..5, marker names, or a Structure): first reconfigure the
    quizzes to it; the result stays in that structure. Without it, each quiz's
    own structure (read from its markers) says what to predict; an unknown
    marker order predicts its last block. Markers are never generated.

    ``temperature``: 1.0 = the reference's sampling; 0 or ``greedy=True`` =
    argmax; 4 values = one per block position (e.g. (1.5, 1, 1, 1)). ``seed``
    builds a generator when none is given. Returns (n, 404) LongTensor.
    """
    quizzes = validate_quizzes(quizzes)
    if structure is not None:
        try:
            s = parse_structure(structure)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        quizzes = reconfigure(quizzes, s.markers)
        mask = block_mask(quizzes.shape[0], s.predicted, cells_only=True, device=quizzes.device)
    else:
        mask = ar_mask(quizzes)
    if greedy:
        temperature = 0.0
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return generate_blocks(
        model, quizzes, mask, temperature,
        use_cache=use_cache, generator=generator, batch_size=batch_size,
        colors_only=colors_only, progress=progress,
    )
