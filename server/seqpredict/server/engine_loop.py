"""The engine process's loop: one thread that reads jobs off a socket, runs batches and sends answers.

Frontends (and the supervisor) connect DEALER sockets to the engine's ROUTER socket. One
thread owns the socket, the scheduler and the pool — no hand-off between threads on the
path of a request: poll the socket (for as long as there is nothing to run, or until a
batch with max_delay may go), take every message that arrived, queue its jobs, run a
batch, send each frontend the answers that are its own in one message. Every quarter of a
second each frontend also gets the engine's status (heartbeat age, queue depth), which is
how it knows the engine lives.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

import zmq

from seqpredict.server.engine import Delivery
from seqpredict.server.engine_side import EngineSide
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import Job
from seqpredict.server.wire import ENCODER, TO_ENGINE, FromEngine, Reply, Status, encode_payload, job_from_spec

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 0.25


class EngineLoop:
    def __init__(self, side: EngineSide, endpoint: str, parent_pid: int | None = None) -> None:
        self.side = side
        self.scheduler = side.scheduler
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        # Nothing is ever dropped or blocked on our side: every frontend bounds what it sends
        # (its streams' windows), and answers must reach it.
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        # The supervisor's exit (even SIGKILL) is readable on a pidfd: then stop as if asked to.
        self.parent_fd = os.pidfd_open(parent_pid) if parent_pid is not None else None
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)
        self.peers: set[bytes] = set()
        self.jobs: dict[tuple[bytes, int], Job] = {}  # jobs in flight, by (frontend, its id): for cancels
        self.origin: dict[int, tuple[bytes, int]] = {}  # id(job) → (frontend, its id)
        self.heartbeat = time.monotonic()
        self.stop_requested = False

    def run(self) -> None:
        """Serve until asked to stop and everything queued is done."""
        side, scheduler = self.side, self.scheduler
        side.engine.enter_thread()
        tick = scheduler.config.tick
        next_tick = next_status = time.monotonic()
        while True:
            self.heartbeat = now = time.monotonic()
            events = dict(self.poller.poll(self._timeout_ms(now, next_tick, next_status)))
            if self.sock in events:
                self._receive()
            if self.parent_fd is not None and self.parent_fd in events:
                log.error("the supervisor is gone: finishing what is queued, then stopping")
                self.poller.unregister(self.parent_fd)
                self.parent_fd = None
                self.request_stop()
            if self.stop_requested and not scheduler.has_work():
                break
            if scheduler.has_work() and self._batch_may_go():
                batch = scheduler.take_batch()
                if batch:
                    self._send(scheduler.step(batch))
            now = time.monotonic()
            side.between_batches(now)
            if now >= next_status:
                self._status()
                next_status = now + STATUS_PERIOD_S
            if now >= next_tick:
                try:
                    side.housekeeping()
                except Exception:
                    log.exception("housekeeping failed")
                next_tick = time.monotonic() + tick
        self._status()

    def _batch_may_go(self) -> bool:
        deadline = self.scheduler.fill_deadline()
        return deadline is None or time.perf_counter() >= deadline or self.stop_requested

    def _timeout_ms(self, now: float, next_tick: float, next_status: float) -> int:
        scheduler = self.scheduler
        if scheduler.has_work():
            deadline = scheduler.fill_deadline()
            if deadline is None or self.stop_requested:
                return 0
            return max(0, int((deadline - time.perf_counter()) * 1000))
        wake = min(next_tick, next_status, self.side.next_commit())
        return max(0, int((wake - now) * 1000))

    # -- messages in ------------------------------------------------------------------------------------
    def _receive(self) -> None:
        refused: list[Delivery] = []
        while True:
            try:
                peer, data = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = TO_ENGINE.decode(data)
            except Exception:
                log.exception("undecodable message from %r: dropped", peer)
                continue
            self.peers.add(peer)
            if message.stop:
                log.info("asked to stop: finishing %d queued request(s)", self.scheduler.queued)
                self.request_stop()
            received, jobs = time.perf_counter(), []
            for spec in message.jobs:
                try:
                    job = job_from_spec(spec, received)
                except Exception as exc:  # a frontend of another version, or a bug: refuse this job only
                    log.exception("cannot make a job of %s", spec.kind)
                    self._reply_failure(peer, spec.id, f"internal error: the engine cannot run this request ({exc})")
                    continue
                self.jobs[(peer, spec.id)] = job
                self.origin[id(job)] = (peer, spec.id)
                jobs.append(job)
            refused += self.scheduler.submit_many(jobs)
            for wire_id in message.cancels:
                # The frontend has forgotten the job, so nothing it does from now on is sent: forget it
                # here too. A job that has not started is dropped unrun and never delivers again.
                job = self.jobs.pop((peer, wire_id), None)
                if job is not None:
                    job.cancelled = True
                    del self.origin[id(job)]
        for job, _error in refused:
            job.done = True
        self._send(refused)  # type: ignore[arg-type]

    def request_stop(self) -> None:
        """Refuse new jobs, finish the queued ones, then `run` returns."""
        self.stop_requested = True
        self.scheduler.stopping = True

    # -- messages out -----------------------------------------------------------------------------------
    def _send(self, deliveries: list[Delivery]) -> None:
        by_peer: dict[bytes, list[Reply]] = defaultdict(list)
        for job, payload in deliveries:
            origin = self.origin.get(id(job))
            if origin is None:
                continue
            peer, wire_id = origin
            try:
                kind, value = encode_payload(payload)
            except Exception as exc:  # a bug: this caller gets INTERNAL, the others their answers
                log.exception("cannot encode an answer")
                job.done = True
                kind, value = encode_payload(RequestFailed(Code.INTERNAL, f"internal error: {exc}"))
            by_peer[peer].append(Reply(wire_id, job.done, kind, value))
            if job.done:
                del self.origin[id(job)]
                self.jobs.pop(origin, None)
        for peer, replies in by_peer.items():
            self.sock.send_multipart([peer, ENCODER.encode(FromEngine(replies=replies))], zmq.NOBLOCK)

    def _reply_failure(self, peer: bytes, wire_id: int, message: str) -> None:
        kind, value = encode_payload(RequestFailed(Code.INTERNAL, message))
        data = ENCODER.encode(FromEngine(replies=[Reply(wire_id, True, kind, value)]))
        self.sock.send_multipart([peer, data], zmq.NOBLOCK)

    def _status(self) -> None:
        status = Status(
            time.monotonic() - self.heartbeat, self.scheduler.queued, self.stop_requested, self.side.store_up
        )
        data = ENCODER.encode(FromEngine(status=status))
        for peer in self.peers:
            self.sock.send_multipart([peer, data], zmq.NOBLOCK)

    def fail_everything(self, failure: BaseException) -> None:
        """The loop broke: answer every job in flight with INTERNAL before the process exits."""
        self._send(self.scheduler.fail_everything(failure))
        for job in list(self.jobs.values()):
            job.done = True
