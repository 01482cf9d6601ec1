"""Predict: feed a session tokens and answer with the top-k after the last one (or after each).

Consecutive Predicts of one session may run as one chunk (a pipelining client's single
tokens run at prefill speed); each still gets its own answer, at its own boundary. A
Predict that has started is finished even if its caller goes away, so the session never
holds part of a request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from seqpredict.server.errors import RequestFailed
from seqpredict.server.jobs.base import NO_TOP, Chunk, Job, StepOutput, TopK

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps


@dataclass(slots=True)
class PredictResult:
    position: int
    incarnation: int = 0
    created: bool = False
    next: TopK = NO_TOP
    steps: list[TopK] | None = None
    ended: bool = False
    error: RequestFailed | None = None
    token_log_probs: list[float] | None = None  # with score: log p(token | state before it), per token
    log_prob_sum: float = 0.0


@dataclass(eq=False, slots=True)
class PredictJob(Job):
    tokens: list[int] = None  # type: ignore[assignment]
    top_k: int = 5
    all_steps: bool = False
    reset: bool = False
    end: bool = False
    expected_position: int | None = None
    expected_incarnation: int | None = None
    score: bool = False
    # Called on the event loop once `result` is set (the stream answering in order).
    waiter: Callable[[], None] | None = None
    result: PredictResult | None = None
    offset: int = 0  # progress through `tokens` across chunks
    steps: list[TopK] | None = None
    scores: list[float] = field(default_factory=list)

    kind: ClassVar[str] = "predict"
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = (
        "tokens",
        "top_k",
        "all_steps",
        "reset",
        "end",
        "expected_position",
        "expected_incarnation",
        "score",
    )

    def tokens_wanted(self) -> int:
        return len(self.tokens) - self.offset

    def can_follow(self) -> bool:
        return not self.reset  # a reset cannot share a chunk with the history before it

    def can_lead(self) -> bool:
        return not self.end

    def rewind(self) -> bool:
        if not Job.rewind(self):
            return False
        self.offset, self.steps, self.scores = 0, None, []
        return True

    def start(self, ops: SessionOps, pending: int) -> None:
        _slot, self.created = ops.open(
            self.session_id, self.expected_position, self.expected_incarnation, self.reset, pending
        )

    def chunk(self, allotted: int) -> Chunk:
        begin = self.offset
        end = min(len(self.tokens), begin + max(allotted, 1))
        every = self.all_steps and end > begin
        return Chunk(
            self.tokens[begin:end], answer=end == len(self.tokens), every_step=every, top_k=self.top_k, score=self.score
        )

    def absorb(self, out: StepOutput, ops: SessionOps) -> PredictResult | None:
        self.offset += out.fed
        if self.all_steps and out.fed:
            self.steps = (self.steps or []) + out.top  # type: ignore[operator]
        if out.scores:
            self.scores += out.scores
        if self.offset < len(self.tokens):
            return None
        result = PredictResult(out.position, out.incarnation, self.created, out.top[-1] if out.top else NO_TOP)
        if self.all_steps:
            result.steps = self.steps
        if self.score:
            result.token_log_probs = self.scores
            result.log_prob_sum = math.fsum(self.scores)
        if self.end:
            ops.end(self.session_id)
            result.ended = True
        self.done = True
        return result

    def complete(self, payload: object) -> None:
        if self.result is None:
            self.result = payload  # type: ignore[assignment]
            if self.waiter is not None:
                self.waiter()

    def fail(self, error: RequestFailed) -> None:
        self.complete(PredictResult(position=error.position or 0, incarnation=error.incarnation or 0, error=error))
