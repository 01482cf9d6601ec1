"""Who runs next: per-session queues and continuous batching, whatever drives the engine.

Jobs are submitted (from any thread) into per-session FIFO queues, so a session's requests
run in the order the server received them. A driver — the inference thread of a
single-process server (`inference_thread`), or the engine process's loop (`engine_loop`) —
repeatedly takes a batch: round robin over the sessions that have work, one run per
session, at most `max_batch_size` sessions and `max_batch_tokens` tokens; runs it on the
engine (with a shared session store, loading the batch's sessions before and committing them
after: `durability`); and hands the deliveries back to whoever waits for them.

A run is the session's head job, followed by the consecutive queued requests that may
share its chunk (pipelined Predicts), up to `prefill_chunk` tokens: a client that pipelines
single tokens is served at prefill speed, not one token per batch. A long prefill is cut
into chunks so it cannot starve single-token sessions; jobs that need several batches stay
at the head of their queue until done. Queues are not bounded here: every stream bounds
its own requests in flight (see `streams`), so work waits at the client, never refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

from seqpredict.server.durability import Durability
from seqpredict.server.engine import Delivery, Engine, Run
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import Job
from seqpredict.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 256
    # Tokens per batch: bounds how long single-token sessions wait behind prefills.
    max_batch_tokens: int = 2048
    # Longest run of one session in one batch (a piece of a long request, or pipelined requests).
    prefill_chunk: int = 512
    # When new work arrives, wait up to this long for a fuller batch (0: take what is queued).
    max_delay: float = 0.0
    # Housekeeping period (idle expiry, snapshots) and the longest silence of the heartbeat when idle.
    tick: float = 1.0


class Scheduler:
    """Per-session queues and batch formation. `submit` is thread-safe; the rest belongs to the driver."""

    def __init__(self, engine: Engine, config: BatchingConfig, metrics: Metrics) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.lock = threading.Lock()
        # Notified on every submit while the driver waits on it (the in-process inference thread).
        self.changed = threading.Condition(self.lock)
        self.waiting = False
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()  # sessions with queued work that are not in the running batch
        self._queued = 0
        self.stopping = False
        self.failure: BaseException | None = None  # why the engine stopped for good, once it has
        # With a shared session store: loads a batch's sessions before it and commits them after.
        self.durability: Durability | None = None

    # -- any thread --------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue `job` behind the session's earlier work; raises RequestFailed when nothing runs jobs."""
        with self.lock:
            self._check_open()
            self._enqueue(job)
            if self.waiting:
                self.changed.notify()

    def submit_many(self, jobs: Iterable[Job]) -> list[tuple[Job, RequestFailed]]:
        """Queue several jobs under one lock; those refused come back with the reason."""
        refused: list[tuple[Job, RequestFailed]] = []
        with self.lock:
            for job in jobs:
                try:
                    self._check_open()
                except RequestFailed as exc:
                    refused.append((job, exc))
                    continue
                self._enqueue(job)
        return refused

    def _check_open(self) -> None:
        if self.failure is not None:
            raise RequestFailed(Code.INTERNAL, "internal error: the inference engine has stopped")
        if self.stopping:
            raise RequestFailed(Code.UNAVAILABLE, "the server is shutting down", limit="draining")

    def _enqueue(self, job: Job) -> None:
        queue = self._queues.get(job.session_id)
        if queue is None:
            queue = self._queues[job.session_id] = deque()
            self._ready.append(job.session_id)
        queue.append(job)
        self._queued += 1

    @property
    def queued(self) -> int:
        return self._queued

    # -- the driver -----------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self._ready)

    def fill_deadline(self) -> float | None:
        """With max_delay: the time (perf_counter) until which to wait for a fuller batch, or None.

        Only new work waits for company: when a running job continues (a generation's next
        token, a prefill's next chunk), or the batch is already full, the batch runs at once.
        Call with the lock held.
        """
        cfg = self.config
        if cfg.max_delay <= 0 or not self._ready or len(self._ready) >= cfg.max_batch_size:
            return None
        heads = [self._queues[sid][0] for sid in self._ready]
        if any(job.started for job in heads):
            return None
        return min(job.received for job in heads) + cfg.max_delay

    def full(self) -> bool:
        return len(self._ready) >= self.config.max_batch_size

    def take_batch(self) -> list[Run]:
        """The next batch (possibly empty); jobs cancelled before they started are dropped here."""
        cfg = self.config
        with self.lock:
            batch: list[Run] = []
            budget = cfg.max_batch_tokens
            dropped = 0
            while self._ready and len(batch) < cfg.max_batch_size and budget > 0:
                sid = self._ready.popleft()
                queue = self._queues[sid]
                while queue and queue[0].cancelled and not queue[0].started:
                    queue.popleft()
                    dropped += 1
                if not queue:
                    del self._queues[sid]
                    continue
                entries, used = _run_of(queue, min(cfg.prefill_chunk, budget))
                budget -= used
                batch.append(Run(sid, entries))
            self._queued -= dropped
            self.metrics.queue_depth.set(self._queued)
            return batch

    def step(self, batch: list[Run]) -> list[Delivery]:
        """Run one batch on the engine and put its sessions back in line; what to deliver."""
        out: list[Delivery] = []
        durability = self.durability
        try:
            self.engine.begin_batch()
            if durability is not None:
                durability.prepare(batch, out)
            self.engine.run(batch, out)
            if durability is not None:
                durability.settle(batch, out)
        except Exception:  # a bug must not take the whole server down: fail what it left unanswered
            log.exception("engine batch of %d session(s) failed", len(batch))
            self._fail_unanswered(batch, out)
        self._requeue(batch)
        return out

    def _requeue(self, batch: list[Run]) -> None:
        """Pop finished jobs; sessions with more work go to the back of the line."""
        with self.lock:
            for run in batch:
                queue = self._queues[run.session_id]
                while queue and queue[0].done:
                    queue.popleft()
                    self._queued -= 1
                if queue:
                    self._ready.append(run.session_id)
                else:
                    del self._queues[run.session_id]
            self.metrics.queue_depth.set(self._queued)

    def _fail_unanswered(self, batch: list[Run], out: list[Delivery]) -> None:
        """After an engine exception: jobs already answered stay answered; the others fail with
        INTERNAL, and the sessions they had started on are dropped (their state may be half-updated)."""
        answered = {id(job) for job, _ in out}
        error = RequestFailed(Code.INTERNAL, "internal error while running this request; the session was discarded")
        discard: list[str] = []
        for run in batch:
            for job, _ in run.entries:
                if id(job) in answered and job.done:
                    continue
                if job.started:
                    discard.append(job.session_id)
                job.done = True
                out.append((job, error))
                self.metrics.count_failure(job.kind, error)
        self.engine.discard(sorted(set(discard)))

    def fail_everything(self, failure: BaseException) -> list[Delivery]:
        """The engine stopped for good: every queued job fails with INTERNAL, and so does every later submit."""
        error = RequestFailed(Code.INTERNAL, "internal error: the inference engine has stopped")
        with self.lock:
            self.failure = failure
            jobs = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._ready.clear()
            self._queued = 0
        return [(job, error) for job in jobs]


def _run_of(queue: deque[Job], room: int) -> tuple[list[tuple[Job, int]], int]:
    """The head job with up to `room` tokens, and the queued jobs that may share its chunk → (entries, tokens).

    A job that feeds nothing (predict from the current state) still counts as one token, so a
    run of them is bounded too.
    """
    head = queue[0]
    allotted = min(head.tokens_wanted(), room)
    entries, used = [(head, allotted)], max(allotted, 1)
    if allotted < head.tokens_wanted():
        return entries, used
    previous = head
    for job in islice(queue, 1, None):
        if used >= room or job.cancelled or not (previous.can_lead() and job.can_follow()):
            break
        n = min(job.tokens_wanted(), room - used)
        entries.append((job, n))
        used += max(n, 1)
        if n < job.tokens_wanted():
            break
        previous = job
    return entries, used


def perf_deadline_to_wait(deadline: float) -> float:
    """Seconds from now until a perf_counter deadline (0 when it has passed)."""
    return max(0.0, deadline - time.perf_counter())
