"""When a feed whose call failed (UNAVAILABLE, or CANCELLED by the proxy) may be sent again, and whether it was applied.

A replica can die after applying a feed and before its answer leaves; the proxy then moves the
session to another replica, which takes it over from the store. Resending blindly could feed the
tokens twice, so only a feed guarded by a known position and incarnation is resent: the server
refuses the resend (FAILED_PRECONDITION) when the first attempt was applied, and the refusal's
actual position says so. Feeds without such a guard are never resent. A proxy whose replica dies
after the answer's headers left resets the call (CANCELLED or INTERNAL; the feed itself never
cancels): that is as unknown an outcome as UNAVAILABLE.
"""

from __future__ import annotations

from seqpredict.client.errors import Cancelled, PositionMismatch, SeqpredictError, ServerError, Unavailable
from seqpredict.client.requests import FeedRequest, Guard
from seqpredict.client.tracking import ABSENT

# How a call ends when its replica died under it: UNAVAILABLE (refused, or the proxy's 502), CANCELLED
# or INTERNAL (the proxy reset the stream after the answer's headers had left). A guarded resend is
# safe whatever the cause, so a server's own INTERNAL is only resent a few times, then raised.
CUT_OFF = (Unavailable, Cancelled, ServerError)

# Waits before each resend (≈1.8 s in all): nginx takes a replica that failed out of its ring at
# once, and the next replica loads the session from the store before running it.
RETRY_DELAYS_S = (0.05, 0.25, 0.5, 1.0)


def may_resend(feed: FeedRequest, guard: Guard) -> bool:
    """A resend is safe only when the guard pins the exact state the first attempt ran on."""
    position, incarnation = guard
    return position is not None and incarnation not in (None, ABSENT) and not feed.reset and not feed.end


def applied_before(error: SeqpredictError, feed: FeedRequest, guard: Guard) -> bool:
    """The resend was refused because an earlier attempt, whose answer was lost, had applied the feed."""
    assert guard[0] is not None
    return (
        isinstance(error, PositionMismatch)
        and error.actual_position == guard[0] + feed.num_tokens
        and error.actual_incarnation == guard[1]
    )
