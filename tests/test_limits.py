"""The configured limits on sessions, per-session queues and concurrent calls: each refuses with
its own code and counter, answers every request exactly once, and frees up again."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from seqpredict.models import CharRNN, Vocabulary
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.badinput import (
    EXHAUSTED,
    LIMITED,
    NOT_FOUND,
    number,
)
from tests.bystanders import (
    Bystanders,
    BystanderStream,
    Counter,
    Metrics,
    assert_counters_moved,
    assert_serving,
    calls_active,
    handled_total,
    rejected_total,
    requests_total,
    unique_id,
    wait_until,
)
from tests.conftest import RunningServer
from tests.reference import assert_top_matches, reference_probabilities

# -- limits: sessions, per-session queue, concurrent calls ------------------------------------------------------


def test_session_limit_with_policy_reject(model: CharRNN, vocab: Vocabulary) -> None:
    """At max_sessions with eviction off, a new session is refused (in-band on Predict, the status on
    Generate), nobody is evicted, and a slot freed by EndSession is usable again."""
    server = RunningServer(max_sessions=3, session_policy="reject")
    try:
        stub = server.stub()
        bystanders = Bystanders(model, vocab, count=2)
        stream = BystanderStream(stub, bystanders)
        stream.round("fills two of the three slots")
        filler = unique_id("filler")
        list(stub.Predict(iter([pb.PredictRequest(session_id=filler, text="x")]), timeout=60))
        before = Metrics(server.metrics_url)

        one_too_many = unique_id("over")
        (answer,) = list(stub.Predict(iter([pb.PredictRequest(session_id=one_too_many, text="abc")]), timeout=60))
        assert answer.error.code == number(EXHAUSTED) and "session limit of 3" in answer.error.message
        assert not answer.created and not answer.next
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(pb.GenerateRequest(session_id=one_too_many, max_tokens=3), timeout=60))
        assert err.value.code() == EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id=one_too_many), timeout=60)
        assert err.value.code() == NOT_FOUND, "the refused session was never created"
        stream.round("existing sessions are served as before")

        stub.EndSession(pb.EndSessionRequest(session_id=filler), timeout=60)
        (answer,) = list(stub.Predict(iter([pb.PredictRequest(session_id=one_too_many, text="abc")]), timeout=60))
        assert not answer.HasField("error") and answer.created, "a freed slot is usable again"
        stream.round("after")
        stream.close()
        assert_counters_moved(
            server.metrics_url,
            before,
            {
                rejected_total("sessions"): 2,
                requests_total("predict", "ResourceExhausted"): 1,
                requests_total("generate", "ResourceExhausted"): 1,
                Counter.of("seqpredict_sessions_ended_total", reason="capacity"): 0,
            },
        )
        assert_serving(server.address)
    finally:
        server.stop()


def _flood_tokens(rng: random.Random, count: int, length: int, vocab_size: int) -> list[list[int]]:
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(count)]


def test_pipelining_one_session_is_slowed_down_never_refused_and_leaves_no_hole(
    limited: RunningServer, bystanders: Bystanders, model: CharRNN, vocab: Vocabulary
) -> None:
    """120 requests of the maximum length for one session, pipelined on one stream, outrun the
    engine; the stream's window (4 requests) fills, so the server stops reading until answers go
    out. Every request is applied once, in order, and answered; none is refused; bystander rounds
    at the start, middle and end of the stream are not affected."""
    stub, flood = limited.stub(), unique_id("flood")
    chunks = _flood_tokens(random.Random(3), 120, LIMITED["max_tokens_per_request"], len(vocab))
    flood_requests = [pb.PredictRequest(session_id=flood, tokens=c, request_id=i) for i, c in enumerate(chunks)]
    rounds = [bystanders.requests() for _ in range(3)]
    before = Metrics(limited.metrics_url)

    requests = [*rounds[0], *flood_requests[:60], *rounds[1], *flood_requests[60:], *rounds[2]]
    responses = list(stub.Predict(iter(requests), timeout=120))

    assert [(r.session_id, r.request_id) for r in responses] == [(r.session_id, r.request_id) for r in requests]
    n = len(bystanders.members)
    bystanders.check(responses[:n], "before the flood")
    bystanders.check(responses[n + 60 : 2 * n + 60], "mid-flood")
    bystanders.check(responses[-n:], "after the flood")
    answers = [r for r in responses if r.session_id == flood]
    assert not [r for r in answers if r.HasField("error")], "a pipelining client is slowed down, never refused"
    reference = reference_probabilities(model, [t for chunk in chunks for t in chunk])
    for i, r in enumerate(answers):
        position = (i + 1) * LIMITED["max_tokens_per_request"]
        assert r.position == position, "every request is applied once, in order"
        assert_top_matches(r.next, reference[position], f"flood request {r.request_id}")
    pauses = Counter.of("seqpredict_stream_pauses_total")
    assert pauses.read(Metrics(limited.metrics_url)) > pauses.read(before), "the window filled"
    assert_counters_moved(
        limited.metrics_url,
        before,
        {requests_total("predict", "OK"): len(answers) + 3 * n, requests_total("predict", "ResourceExhausted"): 0},
    )
    assert_serving(limited.address)
    bystanders.round(stub, "on a new stream")


def test_concurrent_call_limit(model: CharRNN, vocab: Vocabulary) -> None:
    """With max_streams=2, two open bystander streams use the budget: every further call is refused
    with RESOURCE_EXHAUSTED (health is exempt), and a call is admitted again once a stream ends."""
    server = RunningServer(max_streams=2)
    try:
        stub = server.stub()
        first, second = Bystanders(model, vocab, 2, "first"), Bystanders(model, vocab, 2, "second")
        streams = [BystanderStream(stub, first), BystanderStream(stub, second)]
        for s in streams:
            s.round("opening")
        before = Metrics(server.metrics_url)
        third_calls: dict[str, Callable[[], Any]] = {
            "Predict": lambda: list(stub.Predict(iter([pb.PredictRequest(session_id="third", text="a")]))),
            "PredictMany": lambda: list(stub.PredictMany(iter([pb.PredictManyRequest()]))),
            "Generate": lambda: list(stub.Generate(pb.GenerateRequest(session_id="third", max_tokens=1))),
            "GetSession": lambda: stub.GetSession(pb.GetSessionRequest(session_id=first.ids[0])),
            "GetModelInfo": lambda: stub.GetModelInfo(pb.GetModelInfoRequest()),
        }
        for name, call in third_calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == EXHAUSTED, name
            assert "too many concurrent calls (limit 2)" in err.value.details()
        assert_serving(server.address)
        for s in streams:
            s.round("the admitted streams go on")
        streams[1].close()
        wait_until(lambda: calls_active(server) == 1, "the closed stream leaves the budget")
        assert stub.GetSession(pb.GetSessionRequest(session_id=first.ids[0]), timeout=30).position > 0
        streams[0].round("after")
        streams[0].close()
        expected = {rejected_total("streams"): len(third_calls)}
        expected |= {handled_total(name, "ResourceExhausted"): 1 for name in third_calls}
        assert_counters_moved(server.metrics_url, before, expected)
    finally:
        server.stop()
