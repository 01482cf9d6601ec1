"""Failure codes of the domain layer; the service maps them to gRPC status codes.

The engine and scheduler never import grpc, so they speak in these codes. The values are
the gRPC status code numbers, which is also what in-band `RequestError.code` carries.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class RequestFailed(Exception):
    """A request that cannot be served.

    `position` and `incarnation` are the session's actual ones when known (FAILED_PRECONDITION);
    `limit` names the configured limit that refused it, for `seqpredict_rejected_total{limit}`.
    """

    def __init__(
        self,
        code: Code,
        message: str,
        position: int | None = None,
        limit: str | None = None,
        incarnation: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.position = position
        self.limit = limit
        self.incarnation = incarnation


# The names go-grpc-prometheus puts in `grpc_code`, so dashboards built for it work here too.
GO_CODE_NAMES = {
    0: "OK",
    1: "Canceled",
    2: "Unknown",
    3: "InvalidArgument",
    4: "DeadlineExceeded",
    5: "NotFound",
    6: "AlreadyExists",
    7: "PermissionDenied",
    8: "ResourceExhausted",
    9: "FailedPrecondition",
    10: "Aborted",
    11: "OutOfRange",
    12: "Unimplemented",
    13: "Internal",
    14: "Unavailable",
    15: "DataLoss",
    16: "Unauthenticated",
}


def code_name(code: int) -> str:
    return GO_CODE_NAMES.get(int(code), "Unknown")


# The engine process stopped as asked, but the sessions were not saved (final snapshot, or store commit).
EXIT_SNAPSHOT_FAILED = 1


class StartupError(Exception):
    """Something at start-up that must stop the server (exit 2), in one line."""
