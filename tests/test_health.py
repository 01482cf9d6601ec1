"""The standard health service: Check and Watch, following the server through a drain."""

from __future__ import annotations

import queue
import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import RunningServer
from tests.serverproc import ServerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def watch(address: str, service: str = "") -> tuple[queue.Queue, grpc.Channel]:
    """Statuses of a Watch stream as they arrive (None when it ends), read on a thread of its own."""
    channel = grpc.insecure_channel(address)
    statuses: queue.Queue = queue.Queue()
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service), timeout=120)

    def read() -> None:
        try:
            for reply in call:
                statuses.put(reply.status)
        except grpc.RpcError as exc:
            statuses.put(exc.code())
        statuses.put(None)

    threading.Thread(target=read, daemon=True).start()
    return statuses, channel


@pytest.mark.parametrize("service", ["", "seqpredict.v1.SequencePredictor"])
def test_watch_reports_serving_then_not_serving_when_the_server_drains(service: str) -> None:
    server = RunningServer()
    statuses, channel = watch(server.address, service)
    try:
        assert statuses.get(timeout=30) == SERVING
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        assert statuses.get(timeout=30) == NOT_SERVING, "the open Watch stream sees the drain"
        stopping.join(60)
    finally:
        channel.close()


@pytest.mark.slow
def test_an_open_watch_stream_does_not_hold_the_drain_open(tmp_path) -> None:
    """A Watch never ends by itself; a drain with 30 s of grace must not wait for it."""
    server = ServerProcess(tmp_path / "server.log", "--grace-s", "30")
    statuses, channel = watch(server.address)
    try:
        assert statuses.get(timeout=30) == SERVING
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert statuses.get(timeout=30) == NOT_SERVING
        assert server.wait(60) == 0
        assert time.monotonic() - started < 20, "the drain waited for the health Watch stream"
    finally:
        channel.close()
