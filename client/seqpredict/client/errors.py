"""Typed exceptions for every failure the service reports, in-band or as a gRPC status.

Callers catch `PositionMismatch` or `NotFound` instead of inspecting status codes, and both
error paths of the API — a status ending a call, and an error answered in-band on a Predict
stream — turn into the same exception types.
"""

from __future__ import annotations

import grpc

POSITION_METADATA = "seqpredict-position"
INCARNATION_METADATA = "seqpredict-incarnation"
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class SeqpredictError(Exception):
    """Base of every error the client raises; `code` is the gRPC status, `message` the server's reason."""

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, session_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}: {self.message!r})"


class InvalidArgument(SeqpredictError):
    """The request itself is wrong (session id, token, character, top_k, ...); retrying will not help."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class PositionMismatch(SeqpredictError):
    """The session is not where the client expected: its state was lost, reset, or someone else wrote to it.

    Nothing was computed. `actual_position` and `actual_incarnation` are the session's on the
    server (0 and 0 when it does not exist any more), or None when the server did not say.
    """

    default_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self,
        message: str,
        *,
        actual_position: int | None = None,
        actual_incarnation: int | None = None,
        code: grpc.StatusCode | None = None,
        session_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, session_id=session_id)
        self.actual_position = actual_position
        self.actual_incarnation = actual_incarnation


class NotFound(SeqpredictError):
    """The session does not exist (never created, ended, expired or evicted)."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SeqpredictError):
    """ForkSession onto a session that exists; pass replace=True to overwrite it."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(SeqpredictError):
    """The operation collided with a request in progress on the session; nothing changed, retry."""

    default_code = grpc.StatusCode.ABORTED


class ResourceExhausted(SeqpredictError):
    """A server limit was hit (sessions, queues, message size); back off or split the work."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SeqpredictError):
    """The server cannot be reached or is draining for shutdown."""

    default_code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(SeqpredictError):
    """The bearer token is missing or wrong."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(SeqpredictError):
    """The call did not finish within its timeout; for a feed, the server may still have applied it."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(SeqpredictError):
    """The call was cancelled before it finished."""

    default_code = grpc.StatusCode.CANCELLED


class ServerError(SeqpredictError):
    """Anything else: a server bug (INTERNAL), an unknown failure, or a status this client does not expect."""

    default_code = grpc.StatusCode.INTERNAL


_CLASSES: dict[grpc.StatusCode, type[SeqpredictError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: PositionMismatch,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _make(
    code: grpc.StatusCode, message: str, position: int | None, incarnation: int | None, session_id: str | None
) -> SeqpredictError:
    cls = _CLASSES.get(code, ServerError)
    if cls is PositionMismatch:
        return PositionMismatch(
            message, actual_position=position, actual_incarnation=incarnation, code=code, session_id=session_id
        )
    return cls(message, code=code, session_id=session_id)


def from_request_error(
    code: int, message: str, position: int, session_id: str | None = None, incarnation: int | None = None
) -> SeqpredictError:
    """The exception for an in-band `RequestError` on a Predict stream (position, incarnation from its response)."""
    status = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _make(status, message or status.name, position, incarnation, session_id)


def from_rpc_error(error: grpc.RpcError, session_id: str | None = None) -> SeqpredictError:
    """The exception for a call that ended with a non-OK status (sync or grpc.aio)."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or code.name
    position = _int_from_metadata(error, POSITION_METADATA)
    return _make(code, message, position, _int_from_metadata(error, INCARNATION_METADATA), session_id)


def _int_from_metadata(error: grpc.RpcError, name: str) -> int | None:
    """FAILED_PRECONDITION statuses carry the session's actual position and incarnation as trailing metadata."""
    trailing_fn = getattr(error, "trailing_metadata", None)
    trailing = trailing_fn() if callable(trailing_fn) else None
    for key, value in trailing or ():
        if key == name:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


class AnswerLost(SeqpredictError):
    """A resent feed had already been applied by an attempt whose answer was lost with its replica.

    The session moved on (`position` is where it stands now), and the per-step answers that were
    asked for (all_steps, score) cannot be computed again from the state after them.
    """

    default_code = grpc.StatusCode.DATA_LOSS

    def __init__(self, message: str, *, position: int, session_id: str | None = None) -> None:
        super().__init__(message, session_id=session_id)
        self.position = position
