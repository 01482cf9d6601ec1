"""The routing key: single-session calls name their session in `x-session-id` metadata.

A proxy in front of several replicas (nginx's `hash $http_x_session_id consistent`, Envoy's
`ring_hash`) routes on that header without parsing protobuf. The server checks that it names
the session the call is about, so a client bug cannot silently route a session's calls to a
replica chosen by another session's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seqpredict.server.errors import Code, RequestFailed

ROUTING_HEADER = "x-session-id"


def routing_key(metadata: Sequence[Any] | None) -> str | None:
    """The call's x-session-id, or None when it has none."""
    for key, value in metadata or ():
        if key == ROUTING_HEADER:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def check_route(key: str | None, session_id: str) -> None:
    """INVALID_ARGUMENT when the call's routing key names another session than its body."""
    if key is not None and key != session_id:
        raise RequestFailed(
            Code.INVALID_ARGUMENT,
            f"the x-session-id header ({key!r}) names another session than the request ({session_id!r}):"
            " a proxy routes on the header, so they must agree",
        )
