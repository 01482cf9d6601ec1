"""The reference every served output is compared with: a session's tokens fed alone through the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seqpredict.models import CharRNN

TOLERANCE = 1e-5  # the equivalence contract: probabilities within 1e-5 in float32


@torch.inference_mode()
def reference_probabilities(model: CharRNN, tokens: Sequence[int]) -> torch.Tensor:
    """(len(tokens) + 1, V): row p is the next-token distribution after the first p tokens."""
    state = model.zero_state(1)
    first = torch.softmax(model.next_logits(state), dim=-1)  # (1, V) from the zero state
    if not tokens:
        return first
    logits, _ = model(torch.tensor([list(tokens)]), state)  # (1, T, V)
    return torch.cat([first, torch.softmax(logits[0], dim=-1)])


def assert_top_matches(top: Sequence, reference_row: torch.Tensor, where: str) -> None:
    """`top` (TokenProbability-like with id/probability) equals the reference's best tokens."""
    k = len(top)
    assert k > 0, f"{where}: empty top-k"
    best = reference_row.topk(k)
    served = torch.tensor([t.probability for t in top])
    assert torch.allclose(served, best.values, atol=TOLERANCE, rtol=0), f"{where}: {served} vs {best.values}"
    for t in top:
        assert abs(t.probability - reference_row[t.id].item()) <= TOLERANCE, f"{where}: token {t.id}"
