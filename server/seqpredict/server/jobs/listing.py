"""ListSessions: a page of sessions in name order, for operators who need to find and end them.

Not about one session, so it is queued under a key no session can have ("": ids have at
least one character) and runs between batches like any other job; a page costs O(log n + size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from seqpredict.server.jobs.session import FutureJob
from seqpredict.server.session_state import SessionRecord

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps

LIST_QUEUE = ""


@dataclass(eq=False, slots=True)
class ListJob(FutureJob):
    prefix: str = ""
    after: str = ""  # the last id of the previous page
    limit: int = 100

    kind: ClassVar[str] = "list"
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ("prefix", "after", "limit")
    per_session: ClassVar[bool] = False

    def start(self, ops: SessionOps, pending: int) -> tuple[list[SessionRecord], bool]:
        return ops.list(self.prefix, self.after, self.limit)
