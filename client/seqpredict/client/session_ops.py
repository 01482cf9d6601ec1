"""The protobuf boundary of the session-state operations, shared by the sync and the asyncio half.

GetSession, EndSession, ForkSession, ExportSession, ImportSession and ListSessions are unary
calls: the two halves differ only in whether they block on a call or await it, so requests are
built, checked and read here once, and the halves only make the calls.
"""

from __future__ import annotations

from seqpredict.client.ranges import UINT32, check
from seqpredict.client.requests import Guard, set_guard
from seqpredict.client.types import SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb


def get_request(session_id: str) -> pb.GetSessionRequest:
    return pb.GetSessionRequest(session_id=session_id)


def end_request(session_id: str) -> pb.EndSessionRequest:
    return pb.EndSessionRequest(session_id=session_id)


def fork_request(source: str, target: str, replace: bool, guard: Guard) -> pb.ForkSessionRequest:
    """The guard is the source's: the copy is made only from the state the caller expects."""
    req = pb.ForkSessionRequest(source_session_id=source, target_session_id=target, replace=replace)
    set_guard(req, guard)
    return req


def export_request(session_id: str, guard: Guard) -> pb.ExportSessionRequest:
    req = pb.ExportSessionRequest(session_id=session_id)
    set_guard(req, guard)
    return req


def import_request(blob: bytes, session_id: str | None, force: bool) -> pb.ImportSessionRequest:
    """`session_id` None (or empty) installs the blob under the name it was exported with."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        # A str here is almost always a file *name*: say so rather than protobuf's TypeError.
        raise TypeError(f"blob must be the exported bytes, got {type(blob).__name__}")
    return pb.ImportSessionRequest(session_id=session_id or "", blob=bytes(blob), force=force)


class SessionPages:
    """Paging through ListSessions: the request for the next page, and reading a page's sessions.

    The server's page token says where the previous page stopped (it is bound to the prefix),
    so a listing never repeats or skips a session that exists throughout it, whatever else is
    created or ended meanwhile.
    """

    def __init__(self, prefix: str = "", page_size: int = 0) -> None:
        check("page_size", page_size, UINT32)
        self.prefix = prefix
        self.page_size = page_size
        self._token = ""
        self.done = False

    def request(self) -> pb.ListSessionsRequest:
        return pb.ListSessionsRequest(prefix=self.prefix, page_size=self.page_size, page_token=self._token)

    def read(self, page: pb.ListSessionsResponse) -> list[SessionInfo]:
        """The page's sessions, in name order; `done` once the server says no page follows."""
        self._token = page.next_page_token
        self.done = not self._token
        return [SessionInfo.from_pb(s) for s in page.sessions]
