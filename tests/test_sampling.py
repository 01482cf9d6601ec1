"""Sampling stays inside top_k / top_p, even at the edge of the uniform draw."""

from __future__ import annotations

import math

import torch

from seqpredict.server.sampling import sample

JUST_BELOW_ONE = math.nextafter(1.0, 0.0)  # the largest draw random.random() can return


def test_a_draw_that_rounds_up_to_the_total_stays_inside_top_k() -> None:
    """Cast to float32, 1 - 2**-53 is 1.0: the target equals the cdf's total and nothing exceeds it.
    The token must still be among the top k — here the single most probable — never the least."""
    logits = torch.tensor([[5.0, 4.0, 3.0, -20.0, -30.0]])
    for top_k in (1, 2, 3):
        tokens, _, _ = sample(logits, [1.0], [top_k], [1.0], [JUST_BELOW_ONE])
        assert tokens[0] in range(top_k), f"top_k={top_k} sampled token {tokens[0]}"


def test_a_draw_that_rounds_up_stays_inside_top_p() -> None:
    logits = torch.tensor([[2.0, 1.9, -5.0, -9.0]])  # p ≈ (0.52, 0.47, ...): top_p 0.5 keeps one token
    tokens, _, _ = sample(logits, [1.0], [0], [0.5], [JUST_BELOW_ONE])
    assert tokens == [0]
    tokens, _, _ = sample(logits, [1.0], [0], [0.9], [JUST_BELOW_ONE])
    assert tokens[0] in (0, 1)


def test_the_whole_range_of_draws_maps_onto_the_kept_tokens() -> None:
    logits = torch.randn(64, 82, generator=torch.Generator().manual_seed(0))
    draws = [i / 64 for i in range(63)] + [JUST_BELOW_ONE]
    tokens, _, _ = sample(logits, [0.7] * 64, [5] * 64, [1.0] * 64, draws)
    top5 = logits.topk(5, dim=-1).indices
    assert all(t in top5[i].tolist() for i, t in enumerate(tokens))
