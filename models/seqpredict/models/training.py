"""Truncated BPTT with the state carried across batches, the way the model is served.

The corpus is read by `batch_size` parallel streams; each batch is the next `seq_len`
characters of every stream, and each stream's state flows from one batch to the next
(detached, so gradients stop at the batch edge). Each stream is reset to the zero state
at a random position with probability `reset_prob` per batch: without that, a state that
is never reset drifts into regions it was never trained to leave (seen here: H=512
validation streams collapsing into gibberish after one epoch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from seqpredict.models.config import ModelConfig
from seqpredict.models.evaluation import EvalResult, evaluate
from seqpredict.models.network import CharRNN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    seq_len: int = 128
    lr: float = 2e-3
    # Anneal from lr to lr * final_lr_ratio over the last `anneal_fraction` of the budget:
    # a constant rate finds the basin fast, the anneal settles into it.
    anneal_fraction: float = 0.3
    final_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    reset_prob: float = 0.03
    max_steps: int = 0  # 0: no step budget
    max_minutes: float = 0.0  # 0: no time budget
    eval_every: int = 500
    eval_streams: int = 8
    seed: int = 1234
    threads: int = 0  # 0: leave torch's default

    def __post_init__(self) -> None:
        if self.max_steps <= 0 and self.max_minutes <= 0:
            raise ValueError("give a budget: max_steps > 0 or max_minutes > 0")


@dataclass
class CurvePoint:
    step: int
    chars: int
    minutes: float
    lr: float
    train_loss: float
    val_loss: float | None = None
    val_top1: float | None = None
    val_worst_window: float | None = None


@dataclass
class TrainOutcome:
    model: CharRNN  # weights of the best validation step
    best_val_loss: float
    best_step: int
    steps: int
    chars: int
    minutes: float
    curve: list[CurvePoint] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "chars": self.chars,
            "minutes": round(self.minutes, 2),
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
        }


class StreamBatcher:
    """Yields (inputs, targets, reset_mask) for `batch_size` streams reading `ids` in order."""

    def __init__(
        self, ids: torch.Tensor, batch_size: int, seq_len: int, reset_prob: float, gen: torch.Generator
    ) -> None:
        if ids.numel() < seq_len + 2:
            raise ValueError(f"training text of {ids.numel()} tokens is shorter than one sequence ({seq_len + 1})")
        self.ids, self.B, self.T, self.reset_prob, self.gen = ids, batch_size, seq_len, reset_prob, gen
        n = ids.numel()
        # Evenly spaced starts so the streams cover the corpus without overlapping early on.
        self.cursor = torch.arange(batch_size) * (n // batch_size)
        self.offsets = torch.arange(seq_len + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.ids.numel()
        reset = torch.rand(self.B, generator=self.gen) < self.reset_prob
        if reset.any():
            self.cursor[reset] = torch.randint(0, n - self.T - 1, (int(reset.sum()),), generator=self.gen)
        # A stream that reaches the end wraps to the start, with a fresh state.
        wrap = self.cursor + self.T + 1 > n
        self.cursor[wrap] = 0
        reset |= wrap
        window = self.ids[self.cursor.unsqueeze(1) + self.offsets]  # (B, T+1)
        self.cursor += self.T
        return window[:, :-1], window[:, 1:], reset


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    start = 1.0 - cfg.anneal_fraction
    if progress <= start:
        return cfg.lr * warm
    t = min(1.0, (progress - start) / cfg.anneal_fraction)
    ratio = cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr * warm * ratio


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    on_progress: Callable[[int, float, float], None] | None = None,
    on_best: Callable[[CharRNN, float, int], None] | None = None,
) -> TrainOutcome:
    """Train from scratch; return the best-validation weights and the curve.

    on_progress(step, fraction_done, loss) drives a progress bar; on_best(model, loss, step)
    lets the caller save each new best checkpoint as it happens.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = CharRNN(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = StreamBatcher(train_ids, cfg.batch_size, cfg.seq_len, cfg.reset_prob, gen)
    state = model.zero_state(cfg.batch_size)
    best_loss, best_step, best_weights = math.inf, 0, None
    curve: list[CurvePoint] = []
    start, step, running, lr = time.monotonic(), 0, None, cfg.lr

    def validate() -> EvalResult:
        return evaluate(model, val_ids, streams=cfg.eval_streams)

    model.train()
    while True:
        minutes = (time.monotonic() - start) / 60
        progress = max(
            step / cfg.max_steps if cfg.max_steps else 0.0,
            minutes / cfg.max_minutes if cfg.max_minutes else 0.0,
        )
        done = progress >= 1.0
        if done or (step > 0 and step % cfg.eval_every == 0):
            result = validate()
            point = CurvePoint(
                step,
                step * cfg.batch_size * cfg.seq_len,
                minutes,
                lr,
                running or math.nan,
                result.loss_nats,
                result.top1,
                result.worst_window_loss,
            )
            curve.append(point)
            log.info(
                "step %d: train %.4f val %.4f (top1 %.3f, worst window %.3f)",
                step,
                point.train_loss,
                result.loss_nats,
                result.top1,
                result.worst_window_loss,
            )
            if result.loss_nats < best_loss:
                best_loss, best_step = result.loss_nats, step
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if on_best:
                    on_best(model, best_loss, step)
        if done:
            break
        lr = learning_rate(cfg, step, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        inputs, targets, reset = batches.next()
        keep = (~reset).float().view(1, -1, 1)  # zero the state of streams that jumped
        state = tuple(s.detach() * keep for s in state)
        logits, state = model(inputs, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if on_progress:
            on_progress(step, progress, running)
    assert best_weights is not None, "validation never ran"
    model.load_state_dict(best_weights)
    model.eval()
    return TrainOutcome(
        model=model,
        best_val_loss=best_loss,
        best_step=best_step,
        steps=step,
        chars=step * cfg.batch_size * cfg.seq_len,
        minutes=(time.monotonic() - start) / 60,
        curve=curve,
    )


def curve_rows(curve: list[CurvePoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in curve]
