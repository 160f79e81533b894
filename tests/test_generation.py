"""culture.generation: cached == uncached, MyGPT == HookedTransformer, prompts
kept, temperatures, and teacher-forced greedy == generated greedy on a model
that solves some quizzes and fails others."""

from __future__ import annotations

import math

import pytest
import torch

from culture.evaluation import score_quizzes
from culture.generation import GenerationError, generate, generate_blocks, logits_fn
from culture.mygpt import GPTConfig, MyGPT
from culture.quiz import (
    BLOCK_LEN,
    N_COLORS,
    QUIZ_LEN,
    STRUCTURES,
    ar_mask,
    block_mask,
    block_markers,
    grids_to_quizzes,
    quizzes_to_grids,
    random_structures,
    reconfigure,
)
from tests.helpers_sources import random_quizzes


def tiny_model(seed: int = 0, shape=(32, 16, 48, 2, 2)) -> MyGPT:
    torch.manual_seed(seed)
    return MyGPT(GPTConfig(*shape)).eval()


def hooked_of(model: MyGPT):
    from culture.hooked import mygpt_to_hooked

    hooked = mygpt_to_hooked(model)
    # copy_model() overrides the positional table; keep TL in sync
    with torch.no_grad():
        hooked.pos_embed.W_pos.copy_(model.positions[: hooked.cfg.n_ctx])
    return hooked


def copy_model(offset: int = 101, sharpness: float = 1.0) -> MyGPT:
    """A 1-layer MyGPT with hand-set weights whose prediction of quiz token t is
    quiz token t - ``offset``: with 101, block 4 := copy of block 3 (f(B) := B
    in the canonical structure).

    Residual layout (D = 40): dims 0..14 one-hot input token (x a); dims 15..29
    the copied token (written by the head); dims 30..33 a positional code
    (c cos, c sin, -c cos, -c sin) of one slow frequency (period 1024 > the
    context, no aliasing), which keeps every residual vector's mean and norm
    constant, so LayerNorm is an exact affine map. The head's query is the key
    rotated by ``offset - 1`` positions (the input is shifted by one), with a
    huge gain: it attends to one position. ``sharpness`` scales the readout
    (1: near-deterministic; smaller: softer probabilities)."""
    D = 40
    model = MyGPT(GPTConfig(D, 2, 8, 1, 1)).eval()
    a, c, b = 4.0, 4.0, 8.0
    theta = 2 * math.pi / 1024
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.token_embedding.weight[:, :15] = a * torch.eye(15)
        t = torch.arange(model.positions.shape[0], dtype=torch.float32)
        pos = torch.zeros(model.positions.shape[0], D)
        pos[:, 30], pos[:, 31] = c * torch.cos(theta * t), c * torch.sin(theta * t)
        pos[:, 32], pos[:, 33] = -pos[:, 30], -pos[:, 31]
        model.positions = pos
        block = model.attention_blocks[0]
        block.ln.weight.fill_(1.0)
        mu = a / D
        sigma2 = (a * a + 2 * c * c) / D - mu * mu
        gain = 4e6 * sigma2 / (c * c)
        phi = -(offset - 1) * theta
        rot = torch.tensor([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        diff = torch.zeros(2, D)
        diff[0, 30], diff[0, 32], diff[1, 31], diff[1, 33] = 0.5, -0.5, 0.5, -0.5
        block.attn.w_k[0] = diff
        block.attn.w_q[0] = gain * (rot @ diff)
        block.attn.w_v[0, :15, :15] = torch.eye(15)
        block.attn.w_o[:15, 15:30] = b * torch.eye(15)
        model.mlp_blocks[0].ln.weight.fill_(1.0)
        model.unembed.weight[:, 15:30] = sharpness * torch.eye(15)
    return model


def copy_quizzes(changes, seed: int = 0) -> torch.Tensor:
    """Quizzes where block 4 is block 3 with ``changes[i]`` cells altered, in
    every structure: quiz i is solved by :func:`copy_model` iff changes[i] == 0."""
    g = torch.Generator().manual_seed(seed)
    n = len(changes)
    grids = torch.randint(0, N_COLORS, (n, 4, 10, 10), generator=g)
    grids[:, 1] = grids[:, 0]
    grids[:, 3] = grids[:, 2]
    for i, k in enumerate(changes):
        for blk in (1, 3):  # f(A) and f(B) alike: block 4 differs in every structure
            flat = grids[i, blk].flatten()
            cells = torch.randperm(100, generator=g)[:k]
            flat[cells] = (flat[cells] + 1 + torch.randint(0, N_COLORS - 1, (k,), generator=g)) % N_COLORS
            grids[i, blk] = flat.view(10, 10)
    quizzes = grids_to_quizzes(grids)
    return random_structures(quizzes, STRUCTURES[:4], generator=g)[0]


CHANGES = [0, 1, 0, 7, 0, 100, 3, 0, 2, 0]


# ------------------------------------------------------------ cache vs none


@pytest.mark.parametrize("structure", [None, 3, 5])
def test_cached_equals_uncached_greedy_mygpt(structure):
    model = tiny_model()
    q = random_quizzes(4, seed=1)
    if structure is None:
        q = random_structures(q, generator=torch.Generator().manual_seed(3))[0]
    a = generate(model, q, structure=structure, greedy=True)
    b = generate(model, q, structure=structure, greedy=True, use_cache=False)
    assert torch.equal(a, b)
    # something was generated
    expect = q if structure is None else reconfigure(q, STRUCTURES[structure - 1].markers)
    assert (a != expect).any()


def test_cached_equals_uncached_sampled_mygpt():
    model = tiny_model(seed=2)
    q = random_quizzes(3, seed=2)
    a = generate(model, q, generator=torch.Generator().manual_seed(7))
    b = generate(model, q, use_cache=False, generator=torch.Generator().manual_seed(7))
    c = generate(model, q, seed=7)
    assert torch.equal(a, b) and torch.equal(a, c)
    d = generate(model, q, seed=8)
    assert not torch.equal(a, d)


def test_hooked_cached_equals_uncached_and_mygpt():
    model = tiny_model(seed=4)
    hooked = hooked_of(model)
    q = random_quizzes(2, seed=4)
    # the explicit all-ones attention mask matters: many empty cells (token 0,
    # TL's usual pad token) in the prompt
    cells = quizzes_to_grids(q)
    cells[torch.rand(cells.shape, generator=torch.Generator().manual_seed(0)) < 0.5] = 0
    q = grids_to_quizzes(cells)
    ref = generate(model, q, greedy=True)
    cached = generate(hooked, q, greedy=True)
    assert torch.equal(cached, ref)
    # uncached TransformerLens is slow: compare on the last 12 cells only
    mask = torch.zeros(QUIZ_LEN, dtype=torch.bool)
    mask[-12:] = True
    u = generate_blocks(hooked, q, mask, 0.0, use_cache=False)
    c = generate_blocks(hooked, q, mask, 0.0)
    m = generate_blocks(model, q, mask, 0.0)
    assert torch.equal(u, c) and torch.equal(c, m)


def test_hooked_sampling_matches_mygpt_with_same_seed():
    model = tiny_model(seed=5)
    hooked = hooked_of(model)
    q = random_quizzes(2, seed=5)
    assert torch.equal(generate(model, q, seed=3), generate(hooked, q, seed=3))


# ---------------------------------------------------------------- prompts


def test_prompt_and_markers_kept_structure_5():
    model = tiny_model(seed=6)
    q = random_quizzes(3, seed=6)
    out = generate(model, q, structure=5, temperature=1.5, seed=0)
    s5 = reconfigure(q, STRUCTURES[4].markers)
    assert torch.equal(block_markers(out), block_markers(s5))
    assert torch.equal(out[:, :BLOCK_LEN], s5[:, :BLOCK_LEN])  # block 1 is prompt
    m = ar_mask(out)
    assert int(m.sum()) == 3 * 300
    assert torch.equal(out[~m], s5[~m])


def test_generate_blocks_keeps_unmasked_tokens_and_fills_masked():
    model = tiny_model(seed=7)
    q = random_quizzes(4, seed=7)
    mask = block_mask(4, [0], cells_only=True)  # block 1 only (the culture phase's first step)
    mask[2] = False  # one quiz untouched
    out = generate_blocks(model, q, mask, temperature=(1.5, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[~mask], q[~mask])
    assert torch.equal(out[2], q[2])
    assert (out[mask] != q[mask]).any()


def test_colors_only():
    model = tiny_model(seed=8)
    with torch.no_grad():  # make markers the most likely tokens
        model.unembed.bias[N_COLORS:] = 50.0
    q = random_quizzes(2, seed=8)
    m = ar_mask(q)
    assert (generate(model, q, greedy=True)[m] >= N_COLORS).all()
    assert (generate(model, q, greedy=True, colors_only=True)[m] < N_COLORS).all()


def test_temperature_forms():
    model = tiny_model(seed=9)
    q = random_quizzes(2, seed=9)
    greedy = generate(model, q, greedy=True)
    assert torch.equal(generate(model, q, temperature=0), greedy)
    assert torch.equal(generate(model, q, temperature=(0, 0, 0, 0)), greedy)
    assert torch.equal(generate(model, q, temperature=torch.zeros(QUIZ_LEN)), greedy)
    # temperature 0 on the last block (the only generated one) = greedy, whatever the others
    assert torch.equal(generate(model, q, temperature=(5.0, 5.0, 5.0, 0.0), seed=1), greedy)
    for bad in (-1.0, float("nan"), (1.0, 1.0), "hot"):
        with pytest.raises(GenerationError):
            generate(model, q, temperature=bad)


def test_structure_argument_and_errors():
    model = tiny_model(seed=10)
    q = random_quizzes(2, seed=10)
    out = generate(model, q, structure="f_A, A, f_B, B", greedy=True)
    assert torch.equal(block_markers(out), block_markers(reconfigure(q, STRUCTURES[1].markers)))
    with pytest.raises(GenerationError):
        generate(model, q, structure=9)
    with pytest.raises(GenerationError):
        generate_blocks(model, q, torch.ones(3, QUIZ_LEN, dtype=torch.bool))
    with pytest.raises(GenerationError):
        generate_blocks(model, q[:, :100], torch.ones(100, dtype=torch.bool))


def test_batches_and_training_mode_restored():
    model = tiny_model(seed=11)
    q = random_quizzes(5, seed=11)
    ref = generate(model, q, greedy=True, batch_size=5)
    model.train()
    seen = []
    out = generate(model, q, greedy=True, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert model.training
    assert torch.equal(out, ref)
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_logits_fn_aligned_for_both_kinds():
    model = tiny_model(seed=12)
    hooked = hooked_of(model)
    q = random_quizzes(2, seed=12)
    with torch.no_grad():
        assert (logits_fn(hooked)(q) - model(q)).abs().max() < 1e-4


# ------------------------------------------- a model that solves some quizzes


def test_copy_model_solves_exactly_the_unchanged_quizzes():
    model = copy_model()
    q = copy_quizzes(CHANGES)
    gen = generate(model, q, greedy=True)
    solved = (gen == q).all(1)
    assert solved.tolist() == [k == 0 for k in CHANGES]


@pytest.mark.parametrize("kind", ["mygpt", "hooked"])
def test_teacher_forced_greedy_equals_generated_greedy(kind):
    model = copy_model()
    if kind == "hooked":
        model = hooked_of(model)
    q = copy_quizzes(CHANGES, seed=1)
    scores = score_quizzes(model, q)
    gen = generate(model, q, greedy=True)
    generated = (gen == q).all(1)
    assert torch.equal(scores["greedy_correct"], generated)
    assert 0 < int(generated.sum()) < len(CHANGES)  # non-trivial: some right, some wrong
    # the number of wrong cells agrees too (errors do not propagate for this model)
    assert torch.equal(scores["n_wrong"], ((gen != q) & ar_mask(q)).sum(1))


def row_rule(quizzes: torch.Tensor) -> torch.Tensor:
    """A causal mock model (reference convention): in the last block, the first
    cell of a row copies the cell 101 back (same cell of block 3), the others
    copy the previous cell -- so errors propagate along a row."""
    n, T = quizzes.shape
    logits = torch.zeros(n, T, 15)
    t = torch.arange(T)
    src = torch.where((t - 3 * BLOCK_LEN - 1) % 10 == 0, t - 101, t - 1).clamp_min(0)
    src[0] = 0
    logits.scatter_(2, quizzes[:, src].unsqueeze(-1), 10.0)
    return logits


def test_teacher_forced_greedy_equals_generated_with_propagating_errors():
    g = torch.Generator().manual_seed(0)
    grids = torch.randint(0, N_COLORS, (12, 4, 10, 10), generator=g)
    # quiz i: f(B) rows constant = first column of B, except i % 3 == 1
    # (one cell changed mid-row) and i % 3 == 2 (first column changed)
    grids[:, 3] = grids[:, 2, :, :1].expand(12, 10, 10)
    grids[1::3, 3, 4, 6] = (grids[1::3, 3, 4, 6] + 1) % N_COLORS
    grids[2::3, 3, 7, 0] = (grids[2::3, 3, 7, 0] + 1) % N_COLORS
    q = grids_to_quizzes(grids)
    scores = score_quizzes(row_rule, q)
    gen = generate(row_rule, q, greedy=True)
    generated = (gen == q).all(1)
    assert torch.equal(scores["greedy_correct"], generated)
    assert generated.tolist() == [i % 3 == 0 for i in range(12)]
    # teacher forcing sees the true previous cell, generation its own: the
    # wrong-cell counts differ (2 vs 1), correctness does not
    for i in (1, 2):
        assert int(scores["n_wrong"][i]) == 2 and int((gen[i] != q[i]).sum()) == 1


def test_sampling_frequency_matches_expected_accuracy():
    """The fraction of sampled answers that are right estimates exp(sum log p)."""
    torch.manual_seed(0)
    n = 300
    q = copy_quizzes([0]).expand(n, QUIZ_LEN).clone()
    model = copy_model(sharpness=0.26)
    p = float(score_quizzes(model, q[:1])["log_prob"].exp())
    assert 0.3 < p < 0.7
    gen = generate(model, q, temperature=1.0, seed=0, batch_size=n)
    freq = float((gen == q).all(1).float().mean())
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n)
