"""Eviction is never silent: counted by reason, reported by GetSession, signalled to the client."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import unique_id
from tests.conftest import RunningServer


def feed(stub, session_id: str, text: str, **kw) -> pb.PredictResponse:
    (response,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, text=text, **kw)]), timeout=30))
    return response


def ended(server: RunningServer, reason: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    line = next(x for x in text.splitlines() if x.startswith(f'seqpredict_sessions_ended_total{{reason="{reason}"}}'))
    return float(line.rsplit(" ", 1)[1])


def test_least_recently_used_session_is_evicted_at_the_limit():
    server = RunningServer(max_sessions=3)
    try:
        stub = server.stub()
        for name in ("a", "b", "c"):
            feed(stub, name, "abc")
        feed(stub, "a", "d")  # a is now the most recent; b the least
        assert feed(stub, "d", "x").created
        assert ended(server, "capacity") == 1
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id="b"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        lost = feed(stub, "b", "d", expected_position=3)
        assert lost.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and lost.position == 0
        again = feed(stub, "b", "d")
        assert again.created and again.position == 1, "the created flag tells a client its state was lost"
        assert stub.GetSession(pb.GetSessionRequest(session_id="a")).position == 4
    finally:
        server.stop()


def test_reject_policy_refuses_new_sessions_and_keeps_the_old():
    server = RunningServer(max_sessions=2, session_policy="reject")
    try:
        stub = server.stub()
        feed(stub, "a", "x")
        feed(stub, "b", "x")
        refused = feed(stub, "c", "x")
        assert refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "session limit of 2" in refused.error.message
        assert feed(stub, "a", "y").position == 2
        stub.EndSession(pb.EndSessionRequest(session_id="b"))
        assert feed(stub, "c", "x").created
        assert ended(server, "end") == 1 and ended(server, "capacity") == 0
    finally:
        server.stop()


def test_idle_sessions_expire_after_the_ttl_and_get_session_says_when():
    server = RunningServer(idle_ttl_s=1.5)
    try:
        stub = server.stub()
        feed(stub, "idle", "abc")
        feed(stub, "busy", "abc")
        info = stub.GetSession(pb.GetSessionRequest(session_id="idle"))
        ttl = info.expires_at.ToNanoseconds() - info.last_used_at.ToNanoseconds()
        assert ttl == pytest.approx(1.5e9, abs=1e6)
        deadline = time.monotonic() + 10
        while ended(server, "ttl") < 1:
            feed(stub, "busy", "a")  # keeps this one alive
            assert time.monotonic() < deadline, "the reaper never expired the idle session"
            time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id="idle"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert feed(stub, "idle", "d", expected_position=3).error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert not feed(stub, "busy", "a").created
    finally:
        server.stop()


def test_get_session_inspects_without_keeping_the_session_alive():
    """A monitor polling a session must not refresh its last use, its expiry or its place in the
    eviction order: after GetSession, the session is still the least recently used."""
    server = RunningServer(max_sessions=2)
    try:
        stub = server.stub()
        watched, busy = unique_id("watched"), unique_id("busy")
        feed(stub, watched, "a")
        feed(stub, busy, "b")
        first = stub.GetSession(pb.GetSessionRequest(session_id=watched), timeout=30)
        time.sleep(1.1)  # a later GetSession would show a later last use if it touched the session
        second = stub.GetSession(pb.GetSessionRequest(session_id=watched), timeout=30)
        assert second.last_used_at == first.last_used_at and second.expires_at == first.expires_at
        feed(stub, unique_id("newcomer"), "c")  # the limit evicts the least recently *used* session
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id=watched), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.GetSession(pb.GetSessionRequest(session_id=busy), timeout=30).position == 1
    finally:
        server.stop()
