"""What every job is to the scheduler and the engine, and what the engine hands back.

A job is created on the event loop, queued per session by the scheduler, advanced by the
engine on the inference thread (a long prefill or a generation takes several batches), and
answered on the event loop through `deliver`. Each kind says what it needs from a batch and
what it does with the result, so the scheduler and the engine never ask which kind a job is:

    tokens_wanted()     tokens the next batch would feed (0: bookkeeping, or predict from the state)
    can_follow/lead()   may share one chunk with the session's job before / after it (pipelining)
    rewind()            back to not started, to run again (the session's copy was stale)
    start(ops, pending) first batch: checks and bookkeeping on the session; a payload ends the job
    chunk(allotted)     what to feed in this batch and what to compute after it (None: finished)
    absorb(out, ops)    what the computed values mean for it: a payload to deliver, or None for now
    complete / fail     on the event loop: hand a payload or an error to whoever waits

Plain Python types only across the boundary: no protobuf; torch only as opaque logits rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar

from seqpredict.server.errors import RequestFailed

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps

# (token ids, probabilities, log-probabilities), most probable first: three parallel lists,
# sliced straight out of one batched topk, so no per-entry tuples are built.
TopK = tuple[list[int], list[float], list[float]]
NO_TOP: TopK = ([], [], [])


@dataclass(slots=True)
class Sampling:
    """Sample one token here from the logits before it; the engine samples a batch's rows together."""

    temperature: float
    top_k: int  # 0: no limit
    top_p: float
    uniform: float  # the job's own draw in [0, 1), so a seed reproduces whatever shares the batch
    prior: Any = None  # the logits row (V,) before the token; None: from the session's state


@dataclass(slots=True)
class Chunk:
    """What one job feeds in this batch and what the engine computes for it afterwards."""

    tokens: list[int]
    # Logits after the last token of this chunk (from the state itself when it feeds nothing).
    answer: bool = False
    # Logits after every token of this chunk instead (all_steps).
    every_step: bool = False
    # Top-k of those logits (0: none).
    top_k: int = 0
    # The last point's raw logits row, for a job that samples from it in a later batch.
    keep_logits: bool = False
    # The log-probability of each token under the state before it (scoring).
    score: bool = False
    # Instead of `tokens`: one token sampled in this batch, then fed.
    sample: Sampling | None = None


@dataclass(slots=True)
class StepOutput:
    """What the engine computed for one chunk."""

    position: int  # the session's position after the chunk
    incarnation: int
    fed: int  # tokens the chunk fed
    top: list[TopK] | None = None  # per point (one unless every_step), when top_k > 0
    logits: Any = None  # the last point's logits row (V,), with keep_logits
    scores: list[float] | None = None  # with `score`: log p(token | state before it), per token fed
    sampled: int = -1  # with `sample`: the token, its probability and log-probability (untempered model)
    sampled_probability: float = 0.0
    sampled_log_probability: float = 0.0


# Runs again on fresh state before giving up (ABORTED): a request loses a compare-and-set only to a
# replica that wrote the session meanwhile, so under a sustained two-writer race a few are common
# (tests/test_replicas.py saw 4); many more means something keeps refusing its commit.
MAX_REWINDS = 16

# One C-level getter per job kind for its wire fields: built on first use.
_GETTERS: dict[type, Callable[[Any], Any]] = {}


@dataclass(eq=False, slots=True)
class Job:
    session_id: str
    received: float  # time.perf_counter() when the request arrived
    cancelled: bool = False  # the caller is gone: dropped if not started, otherwise finished quietly
    started: bool = False
    done: bool = False
    created: bool = False  # this job created its session
    answered_at: float = 0.0  # when its last payload left the engine (per-token latency of a generation)
    # Told when the caller goes away (a frontend forwards it to the engine process).
    on_cancel: Callable[[Job], None] | None = None
    wire_id: int = 0  # a frontend's id for the job in the engine process
    released: int = 0  # answers of it that left the engine (counted where a shared store may withhold them)
    rewinds: int = 0  # times it ran on a stale copy and was run again

    kind: ClassVar[str] = "session"  # the `kind` label of the request metrics
    per_session: ClassVar[bool] = True  # False: queued under a key of its own (ListSessions)
    # The fields that cross to an engine in another process, in order (see `wire`).
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def cancel(self) -> None:
        """The caller is gone: drop the job if it has not started; a started one finishes quietly."""
        if not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel(self)

    def wire_values(self) -> list[Any]:
        getter = _GETTERS.get(type(self))
        if getter is None:
            getter = _GETTERS[type(self)] = attrgetter(*self.WIRE_FIELDS) if self.WIRE_FIELDS else lambda job: ()
        values = getter(self)
        return list(values) if isinstance(values, tuple) and len(self.WIRE_FIELDS) != 1 else [values]

    @classmethod
    def from_wire(cls, session_id: str, received: float, values: list[Any]) -> Job:
        return cls(session_id, received, **dict(zip(cls.WIRE_FIELDS, values, strict=True)))

    def rewind(self) -> bool:
        """Back to not started, to run again on the session's stored state (the copy it ran on was
        stale); False when it cannot be, because part of it was already answered."""
        if self.released or self.rewinds >= MAX_REWINDS:
            return False
        self.rewinds += 1
        self.started = self.done = self.created = False
        return True

    def tokens_wanted(self) -> int:
        return 0

    def can_follow(self) -> bool:
        """May run in one chunk right after the session's previous job (which allowed it)."""
        return False

    def can_lead(self) -> bool:
        """May have the session's next job run in the same chunk after it."""
        return False

    def start(self, ops: SessionOps, pending: int) -> object | None:
        """First batch: bookkeeping on the session. A payload (or RequestFailed) ends the job here.

        `pending`: tokens that earlier jobs of the same chunk feed before this one.
        """
        raise NotImplementedError

    def chunk(self, allotted: int) -> Chunk | None:
        """What to feed now, given at most `allotted` tokens (at least one when it wants any)."""
        return None

    def absorb(self, out: StepOutput, ops: SessionOps) -> object | None:
        raise NotImplementedError

    # -- on the event loop ----------------------------------------------------------------------------
    def complete(self, payload: object) -> None:
        raise NotImplementedError

    def fail(self, error: RequestFailed) -> None:
        raise NotImplementedError


def deliver(job: Job, payload: object) -> None:
    """Hand one result to the waiting handler; runs on the event loop thread."""
    if isinstance(payload, RequestFailed):
        job.fail(payload)
    else:
        job.complete(payload)
