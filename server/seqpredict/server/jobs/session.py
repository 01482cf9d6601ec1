"""GetSession and EndSession: bookkeeping jobs, ordered with the session's other work.

GetSession sees every earlier request of the session applied and changes nothing — not
even the session's last use, so a monitor polling it does not keep it alive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from seqpredict.server.errors import RequestFailed
from seqpredict.server.jobs.base import Job
from seqpredict.server.session_state import SessionRecord

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps


@dataclass(eq=False, slots=True)
class FutureJob(Job):
    """A job answered once, through a future the handler awaits."""

    future: asyncio.Future[object] | None = None

    def complete(self, payload: object) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(payload)

    def fail(self, error: RequestFailed) -> None:
        self.complete(error)


@dataclass(eq=False, slots=True)
class GetSessionJob(FutureJob):
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def start(self, ops: SessionOps, pending: int) -> SessionRecord:
        return ops.record(self.session_id)


@dataclass(eq=False, slots=True)
class EndSessionJob(FutureJob):
    def start(self, ops: SessionOps, pending: int) -> SessionRecord:
        return ops.end(self.session_id)
