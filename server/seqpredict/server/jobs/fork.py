"""ForkSession: a copy of a session's state and position under another name, as a new incarnation.

Queued with the source's work, so the copy sees every earlier request of the source applied.
Several continuations of one context, without replaying it: samples, what-ifs, beam search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from seqpredict.server.jobs.session import FutureJob
from seqpredict.server.session_state import SessionRecord

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps


@dataclass(eq=False, slots=True)
class ForkJob(FutureJob):
    target: str = ""
    expected_position: int | None = None  # of the source
    expected_incarnation: int | None = None
    replace: bool = False

    kind: ClassVar[str] = "fork"
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ("target", "expected_position", "expected_incarnation", "replace")

    def start(self, ops: SessionOps, pending: int) -> SessionRecord:
        return ops.fork(self.session_id, self.target, self.expected_position, self.expected_incarnation, self.replace)
