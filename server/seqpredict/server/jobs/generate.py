"""Generate: feed an optional prompt, then sample one token per batch until max_tokens or a stop string.

Every sampled token is fed to the session, so the session continues from it. A generation
whose caller went away stops before its next token (never inside the prompt: the prompt
is one request and is fed whole or not at all).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from seqpredict.server.errors import RequestFailed
from seqpredict.server.jobs.base import Chunk, Job, Sampling, StepOutput

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps


@dataclass(slots=True)
class GenerateEvent:
    """One generated token, or the final error; `finish` is set on the last event."""

    token: int = -1
    probability: float = 0.0
    log_probability: float = 0.0
    position: int = 0
    incarnation: int = 0
    created: bool = False
    finish: str = ""  # "", "max_tokens" or "stop"
    stop: str = ""
    error: RequestFailed | None = None


@dataclass(eq=False, slots=True)
class GenerateJob(Job):
    prompt: list[int] = field(default_factory=list)
    max_tokens: int = 1
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None  # the same seed from the same state gives the same text
    rng: random.Random | None = None  # made from the seed where the job runs
    stop: tuple[str, ...] = ()
    reset: bool = False
    end: bool = False
    expected_position: int | None = None
    expected_incarnation: int | None = None
    sink: asyncio.Queue[GenerateEvent] | None = None
    offset: int = 0  # prompt tokens fed so far
    generated: int = 0
    tail: str = ""  # the last characters generated, long enough to match any stop string
    logits: Any = None  # next-token logits (a torch row) once the prompt is fed

    kind: ClassVar[str] = "generate"
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = (
        "prompt",
        "max_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "stop",
        "reset",
        "end",
        "expected_position",
        "expected_incarnation",
    )

    def tokens_wanted(self) -> int:
        return len(self.prompt) - self.offset if self.offset < len(self.prompt) else 1

    def rewind(self) -> bool:
        if not Job.rewind(self):
            return False
        self.offset, self.generated, self.tail, self.logits, self.rng = 0, 0, "", None, None
        return True

    def start(self, ops: SessionOps, pending: int) -> None:
        _slot, self.created = ops.open(
            self.session_id, self.expected_position, self.expected_incarnation, self.reset, pending
        )
        self.rng = random.Random(self.seed)  # None: seeded from the system's randomness

    def chunk(self, allotted: int) -> Chunk | None:
        if self.offset < len(self.prompt):
            end = min(len(self.prompt), self.offset + max(allotted, 1))
            return Chunk(self.prompt[self.offset : end], answer=end == len(self.prompt), keep_logits=True)
        if self.cancelled:
            return None  # nobody reads the next token: stop here, between tokens
        sampling = Sampling(self.temperature, self.top_k, self.top_p, self.rng.random(), self.logits)  # type: ignore[union-attr]
        return Chunk([], answer=True, keep_logits=True, sample=sampling)

    def absorb(self, out: StepOutput, ops: SessionOps) -> GenerateEvent | None:
        self.logits = out.logits
        if out.sampled < 0:  # a piece of the prompt
            self.offset += out.fed
            return None
        self.generated += 1
        event = GenerateEvent(
            token=out.sampled,
            probability=out.sampled_probability,
            log_probability=out.sampled_log_probability,
            position=out.position,
            incarnation=out.incarnation,
            created=self.created and self.generated == 1,
        )
        if self.stop:
            longest = max(len(s) for s in self.stop)
            self.tail = (self.tail + ops.vocabulary[out.sampled])[-longest:]
            matched = next((s for s in self.stop if self.tail.endswith(s)), "")
            if matched:
                event.finish, event.stop = "stop", matched
        if not event.finish and self.generated >= self.max_tokens:
            event.finish = "max_tokens"
        if event.finish:
            if self.end:
                ops.end(self.session_id)
            self.done = True
        return event

    def complete(self, payload: object) -> None:
        if self.sink is not None:
            self.sink.put_nowait(payload)  # type: ignore[arg-type]

    def fail(self, error: RequestFailed) -> None:
        self.complete(GenerateEvent(error=error, position=error.position or 0, incarnation=error.incarnation or 0))
