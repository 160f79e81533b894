"""Transform cells: predicted cells that differ from the paired grid."""

import torch

from culture import quiz as Q


def _quiz_from_grids(a, fa, b, fb):
    return Q.grids_to_quizzes(torch.stack([a, fa, b, fb]).unsqueeze(0))


def test_identity_rule_gives_an_empty_mask():
    g = torch.randint(11, (10, 10))
    h = torch.randint(11, (10, 10))
    quiz = _quiz_from_grids(g, g, h, h)
    assert not Q.transform_mask(quiz).any()


def test_recolouring_marks_exactly_the_recoloured_cells():
    b = torch.zeros(10, 10, dtype=torch.long)
    b[2:5, 3:7] = 3
    fb = b.clone()
    fb[b == 3] = 6
    a = torch.zeros(10, 10, dtype=torch.long)
    quiz = _quiz_from_grids(a, a, b, fb)
    mask = Q.transform_mask(quiz)
    expected = torch.zeros(1, Q.QUIZ_LEN, dtype=torch.bool)
    expected[0, 3 * Q.BLOCK_LEN + 1:] = (b == 3).flatten()
    assert torch.equal(mask, expected)
    assert int(mask.sum()) == 12


def test_mask_follows_the_structure():
    a, b = torch.zeros(10, 10, dtype=torch.long), torch.ones(10, 10, dtype=torch.long)
    fa, fb = a.clone(), b.clone()
    fa[5, 5], fb[9, 9] = 4, 2  # one changed cell in each pair
    canonical = _quiz_from_grids(a, fa, b, fb)
    changed = {Q.TOKEN_FB: 99, Q.TOKEN_B: 99, Q.TOKEN_FA: 55, Q.TOKEN_A: 55}
    for s in Q.EVAL_STRUCTURES:
        q = Q.reconfigure(canonical, s)
        mask = Q.transform_mask(q)
        assert int(mask.sum()) == 1
        assert not (mask & ~Q.ar_mask(q)).any()
        cell = int(mask[0].nonzero()) - 3 * Q.BLOCK_LEN - 1
        assert cell == changed[s.markers[3]]


def test_paired_clean_quizzes_ignore_prompt_noise():
    from culture.world import generate_quizzes

    clean = Q.reconfigure(generate_quizzes(50, tasks=["replace_color"], seed=0), Q.STRUCTURES[0])
    noisy = Q.add_prompt_noise(clean, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(Q.transform_mask(noisy, paired=clean), Q.transform_mask(clean))
    assert not torch.equal(Q.transform_mask(noisy), Q.transform_mask(clean))
