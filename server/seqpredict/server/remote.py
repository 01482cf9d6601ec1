"""A frontend's link to the engine process: the EngineHandle the service submits jobs to.

Jobs submitted during one turn of the event loop leave in one message (one flush per turn,
however many requests the turn handled); the engine's answers come back a batch per
message and are delivered to the jobs' handlers exactly as the in-process inference thread
delivers them. Cancels follow the jobs they cancel. The engine's status messages are the
heartbeat; the engine process's exit (watched through a pidfd) fails every job in flight at
once, so no call ever waits for an engine that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import zmq
import zmq.asyncio

from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import Job, deliver
from seqpredict.server.wire import ENCODER, FROM_ENGINE, JobSpec, ToEngine, decode_payload, job_spec

log = logging.getLogger(__name__)

ENGINE_GONE = "internal error: the inference engine has stopped"


class RemoteEngine:
    def __init__(self, endpoint: str, identity: str, engine_pid: int | None) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.engine_pid = engine_pid
        self.heartbeat = time.monotonic()
        self.queued = 0
        self.store_up = True
        self._failure: str | None = None
        self._pending: dict[int, Job] = {}
        self._next_id = 0
        self._jobs: list[JobSpec] = []
        self._cancels: list[int] = []
        self._flush_scheduled = False
        self._on_cancel = self._cancel  # one bound method for every job, not one per job
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pidfd: int | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read())
        self._send(ToEngine())  # hello: the engine learns our identity
        if self.engine_pid is not None:
            self._pidfd = os.pidfd_open(self.engine_pid)
            self._loop.add_reader(self._pidfd, self._engine_exited)

    # -- EngineHandle -------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._failure is None

    @property
    def failure(self) -> str | None:
        return self._failure

    def submit(self, job: Job) -> None:
        if self._failure is not None:
            raise RequestFailed(Code.INTERNAL, ENGINE_GONE)
        self._next_id += 1
        wire_id = job.wire_id = self._next_id
        self._pending[wire_id] = job
        job.on_cancel = self._on_cancel
        self._jobs.append(job_spec(job, wire_id))
        self._schedule_flush()

    # -- out -------------------------------------------------------------------------------------------------
    def _cancel(self, job: Job) -> None:
        """The caller is gone: nothing more is delivered for this job (the engine drops it if it has
        not started, and finishes it quietly otherwise)."""
        if self._pending.pop(job.wire_id, None) is not None:
            self._cancels.append(job.wire_id)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One message for everything submitted in this turn of the loop."""
        self._flush_scheduled = False
        if not self._jobs and not self._cancels:
            return
        message = ToEngine(self._jobs, self._cancels)
        self._jobs, self._cancels = [], []
        self._send(message)

    def _send(self, message: ToEngine) -> None:
        """Without waiting: the queue is unbounded (what is in flight is bounded by the streams' windows).

        Through the asyncio socket, never a synchronous twin of it: ZeroMQ signals readiness on an
        edge-triggered descriptor, and only the asyncio socket knows to re-check for answers that
        arrived while it sent — a send behind its back can leave them unread for good.
        """
        sent = self.sock.send(ENCODER.encode(message), zmq.NOBLOCK)
        sent.add_done_callback(self._sent)

    def _sent(self, sent: asyncio.Future) -> None:
        exc = sent.exception()
        if exc is not None:  # cannot happen with an unbounded queue; never leave callers waiting
            log.error("cannot send to the engine: %s", exc)
            self._fail(f"{ENGINE_GONE} ({exc})")

    # -- in --------------------------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                self._dispatch(await self.sock.recv())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # nothing may wait for an answer that can no longer arrive
            log.critical("the link to the engine broke", exc_info=exc)
            self._fail(f"{ENGINE_GONE} (link broken: {exc})")

    def _dispatch(self, data: bytes) -> None:
        try:
            message = FROM_ENGINE.decode(data)
        except Exception:
            log.exception("undecodable message from the engine: dropped")
            return
        if message.status is not None:
            self.heartbeat = time.monotonic() - message.status.beat_age
            self.queued = message.status.queued
            self.store_up = message.status.store_up
        for reply in message.replies:
            job = self._pending.pop(reply.id, None) if reply.final else self._pending.get(reply.id)
            if job is None:
                continue
            try:
                payload = decode_payload(reply.type, reply.value)
            except Exception as exc:  # a bug: this caller gets INTERNAL, the others their answers
                log.exception("undecodable answer from the engine")
                payload = RequestFailed(Code.INTERNAL, f"internal error: undecodable answer ({exc})")
                self._pending.pop(reply.id, None)
            deliver(job, payload)

    def _engine_exited(self) -> None:
        log.critical("the engine process (pid %d) has exited", self.engine_pid)
        self._fail(ENGINE_GONE)

    def _fail(self, reason: str) -> None:
        """Every job in flight fails with INTERNAL, and so does every later submit."""
        if self._failure is None:
            self._failure = reason
        self._close_pidfd()
        error = RequestFailed(Code.INTERNAL, ENGINE_GONE)
        pending, self._pending = self._pending, {}
        for job in pending.values():
            deliver(job, error)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None and self._loop is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def close(self) -> None:
        self._close_pidfd()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.sock.close(0)
