"""Answering a Predict stream in request order while its requests complete in any order.

Requests for different sessions on one stream finish in whatever batches they land in (a
long prefill for one session, a single token for another), but responses must go out in
the order the requests came. Each incoming message becomes a unit; the engine's delivery
marks jobs done through a callback on the event loop, and every unit at the head whose
jobs are all done moves to `ready`, which the stream's writer awaits: one suspension of
the writer per message, no future per request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from seqpredict.server.jobs import PredictJob, PredictResult

# Markers that travel through `ready` in order with the answers.
END_OF_STREAM = "end-of-stream"
DRAINED = "drained"


@dataclass(eq=False, slots=True)
class Unit:
    """One incoming message: its requests and what each became (a queued job or a refusal)."""

    entries: list[tuple[object, PredictJob | PredictResult]]
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
    def __init__(self) -> None:
        self._units: deque[Unit] = deque()
        self.ready: asyncio.Queue[Unit] = asyncio.Queue()
        self.draining = False

    def add(self, entries: list[tuple[object, PredictJob | PredictResult]]) -> None:
        unit = Unit(entries, stream=self)
        for _, out in entries:
            if isinstance(out, PredictJob) and out.result is None:
                out.waiter = unit.job_done
                unit.remaining += 1
        self._units.append(unit)
        if unit.remaining == 0:
            self.flush()

    def mark(self, marker: str) -> None:
        """Put END_OF_STREAM or DRAINED in line behind everything received so far."""
        self._units.append(Unit([], marker=marker))
        self.flush()

    def flush(self) -> None:
        units = self._units
        while units and units[0].remaining == 0:
            self.ready.put_nowait(units.popleft())

    def abandon(self) -> None:
        """The stream is gone: drop its queued jobs before they are batched."""
        for unit in self._units:
            for _, out in unit.entries:
                if isinstance(out, PredictJob):
                    out.cancelled = True
        self._units.clear()
