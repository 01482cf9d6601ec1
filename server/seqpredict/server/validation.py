"""Checks on everything a client sends, before any of it reaches the scheduler.

Each check raises RequestFailed(INVALID_ARGUMENT, ...) with a message that says what was
wrong and what is allowed. No protobuf and no torch: the service passes plain values in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from seqpredict.models import UnknownCharacterError, Vocabulary
from seqpredict.server.errors import Code, RequestFailed

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SESSION_PREFIX = re.compile(r"[A-Za-z0-9._:-]{0,128}")
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
MAX_TEMPERATURE = 100.0
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 64
DEFAULT_TOP_K = 5


def invalid(message: str, limit: str | None = None) -> RequestFailed:
    return RequestFailed(Code.INVALID_ARGUMENT, message, limit=limit)


@dataclass(frozen=True)
class Validator:
    vocab: Vocabulary
    max_tokens_per_request: int
    max_generate_tokens: int

    def session_id(self, value: str) -> str:
        if SESSION_ID.fullmatch(value) is None:
            shown = value if len(value) <= 40 else value[:40] + "…"
            raise invalid(
                f"session_id {shown!r} must be 1-128 characters of [A-Za-z0-9._:-] (got {len(value)} characters)"
            )
        return value

    def prefix(self, value: str) -> str:
        if SESSION_PREFIX.fullmatch(value) is None:
            raise invalid(f"prefix must be 0-128 characters of [A-Za-z0-9._:-] (got {len(value)} characters)")
        return value

    @staticmethod
    def page_size(value: int) -> int:
        """0 means the default; more than the maximum means the maximum (as Google's AIP-158 asks)."""
        return DEFAULT_PAGE_SIZE if value == 0 else min(value, MAX_PAGE_SIZE)

    def tokens(self, ids: Sequence[int], text: str, what: str = "input") -> list[int]:
        """Token ids from either ids or text (not both), bounded by max_tokens_per_request."""
        if ids and text:
            raise invalid(f"give the {what} as token ids or as text, not both")
        if text:
            if len(text) > self.max_tokens_per_request:
                raise self._too_many(len(text), what)
            try:
                return self.vocab.encode(text)
            except UnknownCharacterError as exc:
                raise invalid(f"{what} text: {exc}") from None
        if len(ids) > self.max_tokens_per_request:
            raise self._too_many(len(ids), what)
        tokens = list(ids)
        if tokens and (min(tokens) < 0 or max(tokens) >= len(self.vocab)):
            bad = next(i for i, t in enumerate(tokens) if not 0 <= t < len(self.vocab))
            raise invalid(f"{what} token {tokens[bad]} at index {bad} is outside the vocabulary [0, {len(self.vocab)})")
        return tokens

    def _too_many(self, n: int, what: str) -> RequestFailed:
        limit = self.max_tokens_per_request
        return invalid(f"{what} has {n} tokens; at most {limit} per request", "tokens_per_request")

    def top_k(self, value: int | None, default: int | None) -> int:
        """1..V when given; `default` when unset (None: no limit, returned as 0)."""
        if value is None:
            return min(default, len(self.vocab)) if default is not None else 0
        if not 1 <= value <= len(self.vocab):
            raise invalid(f"top_k must be between 1 and the vocabulary size {len(self.vocab)}, got {value}")
        return value

    def temperature(self, value: float | None) -> float:
        if value is None:
            return 1.0
        if not math.isfinite(value) or not 0.0 <= value <= MAX_TEMPERATURE:
            raise invalid(f"temperature must be a number in [0, {MAX_TEMPERATURE:g}] (0 is greedy), got {value}")
        return float(value)

    def top_p(self, value: float | None) -> float:
        if value is None:
            return 1.0
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise invalid(f"top_p must be in (0, 1], got {value}")
        return float(value)

    def max_tokens(self, value: int) -> int:
        if not 1 <= value <= self.max_generate_tokens:
            raise invalid(
                f"max_tokens must be between 1 and {self.max_generate_tokens}, got {value}",
                "generate_tokens" if value > self.max_generate_tokens else None,
            )
        return value

    def stop(self, values: Sequence[str]) -> tuple[str, ...]:
        if len(values) > MAX_STOP_STRINGS:
            raise invalid(f"at most {MAX_STOP_STRINGS} stop strings, got {len(values)}")
        for s in values:
            if not 1 <= len(s) <= MAX_STOP_LENGTH:
                raise invalid(f"stop strings must be 1-{MAX_STOP_LENGTH} characters, got {len(s)}")
        return tuple(values)
