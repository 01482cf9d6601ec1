"""The server log's errors, each either explained (a known line the soak provokes on purpose) or not.

Our server logs an unexpected error (what becomes INTERNAL) at ERROR with its traceback, so an
ERROR record in the soak's server.log is a failure — unless it is one of KNOWN, whose cause is
understood and named in the report. A traceback outside any ERROR record (printed straight to
stderr) counts as unexplained too.
"""

from __future__ import annotations

import re
from collections import Counter

# Why each known line appears, in the words the report prints next to its count.
KNOWN = {
    "ExecuteBatchError raised in core by servicer method [/seqpredict.v1.SequencePredictor/Predict]": (
        "grpc's asyncio server (grpc._cython.cygrpc) logs this, with a traceback, when a client cancels a "
        "Predict stream while an answer to it is waiting for HTTP/2 flow control — what the client that "
        "never reads does on purpose to every stream it abandons. The call is over either way; the "
        "server's own bookkeeping (streams_active, streams_paused) returns to where it was."
    ),
}
UNEXPLAINED = "unexplained"
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) \S+: (.*)$")


def log_errors(text: str) -> Counter[str]:
    """ERROR and CRITICAL records by the KNOWN line they match, or UNEXPLAINED; stray tracebacks count as
    UNEXPLAINED."""
    found: Counter[str] = Counter()
    in_error = False
    for line in text.splitlines():
        record = _RECORD.match(line)
        if record:
            level, message = record.groups()
            in_error = level in ("ERROR", "CRITICAL")
            if in_error:
                found[next((k for k in KNOWN if message.startswith(k)), UNEXPLAINED)] += 1
        elif line.startswith("Traceback") and not in_error:
            found[UNEXPLAINED] += 1
    return found
