"""What `Session` and `AsyncSession` share: a session's name, where the client knows it to be, and
turning answers into that knowledge. The calls themselves (blocking or awaited) are each half's.

Here so the two halves depend on this shared piece and never on each other.
"""

from __future__ import annotations

from seqpredict.client.errors import AnswerLost, PositionMismatch, SeqpredictError
from seqpredict.client.requests import FeedRequest, Guard, answer
from seqpredict.client.tracking import PositionTracker
from seqpredict.client.types import ExportedSession, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb


class SessionHandle:
    """A named session as the client knows it; `position` follows every answer (None while unknown)."""

    def __init__(
        self, session_id: str, *, strict: bool = False, position: int | None = None, incarnation: int | None = None
    ) -> None:
        self.session_id = session_id
        self._tracker = PositionTracker(strict, position, incarnation)

    @property
    def strict(self) -> bool:
        """Every call carries the tracked position and incarnation as its guard."""
        return self._tracker.strict

    @property
    def position(self) -> int | None:
        """Tokens the session has consumed, as of the last answer; 0 after it was ended."""
        return self._tracker.position

    @position.setter
    def position(self, value: int | None) -> None:
        # For resynchronising after a PositionMismatch the caller has dealt with.
        self._tracker.position = value

    @property
    def incarnation(self) -> int | None:
        """Which history of the session the client is on (0: it does not exist); None while unknown."""
        return self._tracker.incarnation

    @incarnation.setter
    def incarnation(self, value: int | None) -> None:
        self._tracker.incarnation = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.session_id!r}, position={self.position}, strict={self.strict})"

    # -- for the halves -------------------------------------------------------------------------
    def _state_guard(self) -> Guard:
        """The guard of an operation on the whole state (fork, export): strict sends what it tracks."""
        return self._tracker.expected(None, None, reset=False)

    def _outcome(self, resp: pb.PredictResponse, feed: FeedRequest) -> Prediction | SeqpredictError:
        outcome = answer(resp, feed)
        if isinstance(outcome, Prediction):
            self._tracker.observe(outcome.position, outcome.incarnation, outcome.ended)
        return outcome

    def _result(self, resp: pb.PredictResponse, feed: FeedRequest) -> Prediction:
        outcome = self._outcome(resp, feed)
        if isinstance(outcome, SeqpredictError):
            raise outcome
        return outcome

    def _lost_answer(self, feed: FeedRequest, refusal: PositionMismatch) -> tuple[int, int]:
        """A resend was refused because the lost attempt had applied `feed`: the session's version now.

        AnswerLost when the lost answer held per-step results, which the state after them cannot give.
        """
        assert refusal.actual_position is not None and refusal.actual_incarnation is not None
        position, incarnation = refusal.actual_position, refusal.actual_incarnation
        self._tracker.observe(position, incarnation, ended=False)
        if feed.all_steps or feed.score:
            raise AnswerLost(
                f"session {self.session_id!r}: the feed was applied (position now {position}) but its answer"
                " was lost with the replica that ran it; per-step answers cannot be computed again",
                position=position,
                session_id=self.session_id,
            ) from refusal
        return position, incarnation

    def _seen(self, info: SessionInfo) -> SessionInfo:
        """The session as the server just described it (GetSession)."""
        self._tracker.observe(info.position, info.incarnation, ended=False)
        return info

    def _exported(self, exported: ExportedSession) -> ExportedSession:
        self._tracker.observe(exported.info.position, exported.info.incarnation, ended=False)
        return exported

    def _ended(self, msg: pb.EndSessionResponse) -> int:
        """The final position of a session just released; the handle now stands at a session that does not exist."""
        self._tracker.observe(msg.position, msg.incarnation, ended=True)
        return msg.position

    def _gone(self) -> int:
        """The session does not exist on the server (GetSession said NOT_FOUND): position 0."""
        self._tracker.observe(0, 0, ended=True)
        return 0
