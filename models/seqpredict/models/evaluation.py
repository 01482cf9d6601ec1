"""Stateful evaluation: the text is fed in order with the state carried, as a session would be."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from seqpredict.models.network import CharRNN


@dataclass(frozen=True)
class EvalResult:
    tokens: int
    loss_nats: float
    top1: float
    top5: float
    seconds: float
    # Worst loss over any window of `window` predictions: a model whose state degenerates
    # on long inputs shows it here even when the average still looks fine.
    worst_window_loss: float
    window: int

    @property
    def bits_per_char(self) -> float:
        return self.loss_nats / math.log(2)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["bits_per_char"] = self.bits_per_char
        d["tokens_per_second"] = self.tokens_per_second
        return d


@torch.inference_mode()
def evaluate(model: CharRNN, ids: torch.Tensor, streams: int = 1, chunk: int = 512, window: int = 10_000) -> EvalResult:
    """Next-token loss/accuracy over `ids` split into `streams` contiguous pieces fed in parallel.

    streams=1 is exactly one session reading the whole text; more streams are faster and
    still carry each piece's state from its first character to its last.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    n = (ids.numel() - 1) // streams
    if n < 1:
        raise ValueError(f"text of {ids.numel()} tokens is too short for {streams} streams")
    inputs = torch.stack([ids[s * n : s * n + n] for s in range(streams)])  # (S, n)
    targets = torch.stack([ids[s * n + 1 : s * n + n + 1] for s in range(streams)])  # (S, n)
    state = model.zero_state(streams)
    losses, top1, top5 = [], [], []
    for t0 in range(0, n, chunk):
        logits, state = model(inputs[:, t0 : t0 + chunk], state)  # (S, T, V)
        tgt = targets[:, t0 : t0 + chunk]
        losses.append(F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none"))  # (S, T)
        best5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (S, T, 5)
        hits = best5 == tgt.unsqueeze(-1)
        top1.append(hits[..., 0])
        top5.append(hits.any(-1))
    loss = torch.cat(losses, dim=1)  # (S, n)
    w = min(window, n)
    windows = loss[:, : (n // w) * w].reshape(streams, -1, w).mean(-1)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return EvalResult(
        tokens=loss.numel(),
        loss_nats=loss.mean().item(),
        top1=torch.cat(top1, 1).float().mean().item(),
        top5=torch.cat(top5, 1).float().mean().item(),
        seconds=seconds,
        worst_window_loss=windows.max().item(),
        window=w,
    )
