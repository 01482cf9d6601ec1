"""Who runs next: per-session queues, continuous batching, and the one inference thread.

Handlers on the event loop `submit` jobs; each session has a FIFO queue, so its requests
run in the order the server received them. The inference thread repeatedly forms a batch
from the sessions that have work — round robin, at most one job per session, at most
`max_batch_size` sessions and `max_batch_tokens` tokens (a long prefill is cut into chunks
so it cannot starve single-token sessions) — runs it on the engine, and hands the results
back to the event loop in one call per batch. Jobs that need several batches (long
prefills, generations) stay at the head of their session's queue until done.
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

from seqpredict.server.engine import Delivery, Engine
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import Job, deliver
from seqpredict.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 256
    # Tokens per batch: bounds how long single-token sessions wait behind prefills.
    max_batch_tokens: int = 2048
    # Longest piece of one request run in one batch.
    prefill_chunk: int = 512
    # After the first job arrives, wait up to this long for more (0: take what is queued).
    max_delay: float = 0.0
    # Jobs that may wait per session and in total before RESOURCE_EXHAUSTED.
    session_queue_limit: int = 64
    queue_limit: int = 100_000
    # Housekeeping period (idle expiry) on the inference thread.
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

    # -- event loop side ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="seqpredict-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job` behind the session's earlier work; raises RequestFailed when a queue is full."""
        cfg = self.config
        with self._lock:
            if self._stopping:
                raise RequestFailed(Code.UNAVAILABLE, "the server is shutting down", limit="draining")
            if self._queued >= cfg.queue_limit:
                raise RequestFailed(
                    Code.RESOURCE_EXHAUSTED, f"server queue is full ({cfg.queue_limit} requests)", limit="queue"
                )
            queue = self._queues.get(job.session_id)
            if queue is None:
                queue = self._queues[job.session_id] = deque()
                self._ready.append(job.session_id)
            elif len(queue) >= cfg.session_queue_limit:
                raise RequestFailed(
                    Code.RESOURCE_EXHAUSTED,
                    f"session {job.session_id!r} already has {len(queue)} requests queued"
                    f" (limit {cfg.session_queue_limit})",
                    limit="session_queue",
                )
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
        self.engine.enter_thread()
        next_tick = time.monotonic() + self.config.tick
        while True:
            batch, inline = self._next_batch(next_tick)
            for fn in inline:
                self._guard(fn)
            if batch is None:
                return
            if batch:
                try:
                    deliveries = self.engine.run(batch)
                except Exception as exc:  # a bug must not take the whole server down: fail this batch
                    log.exception("engine batch of %d failed", len(batch))
                    deliveries = [(job, RequestFailed(Code.INTERNAL, f"internal error: {exc}")) for job, _ in batch]
                    for job, _ in batch:
                        job.done = True
                self._requeue(batch)
                self._post(deliveries)
            if time.monotonic() >= next_tick:
                self._guard(self._housekeeping)
                next_tick = time.monotonic() + self.config.tick

    def _next_batch(self, next_tick: float) -> tuple[list[tuple[Job, int]] | None, list[Callable[[], None]]]:
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
            inline, self._inline = self._inline, []
            if cfg.max_delay > 0 and len(self._ready) < cfg.max_batch_size:
                self._idle = True
                self._wakeup.wait(cfg.max_delay)
                self._idle = False
            batch: list[tuple[Job, int]] = []
            budget = cfg.max_batch_tokens
            dropped: list[Job] = []
            while self._ready and len(batch) < cfg.max_batch_size and budget > 0:
                sid = self._ready.popleft()
                queue = self._queues[sid]
                while queue and queue[0].cancelled:  # dropped before batching
                    dropped.append(queue.popleft())
                if not queue:
                    del self._queues[sid]
                    continue
                job = queue[0]
                allotted = min(job.tokens_wanted(), cfg.prefill_chunk, budget)
                budget -= max(allotted, 1)
                batch.append((job, allotted))
            self._queued -= len(dropped)
            self.metrics.queue_depth.set(self._queued)
            return batch, inline

    def _requeue(self, batch: list[tuple[Job, int]]) -> None:
        """Pop finished jobs; sessions with more work go to the back of the line."""
        with self._lock:
            for job, _ in batch:
                queue = self._queues[job.session_id]
                if job.done:
                    queue.popleft()
                    self._queued -= 1
                if queue:
                    self._ready.append(job.session_id)
                else:
                    del self._queues[job.session_id]

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


def _deliver_all(deliveries: list[Delivery]) -> None:
    for job, payload in deliveries:
        deliver(job, payload)
