"""Choosing the next token for Generate: temperature, top-k, top-p, reproducible per seed.

Each request draws its uniform numbers from its own `random.Random(seed)` and sampling is
an inverse-CDF lookup, so the same seed from the same state gives the same text whatever
else shares the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample(
    logits: Tensor, temperature: list[float], top_k: list[int], top_p: list[float], uniform: list[float]
) -> tuple[list[int], list[float], list[float]]:
    """logits (G, V) → (token per row, its probability and log-probability under the untempered model).

    Runs on the inference thread, where autograd is off.

    temperature 0 is greedy; top_k 0 means no limit; top_p 1 means no nucleus cut.
    """
    _G, V = logits.shape
    logp = torch.log_softmax(logits, dim=-1)  # (G, V), reported back to the client
    temps = torch.tensor(temperature, dtype=logits.dtype).unsqueeze(1)  # (G, 1)
    greedy = temps.squeeze(1) == 0
    tempered = torch.softmax(logits / temps.clamp_min(1e-6), dim=-1)
    sorted_p, order = tempered.sort(dim=-1, descending=True)  # (G, V)
    k = torch.tensor([kk if kk > 0 else V for kk in top_k]).unsqueeze(1)
    keep = torch.arange(V).unsqueeze(0) < k
    before = sorted_p.cumsum(-1) - sorted_p  # probability mass ranked above each token
    keep &= before < torch.tensor(top_p, dtype=logits.dtype).unsqueeze(1)
    kept = sorted_p * keep
    cdf = kept.cumsum(-1)  # (G, V)
    target = torch.tensor(uniform, dtype=logits.dtype).unsqueeze(1) * cdf[:, -1:]
    # The kept tokens are a prefix of the sorted order. A draw just below 1 can round to the
    # total in float32, and then nothing in the cdf exceeds it: clamp to the last kept token,
    # never past it (that would pick the least probable token, outside top_k / top_p).
    last_kept = keep.sum(-1, keepdim=True) - 1  # (G, 1)
    index = torch.minimum(torch.searchsorted(cdf, target, right=True), last_kept)  # (G, 1)
    tokens = order.gather(1, index).squeeze(1)
    tokens = torch.where(greedy, logits.argmax(-1), tokens)
    chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens.tolist(), chosen.exp().tolist(), chosen.tolist()
