"""How `seqpredict` ends: one exit code per kind of failure, and the one line that explains it.

Scripts branch on the code (retry on 8 and 69, create on 3, give up on 2), so every failure a
user can act on differently has its own; the table is printed by `seqpredict --help` and
repeated in the README.
"""

from __future__ import annotations

from seqpredict.client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PositionMismatch,
    ResourceExhausted,
    SeqpredictError,
    Unauthenticated,
    Unavailable,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_POSITION_MISMATCH = 4  # FAILED_PRECONDITION: the guard, or an import the server refuses to apply
EXIT_RESOURCE_EXHAUSTED = 5
EXIT_UNAUTHENTICATED = 6
EXIT_ALREADY_EXISTS = 7
EXIT_ABORTED = 8  # nothing changed: the same command may simply be run again
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE from sysexits.h: a service is down, try again later
EXIT_INTERRUPTED = 130

# Most specific first: PositionMismatch is not an InvalidArgument, but order keeps this obvious.
EXIT_CODES: tuple[tuple[type[SeqpredictError], int], ...] = (
    (PositionMismatch, EXIT_POSITION_MISMATCH),
    (InvalidArgument, EXIT_USAGE),
    (NotFound, EXIT_NOT_FOUND),
    (ResourceExhausted, EXIT_RESOURCE_EXHAUSTED),
    (Unauthenticated, EXIT_UNAUTHENTICATED),
    (AlreadyExists, EXIT_ALREADY_EXISTS),
    (Aborted, EXIT_ABORTED),
    (Unavailable, EXIT_UNAVAILABLE),
)

EPILOG = """\
exit codes:
  0   success (health: the server is SERVING; session list: also when no session matches)
  1   any other failure (health: not SERVING)
  2   usage error or invalid argument (also a damaged blob, a file that cannot be read or written)
  3   session (or health service) not found
  4   failed precondition: the session is not at --expected-position / --expected-incarnation;
      session import: the session moved on since the export or is another history of it
      (--force replaces it), or the blob is another model's
  5   resource exhausted: a server limit was hit
  6   unauthenticated: missing or wrong token
  7   already exists: session fork onto an existing session (--replace overwrites it)
  8   aborted: the session to replace is in the middle of a request; nothing changed, retry
  69  server unavailable: not running, unreachable or shutting down
  130 interrupted (Ctrl-C)
"""


class CliError(Exception):
    """A problem found on this side of the wire (arguments, files, a terminal), reported as one line with EXIT_USAGE."""


def exit_code(error: SeqpredictError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(error, cls)), EXIT_FAILURE)


def describe(error: SeqpredictError, target: str, timeout: float | None = None) -> str:
    """The line printed for a failed call: the server's reason, or advice where the reason is ours to give."""
    if isinstance(error, DeadlineExceeded):
        # Not "it failed": the server may have queued the call behind the session's earlier requests.
        within = f"within {timeout:g} s" if timeout is not None else "in time"
        return (
            f"no answer from {target} {within} (--timeout); the server may still apply the request, "
            "so check the session (session show) before repeating it"
        )
    if isinstance(error, Unavailable) and "draining" in error.message:
        return (
            f"server at {target} is draining: it is shutting down and takes no new calls ({error.message}); "
            "retry when it has restarted, or point --target / SEQPREDICT_TARGET at another server"
        )
    if isinstance(error, Unavailable):
        return (
            f"server at {target} is unavailable ({error.message}); is it running? "
            "Start one with `make run`, or point --target / SEQPREDICT_TARGET at it"
        )
    return error.message
