"""Batching settings do what they say: --max-delay-ms waits for a fuller batch of new work, and
never slows down work that is already running."""

from __future__ import annotations

import threading
import time

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import Counter, Metrics, unique_id
from tests.conftest import RunningServer

BATCHES = Counter.of("seqpredict_batch_size_count")
SESSIONS_BATCHED = Counter.of("seqpredict_batch_size_sum")


def test_max_delay_holds_the_batch_until_it_is_full() -> None:
    """Eight requests arriving 50 ms apart, with room for eight in a batch and up to 5 s to wait:
    one batch of eight, not one per arrival."""
    server = RunningServer(max_delay_ms=5000, max_batch_size=8)
    try:
        stub = server.stub()
        before = Metrics(server.metrics_url)
        answers: list[pb.PredictResponse] = []

        def ask(i: int) -> None:
            request = pb.PredictRequest(session_id=unique_id(f"b{i}"), text="ab")
            answers.extend(stub.Predict(iter([request]), timeout=60))

        callers = []
        for i in range(8):
            callers.append(threading.Thread(target=ask, args=(i,)))
            callers[-1].start()
            time.sleep(0.05)
        for caller in callers:
            caller.join(60)
        after = Metrics(server.metrics_url)
        assert len(answers) == 8 and all(a.position == 2 for a in answers)
        assert BATCHES.read(after) - BATCHES.read(before) == 1
        assert SESSIONS_BATCHED.read(after) - SESSIONS_BATCHED.read(before) == 8
    finally:
        server.stop()


def test_max_delay_does_not_delay_each_token_of_a_running_generation() -> None:
    """With 1 s of max delay, a 20-token generation waits for company at most once (its first batch),
    not before every token: it takes far less than 20 s."""
    server = RunningServer(max_delay_ms=1000)
    try:
        started = time.monotonic()
        tokens = list(
            server.stub().Generate(pb.GenerateRequest(session_id=unique_id("gen"), max_tokens=20), timeout=60)
        )
        assert len(tokens) == 20
        assert time.monotonic() - started < 10, "every generated token waited for max_delay"
    finally:
        server.stop()
