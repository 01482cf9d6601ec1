"""A session's position as the client knows it, and the expected_position strict mode sends.

Shared by `Session` and `AsyncSession`: the bookkeeping is the same, only the I/O differs.
"""

from __future__ import annotations

from collections.abc import Callable

from seqpredict.client.requests import FeedRequest


class PositionTracker:
    """`position` is None while unknown: before the first answer, or after a generation was cancelled."""

    def __init__(self, strict: bool, position: int | None) -> None:
        self.strict = strict
        self.position = position

    @property
    def needs_refresh(self) -> bool:
        """Strict mode never sends a request without an expected position, so it asks the server first."""
        return self.strict and self.position is None

    def expected(self, explicit: int | None, reset: bool) -> int | None:
        """The expected_position to send: the caller's own, else (strict, no reset) the tracked one.

        With `reset` the old state is discarded anyway, so there is nothing to protect.
        """
        if explicit is not None:
            return explicit
        if not self.strict or reset:
            return None
        return self.position

    def observe(self, position: int, ended: bool) -> None:
        # A session that does not exist is at position 0, which is what the next request will see.
        self.position = 0 if ended else position

    def lost_track(self) -> None:
        self.position = None

    def planner(self) -> Callable[[FeedRequest], int | None]:
        """expected_position for each request of a pipelined stream, sent before earlier answers arrive.

        Works ahead from the current position: vocabularies are character-level, so a feed of
        n characters or n ids moves the session by exactly n.
        """
        running = self.position

        def plan(feed: FeedRequest) -> int | None:
            nonlocal running
            if feed.expected_position is not None:
                expected = feed.expected_position
            elif self.strict and not feed.reset:
                expected = running
            else:
                expected = None
            base = 0 if feed.reset else (expected if expected is not None else running)
            running = 0 if feed.end else (None if base is None else base + feed.num_tokens)
            return expected

        return plan
