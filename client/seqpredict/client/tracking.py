"""Where a session is, as the client knows it, and the guard strict mode sends with each request.

Shared by `Session` and `AsyncSession`: the bookkeeping is the same, only the I/O differs.
A session is known by its position (tokens consumed) and its incarnation (which history of
it this is: it changes on reset and when the session is created again). Strict mode sends
both, so a request never runs on state the client did not expect — not even on a session
that was lost and refilled to the same position by someone else.
"""

from __future__ import annotations

from collections.abc import Callable

from seqpredict.client.requests import FeedRequest, Guard

ABSENT = 0  # the incarnation of a session that does not exist


class PositionTracker:
    """`position` and `incarnation` are None while unknown: before the first answer, after a generation
    was cancelled, or (incarnation only) until an answer names the history a reset or creation began."""

    def __init__(self, strict: bool, position: int | None, incarnation: int | None = None) -> None:
        self.strict = strict
        self.position = position
        self.incarnation = incarnation

    @property
    def needs_refresh(self) -> bool:
        """Strict mode never sends a request without an expected position, so it asks the server first."""
        return self.strict and self.position is None

    def expected(self, position: int | None, incarnation: int | None, reset: bool) -> Guard:
        """The guard to send: the caller's own values, else (strict, no reset) the tracked ones.

        With `reset` the old state is discarded anyway, so there is nothing to protect.
        """
        if position is not None or incarnation is not None:
            return position, incarnation
        if not self.strict or reset:
            return None, None
        return self.position, self.incarnation

    def observe(self, position: int, incarnation: int, ended: bool) -> None:
        # A session that does not exist is at position 0 with no incarnation: what the next request will see.
        self.position, self.incarnation = (0, ABSENT) if ended else (position, incarnation)

    def lost_track(self) -> None:
        self.position = self.incarnation = None

    def planner(self) -> Callable[[FeedRequest], Guard]:
        """The guard for each request of a pipelined stream, sent before earlier answers arrive.

        Works ahead from the current position: vocabularies are character-level, so a feed of
        n characters or n ids moves the session by exactly n. The incarnation stays the same
        until a reset or a creation begins a new one, which only its answer names: requests
        after one in the same stream are guarded by position alone.
        """
        position, incarnation = self.position, self.incarnation

        def plan(feed: FeedRequest) -> Guard:
            nonlocal position, incarnation
            if feed.expected_position is not None or feed.expected_incarnation is not None:
                guard: Guard = (feed.expected_position, feed.expected_incarnation)
            elif self.strict and not feed.reset:
                guard = (position, incarnation)
            else:
                guard = (None, None)
            base = 0 if feed.reset else (guard[0] if guard[0] is not None else position)
            if feed.end:
                position, incarnation = 0, ABSENT
            else:
                position = None if base is None else base + feed.num_tokens
                known = guard[1] if guard[1] is not None else incarnation
                incarnation = None if feed.reset or known in (None, ABSENT) else known
            return guard

        return plan
