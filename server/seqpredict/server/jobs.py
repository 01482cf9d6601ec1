"""Work items that flow transport → scheduler → engine, and the results that flow back.

A job is created on the event loop, queued per session by the scheduler, advanced by the
engine on the inference thread (a long prefill or a generation takes several batches), and
answered on the event loop through `deliver`. Plain Python types only: no protobuf, no torch.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from seqpredict.server.errors import Code, RequestFailed

# (token ids, probabilities, log-probabilities), most probable first: three parallel lists,
# sliced straight out of one batched topk, so no per-entry tuples are built.
TopK = tuple[list[int], list[float], list[float]]
NO_TOP: TopK = ([], [], [])


@dataclass(slots=True)
class PredictResult:
    position: int
    created: bool = False
    next: TopK = NO_TOP
    steps: list[TopK] | None = None
    ended: bool = False
    error: RequestFailed | None = None


@dataclass(slots=True)
class GenerateEvent:
    """One generated token, or the final error; `finish` is set on the last event."""

    token: int = -1
    probability: float = 0.0
    position: int = 0
    created: bool = False
    finish: str = ""  # "", "max_tokens" or "stop"
    stop: str = ""
    error: RequestFailed | None = None


@dataclass(eq=False, slots=True)
class Job:
    session_id: str
    received: float  # time.perf_counter() when the request arrived
    cancelled: bool = False
    # Filled by the engine on the job's first batch.
    started: bool = False
    created: bool = False
    done: bool = False

    def tokens_wanted(self) -> int:
        """Tokens the job's next batch would process (0 for pure bookkeeping)."""
        return 0

    def fail(self, error: RequestFailed) -> None:
        raise NotImplementedError


@dataclass(eq=False, slots=True)
class PredictJob(Job):
    tokens: list[int] = field(default_factory=list)
    top_k: int = 5
    all_steps: bool = False
    reset: bool = False
    end: bool = False
    expected_position: int | None = None
    # Called on the event loop once `result` is set (the stream answering in order).
    waiter: Callable[[], None] | None = None
    result: PredictResult | None = None
    # Progress through `tokens` across prefill chunks.
    offset: int = 0
    steps: list[TopK] | None = None

    def tokens_wanted(self) -> int:
        return len(self.tokens) - self.offset

    def fail(self, error: RequestFailed) -> None:
        self.answer(PredictResult(position=error.position or 0, error=error))

    def answer(self, result: PredictResult) -> None:
        if self.result is None:
            self.result = result
            if self.waiter is not None:
                self.waiter()


@dataclass(eq=False, slots=True)
class GenerateJob(Job):
    prompt: list[int] = field(default_factory=list)
    max_tokens: int = 1
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    stop: tuple[str, ...] = ()
    reset: bool = False
    end: bool = False
    expected_position: int | None = None
    sink: asyncio.Queue[GenerateEvent] | None = None
    offset: int = 0  # prompt tokens fed so far
    generated: int = 0
    tail: str = ""  # the last characters generated, long enough to match any stop string
    logits: object = None  # next-token logits (a torch row) once the prompt is fed
    last_emit: float = 0.0
    sampled_probability: float = 0.0

    def tokens_wanted(self) -> int:
        return len(self.prompt) - self.offset if self.offset < len(self.prompt) else 1

    def fail(self, error: RequestFailed) -> None:
        if self.sink is not None:
            self.sink.put_nowait(GenerateEvent(error=error, position=error.position or 0))


@dataclass(eq=False, slots=True)
class SessionJob(Job):
    """GetSession (end=False) or EndSession (end=True), ordered with the session's other work."""

    end: bool = False
    future: asyncio.Future[object] | None = None

    def fail(self, error: RequestFailed) -> None:
        _resolve(self.future, error)


def _resolve(future: asyncio.Future | None, value: object) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def deliver(job: Job, payload: object) -> None:
    """Hand one result to the waiting handler; runs on the event loop thread."""
    if isinstance(payload, RequestFailed):
        job.fail(payload)
    elif isinstance(job, GenerateJob):
        if job.sink is not None:
            job.sink.put_nowait(payload)  # type: ignore[arg-type]
    elif isinstance(job, PredictJob):
        job.answer(payload)  # type: ignore[arg-type]
    else:
        _resolve(job.future, payload)  # type: ignore[attr-defined]


__all__ = [
    "Code",
    "GenerateEvent",
    "GenerateJob",
    "Job",
    "PredictJob",
    "PredictResult",
    "SessionJob",
    "TopK",
    "deliver",
]
