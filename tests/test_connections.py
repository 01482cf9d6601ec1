"""Connections are bounded: idle and half-open ones cannot use up the server's file descriptors,
the clients already connected keep being served, and metrics and /readyz answer at the limit."""

from __future__ import annotations

import queue
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING
# A channel of its own connection: gRPC otherwise shares one connection among channels to a target.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def check(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def http_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


class ConnectionWatch:
    """The channel's states as gRPC reports them; `lost` is set once a connection that was READY
    is gone (closed by the server: idle timeout, GOAWAY)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.states: list[grpc.ChannelConnectivity] = []
        self.lost = threading.Event()
        channel.subscribe(self._seen, try_to_connect=False)

    def _seen(self, state: grpc.ChannelConnectivity) -> None:
        self.states.append(state)
        if state != grpc.ChannelConnectivity.READY and grpc.ChannelConnectivity.READY in self.states:
            self.lost.set()


def test_at_the_connection_limit_connected_clients_metrics_and_readyz_keep_answering(tmp_path) -> None:
    """20 connections that never say a word against a limit of 8: they are refused beyond the limit
    and closed after the handshake timeout; meanwhile the client connected before them is served,
    and the metrics port answers /metrics and /readyz. One frontend: the limit is per frontend."""
    server = ServerProcess(tmp_path / "server.log", "--max-connections", "8", "--frontends", "1")
    early = grpc.insecure_channel(server.address, OWN_CONNECTION)
    squatters: list[socket.socket] = []
    try:
        stub = pb_grpc.SequencePredictorStub(early)
        (answer,) = list(stub.Predict(iter([pb.PredictRequest(session_id="early", text="a")]), timeout=30))
        assert answer.position == 1
        squatters = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        time.sleep(0.5)
        with grpc.insecure_channel(server.address, OWN_CONNECTION) as late, pytest.raises(grpc.RpcError) as err:
            check(late)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, "a new connection is refused at the limit"
        (answer,) = list(stub.Predict(iter([pb.PredictRequest(session_id="early", text="b")]), timeout=30))
        assert answer.position == 2, "the client connected before the flood is served as before"
        assert check(early) == SERVING
        assert http_get(server.metrics_url) == 200
        assert http_get(server.metrics_url.replace("/metrics", "/readyz")) == 200
        # Connections that never complete the HTTP/2 handshake are closed after 10 s.
        deadline = time.monotonic() + 30
        while True:
            try:
                with grpc.insecure_channel(server.address, OWN_CONNECTION) as late:
                    assert check(late) == SERVING
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "half-open connections were never closed"
                time.sleep(0.5)
    finally:
        for s in squatters:
            s.close()
        early.close()
        server.kill()


def test_a_connection_with_no_calls_is_closed_after_the_idle_timeout(tmp_path) -> None:
    server = ServerProcess(tmp_path / "server.log", "--max-connection-idle-s", "1")
    try:
        with grpc.insecure_channel(server.address, OWN_CONNECTION) as channel:
            watch = ConnectionWatch(channel)
            assert check(channel) == SERVING
            assert watch.lost.wait(30), f"the server never closed the idle connection: {watch.states}"
            assert check(channel) == SERVING, "a client simply reconnects"
    finally:
        server.kill()


def test_with_two_frontends_each_one_holds_its_own_connection_limit(tmp_path) -> None:
    """The limit is per frontend process (each has its own descriptors), as nginx's
    worker_connections is per worker: 24 connections against a limit of 4 on two frontends get
    at least 4 and at most 8 through; the rest are refused, and the metrics port still answers."""
    server = ServerProcess(tmp_path / "server.log", "--max-connections", "4", "--frontends", "2")
    channels = [grpc.insecure_channel(server.address, OWN_CONNECTION) for _ in range(24)]
    try:
        served = 0
        for channel in channels:
            try:
                check(channel)
                served += 1
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert 4 <= served <= 8, f"{served} connections were served against 4 per frontend on 2 frontends"
        assert http_get(server.metrics_url.replace("/metrics", "/readyz")) == 200
    finally:
        for channel in channels:
            channel.close()
        server.kill()


def test_a_connection_past_its_maximum_age_is_asked_to_reconnect_and_its_open_call_finishes(tmp_path) -> None:
    """--max-connection-age-s: after it the server sends GOAWAY; a stream open on the old
    connection goes on within the grace period, and the client's next calls use a new connection."""
    server = ServerProcess(tmp_path / "server.log", "--max-connection-age-s", "1", "--grace-s", "30")
    try:
        with grpc.insecure_channel(server.address, OWN_CONNECTION) as channel:
            watch = ConnectionWatch(channel)
            stub = pb_grpc.SequencePredictorStub(channel)
            requests: queue.Queue[pb.PredictRequest | None] = queue.Queue()
            answers = stub.Predict(iter(requests.get, None), timeout=60)
            positions = []
            for _ in range(8):  # 4 s on one stream, across the 1 s age
                requests.put(pb.PredictRequest(session_id="aged", text="a"))
                positions.append(next(answers).position)
                time.sleep(0.5)
            requests.put(None)
            assert list(answers) == []
            assert positions == list(range(1, 9)), "the stream open at the age limit was served to its end"
            assert watch.lost.wait(30), f"the server never asked the client to reconnect: {watch.states}"
            assert check(channel) == SERVING, "a client simply reconnects"
    finally:
        server.kill()


def test_a_client_that_pings_too_often_is_sent_goaway_and_others_are_served(tmp_path) -> None:
    """Keepalive is enforced: pings without data more often than every 10 s earn GOAWAY after two
    strikes (the connection closes); a well-behaved client on its own connection is unaffected."""
    server = ServerProcess(tmp_path / "server.log")
    pinger_options = [
        *OWN_CONNECTION,
        ("grpc.keepalive_time_ms", 500),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    try:
        with (
            grpc.insecure_channel(server.address, OWN_CONNECTION) as calm,
            grpc.insecure_channel(server.address, pinger_options) as pinger,
        ):
            assert check(calm) == SERVING
            watch = ConnectionWatch(pinger)
            assert check(pinger) == SERVING
            assert watch.lost.wait(30), f"the pinging client was never sent GOAWAY: {watch.states}"
            assert check(calm) == SERVING, "the well-behaved client's connection is untouched"
    finally:
        server.kill()
