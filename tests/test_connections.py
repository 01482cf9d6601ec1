"""Connections are bounded: idle and half-open ones cannot use up the server's file descriptors,
the clients already connected keep being served, and metrics and /readyz answer at the limit."""

from __future__ import annotations

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


def test_at_the_connection_limit_connected_clients_metrics_and_readyz_keep_answering(tmp_path) -> None:
    """20 connections that never say a word against a limit of 8: they are refused beyond the limit
    and closed after the handshake timeout; meanwhile the client connected before them is served,
    and the metrics port answers /metrics and /readyz."""
    server = ServerProcess(tmp_path / "server.log", "--max-connections", "8")
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
    states: list[grpc.ChannelConnectivity] = []
    idle = threading.Event()

    def seen(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            idle.set()

    try:
        with grpc.insecure_channel(server.address, OWN_CONNECTION) as channel:
            channel.subscribe(seen, try_to_connect=False)
            assert check(channel) == SERVING
            assert idle.wait(30), f"the server never closed the idle connection: {states}"
            assert check(channel) == SERVING, "a client simply reconnects"
    finally:
        server.kill()
