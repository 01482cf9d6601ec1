"""Shared constants of the bad-input tests (their fixtures live in conftest.py)."""

from __future__ import annotations

import grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
DEFAULT_MAX_TOKENS = 8192  # Settings.max_tokens_per_request
DEFAULT_MAX_GENERATE = 4096  # Settings.max_generate_tokens
# The `limited` server: limits small enough that a test can reach them cheaply.
LIMITED = {"max_tokens_per_request": 256, "max_message_bytes": 4096, "stream_window": 4}
HARD_MESSAGE_LIMIT = 4 * LIMITED["max_message_bytes"]  # admission.HARD_LIMIT_FACTOR: grpc itself refuses beyond


def number(code: grpc.StatusCode) -> int:
    """The status code number that in-band `RequestError.code` carries."""
    return code.value[0]
