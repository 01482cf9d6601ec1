"""Who may start an RPC, and how large a message may be: the policy the RPC guard applies.

Bearer tokens, the concurrent-call limit, the message-size limit and refusal while
draining. Health checks are always admitted and never count as calls — orchestrators
probe without credentials, a probe must see NOT_SERVING during a drain rather than a
refusal, and a health Watch stream (which never ends by itself) must not hold a drain open.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# gRPC's own receive limit, as a multiple of ours: it stops absurd sizes before any allocation.
HARD_LIMIT_FACTOR = 4


class Oversized:
    """Stands in for a request message too large to parse; the guard refuses the call on it."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class Malformed:
    """Stands in for bytes that do not parse as the request message: INVALID_ARGUMENT, not a bug."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


UNUSABLE = (Oversized, Malformed)


DRAINING_SHARED = "the server is draining; retry: another replica takes the session over from the session store"
DRAINING_ALONE = "the server is draining; retry when it is back"


class Admission:
    def __init__(self, tokens: frozenset[str], max_rpcs: int, max_message_bytes: int, shared: bool = False) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        # With a shared session store another replica can take the session over; without one,
        # the session stays here until this server comes back (from its snapshot, if it has one).
        self._draining = DRAINING_SHARED if shared else DRAINING_ALONE
        self.max_rpcs = max_rpcs
        self.max_message_bytes = max_message_bytes
        self.active = 0
        self.draining = False

    @staticmethod
    def counted(details: grpc.HandlerCallDetails) -> bool:
        """Whether the call counts against max_streams and holds a drain open (health does neither)."""
        return not details.method.startswith(HEALTH_PREFIX)

    def refusal(self, details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str, str] | None:
        """Why this call may not start, or None to admit it."""
        if details.method.startswith(HEALTH_PREFIX):
            return None
        if not self._authorized(details):
            return grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token", "unauthenticated"
        if self.draining:
            return grpc.StatusCode.UNAVAILABLE, self._draining, "draining"
        if self.active >= self.max_rpcs:
            message = f"too many concurrent calls (limit {self.max_rpcs})"
            return grpc.StatusCode.RESOURCE_EXHAUSTED, message, "streams"
        return None

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if not self._tokens:
            return True
        for key, value in details.invocation_metadata or ():
            if key != "authorization" or not isinstance(value, str):
                continue
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer":  # the scheme is case-insensitive (RFC 6750, RFC 9110)
                offered = credentials.strip().encode()
                # Compare against every token in constant time: no timing hint about which one matched.
                return any([hmac.compare_digest(offered, t) for t in self._tokens])
        return False

    def size_limited(self, deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object]:
        """A deserializer that does not parse a message over the limit but marks it Oversized,
        and marks bytes that do not parse Malformed, so the guard answers each with its own code.

        gRPC itself refuses anything over HARD_LIMIT_FACTOR × the limit before reading it (not
        counted); between the two, the guard refuses the call — counted — without parsing the bytes.
        """
        limit = self.max_message_bytes

        def check(data: bytes) -> object:
            if len(data) > limit:
                return Oversized(len(data))
            if deserialize is None:
                return data
            try:
                return deserialize(data)
            except DecodeError as exc:
                return Malformed(str(exc) or "cannot parse")

        return check
