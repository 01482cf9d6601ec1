"""Argument types of the `seqpredict` command line: numbers that fit their fields, escapes in --stop,
and the guard options every command that changes or reads a session's state shares.

Each turns a value the request cannot carry into argparse's usage error — exit 2 and one line
naming the option — instead of a traceback from protobuf further down. Whether a value that
fits makes sense (top_k 0, a token outside the vocabulary) is still the server's to say.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from seqpredict.client.ranges import INT32, UINT64

SESSION_HELP = "session id: 1-128 characters of [A-Za-z0-9._:-]"
ESCAPES_HELP = r"backslash escapes are decoded: \n \t \r \\ \xHH \uHHHH (so --stop '\n\n' is a blank line)"
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.?)", re.S)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def integer(low: int, high: int) -> Callable[[str], int]:
    """An integer from `low` to `high` inclusive (the range of its protobuf field)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return number

    return parse


def positive_seconds(value: str) -> float:
    """A duration in seconds: a finite number above 0 (0 or less would fail every call at once)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {value}")
    return seconds


def token_ids(value: str) -> list[int]:
    """Comma-separated token ids, each a 32-bit integer: 1,2,3."""
    try:
        ids = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids like 1,2,3, got {value!r}") from None
    for token in ids:
        if not INT32[0] <= token <= INT32[1]:
            raise argparse.ArgumentTypeError(f"token id {token} is not a 32-bit integer")
    return ids


def escapes(value: str) -> str:
    r"""The string with its backslash escapes decoded: a shell passes `"\n"` as two characters."""

    def decode(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in _SIMPLE:
            return _SIMPLE[code]
        if len(code) > 1 and int(code[1:], 16) <= 0x10FFFF:
            return chr(int(code[1:], 16))
        shown = f"\\{code}" if code else "\\ at the end"
        raise argparse.ArgumentTypeError(f"unknown escape {shown} in {value}; write \\\\ for a backslash")

    return _ESCAPE.sub(decode, value)


def add_guard_options(parser: argparse.ArgumentParser, what: str = "the session") -> None:
    """--expected-position and --expected-incarnation: run only on the state the caller expects."""
    parser.add_argument(
        "--expected-position", type=integer(*UINT64), help=f"fail (exit 4) unless {what} is at this position"
    )
    parser.add_argument(
        "--expected-incarnation",
        type=integer(*UINT64),
        help=f"fail (exit 4) unless {what} is this history of it (its incarnation; 0: it must not exist)",
    )
