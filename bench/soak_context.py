"""What every soak driver shares: the server's low limits, the connection, the stop signal, the checker.

The limits are set low on purpose (500 sessions, 5 s idle TTL, 256 tokens per request), so
eviction by capacity and by TTL and every size refusal happen all the time rather than once
an hour; the drivers read them from here to aim just past them. The stream window is small
(8 requests, 1 MiB of answers, against defaults of 1,024 and 8 MiB) so that flow control
engages constantly: every load stream keeps 16 requests in flight, every pipeline writes
thousands ahead, and the client that never reads fills its window at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from grpc import aio
from soak_check import Checker, Tallies

from seqpredict.models import Vocabulary
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.bystanders import PASSAGE

MAX_SESSIONS, IDLE_TTL_S, MAX_TOKENS, MAX_GENERATE, MAX_MESSAGE = 500, 5, 256, 256, 65536
STREAM_WINDOW, STREAM_WINDOW_BYTES = 8, 2**20
SERVER_FLAGS = (
    *("--max-sessions", str(MAX_SESSIONS), "--idle-ttl-s", str(IDLE_TTL_S)),
    *("--max-tokens-per-request", str(MAX_TOKENS), "--max-generate-tokens", str(MAX_GENERATE)),
    *("--max-message-bytes", str(MAX_MESSAGE)),
    *("--stream-window", str(STREAM_WINDOW), "--stream-window-bytes", str(STREAM_WINDOW_BYTES)),
    *("--grace-s", "10"),
)
# Load alternates every PHASE_S seconds: wide phases spread over 4 x 400 ids (more than the 500
# sessions allowed: eviction by capacity), narrow ones over 4 x 50 (the pool has room, so what the
# wide phase left behind idles out: eviction by TTL).
PHASE_S, LOAD_STREAMS, LOAD_IDS, NARROW_IDS = 20.0, 4, 400, 50


@dataclass
class Soak:
    """The shared state of one run: drivers stop when `stop` is set."""

    stub: pb_grpc.SequencePredictorStub
    channel: aio.Channel
    vocab: Vocabulary
    check: Checker
    stop: asyncio.Event
    started: float = field(default_factory=time.monotonic)
    never_read_open: bool = False  # whether the client that never reads holds a stream right now

    @property
    def tallies(self) -> Tallies:
        return self.check.tallies

    def wide(self) -> bool:
        """Whether load is in a wide phase (see PHASE_S)."""
        return int((time.monotonic() - self.started) // PHASE_S) % 2 == 0

    def chunk(self, rng: random.Random, longest: int = 64) -> list[int]:
        """1 token a third of the time (the fused step), else a prefill; text from PASSAGE or random ids."""
        n = 1 if rng.random() < 0.33 else rng.randint(2, longest)
        if rng.random() < 0.5:
            start = rng.randrange(len(PASSAGE))
            return self.vocab.encode((PASSAGE * 2)[start : start + n])
        return [rng.randrange(len(self.vocab)) for _ in range(n)]
