"""The single-process server's driver: one inference thread runs the engine; the event loop gets results.

Handlers on the event loop `submit` jobs (straight into the scheduler's queues); the thread
waits for work, takes a batch, runs it and hands the deliveries back to the loop in one call
per batch. It beats a heartbeat every batch and at least every `tick` while idle; if it ever
dies, every queued job fails with INTERNAL at once and `failure` says why, so calls end
instead of hanging and the watchdog can take the server out of service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from seqpredict.server.engine import Delivery
from seqpredict.server.jobs import Job, deliver
from seqpredict.server.scheduler import Scheduler, perf_deadline_to_wait

log = logging.getLogger(__name__)


class InferenceThread:
    """Drives a Scheduler on a thread of its own; the handle the service and the watchdog use."""

    def __init__(
        self,
        scheduler: Scheduler,
        housekeeping: Callable[[], None] | None = None,
        between_batches: Callable[[float], None] | None = None,
        next_commit: Callable[[], float] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self._housekeeping = housekeeping or (lambda: None)
        self._between_batches = between_batches or (lambda now: None)
        self._next_commit = next_commit or (lambda: float("inf"))
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inline: list[Callable[[], None]] = []
        self.heartbeat = time.monotonic()

    # -- event loop side ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="seqpredict-inference", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        return self.scheduler.failure

    @property
    def store_up(self) -> bool:
        durability = self.scheduler.durability
        return durability is None or durability.up

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    def submit(self, job: Job) -> None:
        self.scheduler.submit(job)

    def run_in_engine(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the inference thread between batches (for work that touches the pool)."""
        with self.scheduler.lock:
            self._inline.append(fn)
            self.scheduler.changed.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the inference thread."""
        with self.scheduler.lock:
            self.scheduler.stopping = True
            self.scheduler.changed.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- inference thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # whatever it was, nobody may be left waiting
            log.critical("the inference thread died; failing every queued request", exc_info=exc)
            self._post(self.scheduler.fail_everything(exc))

    def _serve(self) -> None:
        scheduler = self.scheduler
        scheduler.engine.enter_thread()
        next_tick = time.monotonic() + scheduler.config.tick
        while True:
            self.heartbeat = time.monotonic()
            if not self._wait(next_tick):
                return
            for fn in self._take_inline():
                self._guard(fn)
            batch = scheduler.take_batch()
            if batch:
                self._post(scheduler.step(batch))
            self._guard(lambda: self._between_batches(time.monotonic()))
            if time.monotonic() >= next_tick:
                self._guard(self._housekeeping)
                next_tick = time.monotonic() + scheduler.config.tick

    def _wait(self, next_tick: float) -> bool:
        """Until there is work (and, with max_delay, the batch is full or its time is up) or a
        housekeeping tick is due; False once stopping with nothing left to do."""
        scheduler = self.scheduler
        with scheduler.lock:
            scheduler.waiting = True
            try:
                while not scheduler.has_work() and not self._inline:
                    if scheduler.stopping:
                        return False
                    timeout = min(next_tick, self._next_commit()) - time.monotonic()
                    if timeout <= 0:
                        return True
                    scheduler.changed.wait(timeout)
                    self.heartbeat = time.monotonic()
                while (deadline := scheduler.fill_deadline()) is not None and not scheduler.stopping:
                    remaining = perf_deadline_to_wait(deadline)
                    if remaining <= 0:
                        break
                    scheduler.changed.wait(remaining)  # every submit wakes us to count again
                    self.heartbeat = time.monotonic()
                return True
            finally:
                scheduler.waiting = False

    def _take_inline(self) -> list[Callable[[], None]]:
        with self.scheduler.lock:
            inline, self._inline = self._inline, []
        return inline

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
