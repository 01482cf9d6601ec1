"""One Predict stream's answers, in request order, and its window: flow control per stream.

Requests for different sessions on one stream finish in whatever batches they land in (a
long prefill for one session, a single token for another), but responses must go out in
the order the requests came. Each incoming message becomes a unit; the engine's delivery
marks jobs done through a callback on the event loop, and every unit at the head whose
jobs are all done moves to `ready`, which the stream's writer awaits: one suspension of
the writer per message, no future per request.

The window bounds what a stream may hold on the server: requests received and not yet
answered *and sent*, counted in requests and in (an upper bound of) answer bytes. When it
is full the stream's reader stops reading, so gRPC stops reading the connection and HTTP/2
flow control pushes back on the client: a client that writes and never reads costs a
bounded amount of memory, a fast pipelining client is slowed down, and neither is refused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from seqpredict.server.jobs import PredictJob, PredictResult

# Markers that travel through `ready` in order with the answers.
END_OF_STREAM = "end-of-stream"
DRAINED = "drained"


@dataclass(frozen=True)
class Window:
    requests: int  # requests in flight or unsent before the reader pauses
    answer_bytes: int  # upper bound of their answers' bytes before the reader pauses


@dataclass(eq=False, slots=True)
class Unit:
    """One incoming message: its requests and what each became (a queued job or a refusal)."""

    entries: list[tuple[object, PredictJob | PredictResult]]
    answer_bytes: int = 0
    remaining: int = 0
    marker: str = ""
    stream: OrderedAnswers | None = field(default=None, repr=False)

    def job_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.stream is not None:
            self.stream.flush()

    def results(self) -> list[tuple[object, PredictResult]]:
        return [(req, out if isinstance(out, PredictResult) else out.result) for req, out in self.entries]  # type: ignore[misc]


class OrderedAnswers:
    def __init__(self, window: Window) -> None:
        self.window = window
        self._units: deque[Unit] = deque()
        self.ready: asyncio.Queue[Unit] = asyncio.Queue()
        self.outstanding = 0  # requests received whose answers have not been sent yet
        self.outstanding_bytes = 0
        self._room = asyncio.Event()

    # -- the reader's side ---------------------------------------------------------------------------
    def add(self, entries: list[tuple[object, PredictJob | PredictResult]], answer_bytes: int) -> None:
        unit = Unit(entries, answer_bytes, stream=self)
        for _, out in entries:
            if isinstance(out, PredictJob) and out.result is None:
                out.waiter = unit.job_done
                unit.remaining += 1
        self.outstanding += len(entries)
        self.outstanding_bytes += answer_bytes
        self._units.append(unit)
        if unit.remaining == 0:
            self.flush()

    @property
    def full(self) -> bool:
        """No room for another message (one message is always let in, however large)."""
        w = self.window
        return self.outstanding > 0 and (self.outstanding >= w.requests or self.outstanding_bytes >= w.answer_bytes)

    async def wait_for_room(self) -> None:
        while self.full:
            self._room.clear()
            await self._room.wait()

    def mark(self, marker: str) -> None:
        """Put END_OF_STREAM or DRAINED in line behind everything received so far."""
        self._units.append(Unit([], marker=marker))
        self.flush()

    # -- the writer's side ---------------------------------------------------------------------------
    def flush(self) -> None:
        units = self._units
        while units and units[0].remaining == 0:
            self.ready.put_nowait(units.popleft())

    def sent(self, unit: Unit) -> None:
        """The unit's answer left (gRPC took it): its requests leave the window."""
        self.outstanding -= len(unit.entries)
        self.outstanding_bytes -= unit.answer_bytes
        if not self.full:
            self._room.set()

    def abandon(self) -> None:
        """The stream is gone: drop its queued jobs before they are batched (started ones finish)."""
        for unit in self._units:
            for _, out in unit.entries:
                if isinstance(out, PredictJob):
                    out.cancel()
        self._units.clear()
