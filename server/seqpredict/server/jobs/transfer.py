"""ExportSession and ImportSession: a session's whole state out of the server and back into one.

Export is queued with the session's work (it sees every earlier request applied) and changes
nothing. Import is queued with the target's work and installs the state as it was exported —
same position, same incarnation — so a client that tracked the session continues as if it
had never left. Encoding, checks of the blob and of the model happen in the service; here
there are only tensors and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from seqpredict.server.jobs.session import FutureJob
from seqpredict.server.session_state import SessionRecord, SessionState

if TYPE_CHECKING:
    from seqpredict.server.ops import SessionOps


@dataclass(eq=False, slots=True)
class ExportJob(FutureJob):
    expected_position: int | None = None
    expected_incarnation: int | None = None

    kind: ClassVar[str] = "export"
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ("expected_position", "expected_incarnation")

    def start(self, ops: SessionOps, pending: int) -> tuple[SessionRecord, SessionState]:
        state = ops.export(self.session_id, self.expected_position, self.expected_incarnation)
        return ops.record(self.session_id), state


@dataclass(eq=False, slots=True)
class ImportJob(FutureJob):
    state: SessionState | None = None
    force: bool = False

    kind: ClassVar[str] = "import"
    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ("state", "force")

    def wire_values(self) -> list[Any]:
        state = self.state
        assert state is not None
        return [[state.position, state.incarnation, state.dtype, state.data], self.force]

    @classmethod
    def from_wire(cls, session_id: str, received: float, values: list[Any]) -> ImportJob:
        (position, incarnation, dtype, data), force = values
        return cls(session_id, received, state=SessionState(position, incarnation, dtype, data), force=force)

    def start(self, ops: SessionOps, pending: int) -> SessionRecord:
        assert self.state is not None, "an import carries the state it installs"
        return ops.import_(self.session_id, self.state, self.force)
