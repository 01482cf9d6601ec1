"""Who runs next: per-session queues, continuous batching, and the one inference thread.

Handlers on the event loop `submit` jobs; each session has a FIFO queue, so its requests
run in the order the server received them. The inference thread repeatedly forms a batch
from the sessions that have work — round robin, one run per session, at most
`max_batch_size` sessions and `max_batch_tokens` tokens — runs it on the engine, and hands
the results back to the event loop in one call per batch.

A run is the session's head job, followed by the consecutive queued requests that may
share its chunk (pipelined Predicts), up to `prefill_chunk` tokens: a client that pipelines
single tokens is served at prefill speed, not one token per batch. A long prefill is cut
into chunks so it cannot starve single-token sessions; jobs that need several batches stay
at the head of their queue until done. Queues are not bounded here: every stream bounds
its own requests in flight (see `streams`), so work waits at the client, never refused.

The thread beats a heartbeat every batch and at least every `tick` while idle; if it ever
dies, every queued job fails with INTERNAL at once and `failure` says why, so calls end
instead of hanging and the watchdog can take the server out of service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from seqpredict.server.engine import Delivery, Engine, Run
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import Job, deliver
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
    """Queues work per session and feeds batches to the engine on its own thread."""

    def __init__(
        self,
        engine: Engine,
        config: BatchingConfig,
        metrics: Metrics,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self._housekeeping = housekeeping or (lambda: None)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()  # sessions with queued work that are not in the running batch
        self._queued = 0
        self._idle = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inline: list[Callable[[], None]] = []
        self.heartbeat = time.monotonic()
        self.failure: BaseException | None = None  # why the inference thread died, once it has

    # -- event loop side ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="seqpredict-inference", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> None:
        """Queue `job` behind the session's earlier work; raises RequestFailed when nothing runs jobs."""
        with self._lock:
            if self.failure is not None:
                raise RequestFailed(Code.INTERNAL, "internal error: the inference thread has stopped")
            if self._stopping:
                raise RequestFailed(Code.UNAVAILABLE, "the server is shutting down", limit="draining")
            queue = self._queues.get(job.session_id)
            if queue is None:
                queue = self._queues[job.session_id] = deque()
                self._ready.append(job.session_id)
            queue.append(job)
            self._queued += 1
            if self._idle:
                self._wakeup.notify()

    def run_in_engine(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the inference thread between batches (for work that touches the pool)."""
        with self._lock:
            self._inline.append(fn)
            self._wakeup.notify()

    @property
    def queued(self) -> int:
        return self._queued

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the inference thread."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- inference thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # whatever it was, nobody may be left waiting
            self.failure = exc
            log.critical("the inference thread died; failing every queued request", exc_info=exc)
            self._fail_everything()

    def _serve(self) -> None:
        self.engine.enter_thread()
        next_tick = time.monotonic() + self.config.tick
        while True:
            self.heartbeat = time.monotonic()
            batch, inline = self._next_batch(next_tick)
            for fn in inline:
                self._guard(fn)
            if batch is None:
                return
            if batch:
                out: list[Delivery] = []
                try:
                    self.engine.run(batch, out)
                except Exception:  # a bug must not take the whole server down: fail what it left unanswered
                    log.exception("engine batch of %d session(s) failed", len(batch))
                    self._fail_unanswered(batch, out)
                self._requeue(batch)
                self._post(out)
            if time.monotonic() >= next_tick:
                self._guard(self._housekeeping)
                next_tick = time.monotonic() + self.config.tick

    def _next_batch(self, next_tick: float) -> tuple[list[Run] | None, list[Callable[[], None]]]:
        """Wait for work; return (batch, inline calls). batch None: stopped and drained."""
        cfg = self.config
        with self._lock:
            while not self._ready and not self._inline:
                if self._stopping:
                    return None, []
                timeout = next_tick - time.monotonic()
                if timeout <= 0:
                    return [], []
                self._idle = True
                self._wakeup.wait(timeout)
                self._idle = False
                self.heartbeat = time.monotonic()
            inline, self._inline = self._inline, []
            if cfg.max_delay > 0:
                self._wait_to_fill()
            batch: list[Run] = []
            budget = cfg.max_batch_tokens
            dropped = 0
            while self._ready and len(batch) < cfg.max_batch_size and budget > 0:
                sid = self._ready.popleft()
                queue = self._queues[sid]
                while queue and queue[0].cancelled and not queue[0].started:  # dropped before batching
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
            return batch, inline

    def _wait_to_fill(self) -> None:
        """Hold the batch until max_batch_size sessions have work or max_delay has passed since
        the oldest waiting request arrived. Never when a running job continues (a generation's
        next token, a prefill's next chunk): those do not wait for company."""
        cfg = self.config
        if not self._ready or any(self._queues[sid][0].started for sid in self._ready):
            return
        deadline = min(self._queues[sid][0].received for sid in self._ready) + cfg.max_delay
        while len(self._ready) < cfg.max_batch_size and not self._stopping:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._idle = True
            self._wakeup.wait(remaining)  # every submit wakes us to count again
            self._idle = False
            self.heartbeat = time.monotonic()

    def _requeue(self, batch: list[Run]) -> None:
        """Pop finished jobs; sessions with more work go to the back of the line."""
        with self._lock:
            for run in batch:
                queue = self._queues[run.session_id]
                while queue and queue[0].done:
                    queue.popleft()
                    self._queued -= 1
                if queue:
                    self._ready.append(run.session_id)
                else:
                    del self._queues[run.session_id]

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

    def _fail_everything(self) -> None:
        error = RequestFailed(Code.INTERNAL, "internal error: the inference thread has stopped")
        with self._lock:
            jobs = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._ready.clear()
            self._queued = 0
        self._post([(job, error) for job in jobs])

    def _post(self, deliveries: list[Delivery]) -> None:
        if deliveries and self._loop is not None:
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_deliver_all, deliveries)

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("housekeeping task failed")


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


def _deliver_all(deliveries: list[Delivery]) -> None:
    for job, payload in deliveries:
        deliver(job, payload)
