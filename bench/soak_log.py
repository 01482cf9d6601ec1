"""The server log's errors, each either explained (a known line the soak provokes on purpose) or not.

Our server logs an unexpected error (what becomes INTERNAL) at ERROR with its traceback, so an
ERROR record in the soak's server.log is a failure — unless it is one of KNOWN, whose cause is
understood and named in the report. A traceback outside any ERROR record (printed straight to
stderr) counts as unexplained too.
"""

from __future__ import annotations

import re
from collections import Counter

ABANDONED_PREDICT = "ExecuteBatchError raised in core by servicer method [/seqpredict.v1.SequencePredictor/Predict]"
STATUS_ONLY = "ExecuteBatchError raised in core by servicer method […] failing only its final status"
# Why each known line appears, in the words the report prints next to its count.
KNOWN = {
    ABANDONED_PREDICT: (
        "grpc's asyncio server (grpc._cython.cygrpc) logs this, with a traceback, when a client cancels a "
        "Predict stream while an answer to it is waiting for HTTP/2 flow control — what the client that "
        "never reads does on purpose to every stream it abandons. The call is over either way; the "
        "server's own bookkeeping (streams_active, streams_paused) returns to where it was."
    ),
    STATUS_ONLY: (
        "grpc's asyncio server logs this when a call's handler has finished and sent every answer, and the "
        "client goes away (it cancels, or its deadline passes: the soak does both on purpose) just as gRPC "
        "sends the final status, before gRPC has processed the client's close: the status alone fails. "
        "Nothing of the call is lost; grpc ignores the same failure once it knows the client closed."
    ),
}
# Each known line's pattern over the whole record: the log line and the traceback under it.
_PATTERNS = {
    ABANDONED_PREDICT: re.compile(re.escape(ABANDONED_PREDICT)),
    STATUS_ONLY: re.compile(
        r"ExecuteBatchError raised in core by servicer method \[[^\]]+\].*"
        r'ExecuteBatchError: Failed "execute_batch": \(<grpc\._cython\.cygrpc\.SendStatusFromServerOperation'
        r"[^,]*,\)$",
        re.DOTALL,
    ),
}
UNEXPLAINED = "unexplained"
# A log record: time, level, the process's role in brackets (the multi-process server), logger, message.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) (?:\[[^\]]+\] )?\S+: (.*)$")


def log_errors(text: str) -> Counter[str]:
    """ERROR and CRITICAL records (with the traceback under each) by the KNOWN line whose pattern they
    match, or UNEXPLAINED; stray tracebacks count as UNEXPLAINED."""
    found: Counter[str] = Counter()
    error: list[str] | None = None  # the ERROR record being read, line by line

    def close() -> None:
        if error is not None:
            whole = "\n".join(error).rstrip()
            found[next((k for k, p in _PATTERNS.items() if p.match(whole)), UNEXPLAINED)] += 1

    for line in text.splitlines():
        record = _RECORD.match(line)
        if record:
            close()
            level, message = record.groups()
            error = [message] if level in ("ERROR", "CRITICAL") else None
        elif error is not None:
            error.append(line)
        elif line.startswith("Traceback"):
            found[UNEXPLAINED] += 1
    close()
    return found
