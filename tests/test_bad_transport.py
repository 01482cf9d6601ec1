"""Calls that are wrong below the field level: unknown RPCs, bytes that are not the message,
messages over the size limit, and bytes that are not gRPC at all. Bystanders stay exact."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.badinput import (
    EXHAUSTED,
    HARD_MESSAGE_LIMIT,
    INVALID,
    LIMITED,
    UNIMPLEMENTED,
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
    unique_id,
    wait_until,
)
from tests.conftest import RunningServer

# -- RPCs that do not exist, and messages that are not what they claim -------------------------------------------

UNKNOWN_RPCS: dict[str, tuple[str, str]] = {
    "unknown-method-unary": ("/seqpredict.v1.SequencePredictor/Nope", "unary_unary"),
    "unknown-method-bidi": ("/seqpredict.v1.SequencePredictor/Nope", "stream_stream"),
    "method-name-wrong-case": ("/seqpredict.v1.SequencePredictor/predict", "stream_stream"),
    "unknown-service": ("/seqpredict.v1.Nope/Predict", "unary_unary"),
    "unknown-package": ("/no.such.Service/Method", "unary_stream"),
    "other-api-version": ("/seqpredict.v2.SequencePredictor/GetSession", "unary_unary"),
}


def _call_raw(channel: grpc.Channel, method: str, shape: str, payload: list[bytes]) -> list[Any]:
    """Call `method` with raw bytes (no serializer), whatever its streaming shape; returns the answers."""
    multicallable = getattr(channel, shape)(method)
    request: Any = iter(payload) if shape.startswith("stream") else payload[0]
    result = multicallable(request, timeout=30)
    return [result] if shape.endswith("unary") else list(result)


@pytest.mark.parametrize("method, shape", UNKNOWN_RPCS.values(), ids=UNKNOWN_RPCS.keys())
def test_unknown_rpc_is_unimplemented(server: RunningServer, bystanders: Bystanders, method: str, shape: str) -> None:
    """Names that are not in the service (or not a service of ours) never reach a handler."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    before = Metrics(server.metrics_url)
    with server.channel() as channel, pytest.raises(grpc.RpcError) as err:
        _call_raw(channel, method, shape, [b""])
    assert err.value.code() == UNIMPLEMENTED, err.value.details()
    # Refused by gRPC before any handler: no RPC started, no admission slot taken.
    assert_counters_moved(server.metrics_url, before, {Counter.of("grpc_server_started_total"): 0})
    wait_until(lambda: calls_active(server) == 1, "only the bystander stream holds an admission slot")
    stream.round("after")
    stream.close()
    assert_serving(server.address)


CORRUPT_MESSAGES: dict[str, tuple[str, str, list[bytes]]] = {
    "get-session-not-protobuf": ("/seqpredict.v1.SequencePredictor/GetSession", "unary_unary", [b"\xff\xff\xff"]),
    "generate-not-protobuf": ("/seqpredict.v1.SequencePredictor/Generate", "unary_stream", [b"\xff\xff"]),
    "predict-second-message-not-protobuf": (
        "/seqpredict.v1.SequencePredictor/Predict",
        "stream_stream",
        [pb.PredictRequest(session_id="corrupt-ok", text="a").SerializeToString(), b"\x0a\xff\xff\xff\xff"],
    ),
    "predict-truncated-field": ("/seqpredict.v1.SequencePredictor/Predict", "stream_stream", [b"\x0a\x10abc"]),
}


@pytest.mark.parametrize("method, shape, payload", CORRUPT_MESSAGES.values(), ids=CORRUPT_MESSAGES.keys())
def test_a_message_that_is_not_valid_protobuf_fails_only_its_call(
    server: RunningServer, bystanders: Bystanders, method: str, shape: str, payload: list[bytes]
) -> None:
    """Bytes that do not parse as the request are the client's error, not a server bug: INVALID_ARGUMENT."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    with server.channel() as channel, pytest.raises(grpc.RpcError) as err:
        _call_raw(channel, method, shape, payload)
    assert err.value.code() == INVALID, err.value.details()
    assert "not valid" in err.value.details()
    stream.round("after")
    stream.close()
    assert_serving(server.address)


def test_a_corrupt_message_behind_many_good_ones_ends_the_stream_after_their_answers(server: RunningServer) -> None:
    """The message is parsed while earlier answers are still being sent: every earlier request is
    answered, in order, and then the stream ends INVALID_ARGUMENT (never INTERNAL or a hang)."""
    sessions = [unique_id("corrupt-late") for _ in range(200)]  # one each: no per-session queue bound in play
    good = [pb.PredictRequest(session_id=s, text="a").SerializeToString() for s in sessions]
    payload = [*good, b"\x0a\xff\xff"]
    answers: list[pb.PredictResponse] = []
    with server.channel() as channel:
        call = channel.stream_stream(
            "/seqpredict.v1.SequencePredictor/Predict", response_deserializer=pb.PredictResponse.FromString
        )(iter(payload), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            answers.extend(call)
    assert err.value.code() == INVALID, err.value.details()
    assert [(a.session_id, a.position, a.HasField("error")) for a in answers] == [(s, 1, False) for s in sessions]
    assert_serving(server.address)


# -- message size ----------------------------------------------------------------------------------------------

OVERSIZED: dict[str, tuple[str, Callable[[pb_grpc.SequencePredictorStub], Any], int]] = {
    "predict-text": (
        "Predict",
        lambda stub: list(stub.Predict(iter([pb.PredictRequest(session_id="big", text="a" * 5000)]), timeout=30)),
        1,
    ),
    "predict-after-good-requests": (
        "Predict",
        lambda stub: list(
            stub.Predict(
                iter(
                    [pb.PredictRequest(session_id=unique_id("small"), text="ab")] * 3
                    + [pb.PredictRequest(session_id="big", tokens=[70] * 5000)]
                ),
                timeout=30,
            )
        ),
        1,
    ),
    "predict-many-of-small-requests": (
        "PredictMany",
        lambda stub: list(
            stub.PredictMany(
                iter(
                    [
                        pb.PredictManyRequest(
                            requests=[pb.PredictRequest(session_id=f"m{i}", text="a" * 200) for i in range(30)]
                        )
                    ]
                ),
                timeout=30,
            )
        ),
        1,
    ),
    "generate-prompt": (
        "Generate",
        lambda stub: list(stub.Generate(pb.GenerateRequest(session_id="big", prompt_text="a" * 5000, max_tokens=1))),
        1,
    ),
    "get-session-id": (
        "GetSession",
        lambda stub: stub.GetSession(pb.GetSessionRequest(session_id="x" * 5000), timeout=30),
        1,
    ),
    "import-session-blob": (
        "ImportSession",
        lambda stub: stub.ImportSession(pb.ImportSessionRequest(session_id="big", blob=b"\x00" * 5000), timeout=30),
        1,
    ),
    # Beyond 4x the limit gRPC itself refuses before reading (admission.HARD_LIMIT_FACTOR): same code, uncounted.
    "predict-over-the-grpc-hard-limit": (
        "Predict",
        lambda stub: list(
            stub.Predict(iter([pb.PredictRequest(session_id="big", text="a" * (HARD_MESSAGE_LIMIT + 1))]), timeout=30)
        ),
        0,
    ),
}


@pytest.mark.parametrize("method, call, counted", OVERSIZED.values(), ids=OVERSIZED.keys())
def test_a_message_over_the_size_limit_is_resource_exhausted(
    limited: RunningServer, bystanders: Bystanders, method: str, call: Callable, counted: int
) -> None:
    """Refused without being parsed and counted; beyond 4x the limit grpc refuses first (uncounted)."""
    stream = BystanderStream(limited.stub(), bystanders)
    stream.round("before")
    before = Metrics(limited.metrics_url)
    with pytest.raises(grpc.RpcError) as err:
        call(limited.stub())
    assert err.value.code() == EXHAUSTED, err.value.details()
    stream.round("after")
    stream.close()
    expected = {rejected_total("message_size"): counted}
    if counted:
        expected[handled_total(method, "ResourceExhausted")] = 1
        assert f"over the limit of {LIMITED['max_message_bytes']}" in err.value.details()
    assert_counters_moved(limited.metrics_url, before, expected)
    assert_serving(limited.address)


# -- bytes that are not gRPC at all ---------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_noise = random.Random(5)
GARBAGE: dict[str, bytes] = {
    "random-bytes": _noise.randbytes(4096),
    "http1-get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "http1-post-to-a-method": b"POST /seqpredict.v1.SequencePredictor/Predict HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00",
    "truncated-preface": PREFACE[:11],
    "preface-then-random-bytes": PREFACE + _noise.randbytes(1024),
    "preface-then-a-16mb-frame-header": PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 64,
    "preface-then-headers-with-bad-hpack": PREFACE
    + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
    + b"\x00\x00\x08\x01\x04\x00\x00\x00\x01"  # HEADERS, END_HEADERS, stream 1, 8 bytes:
    + b"\xff" * 8,  # not a valid HPACK block
    "tls-client-hello-on-plaintext": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + _noise.randbytes(160),
    "connect-and-close": b"",
}


def _send_garbage(address: str, payload: bytes) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(payload)
    return sock


def _read_what_comes(sock: socket.socket) -> None:
    """Half-close, read the server's answer (if any) until it closes our connection, then close it."""
    sock.settimeout(5.0)
    try:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_bytes_on_the_grpc_port(server: RunningServer, bystanders: Bystanders, payload: bytes) -> None:
    """Bytes that are not HTTP/2 (or not valid HTTP/2) are grpc core's problem: no RPC starts, nothing else notices."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    before = Metrics(server.metrics_url)
    _read_what_comes(_send_garbage(server.address, payload))
    stream.round("after")
    stream.close()
    assert_counters_moved(server.metrics_url, before, {Counter.of("grpc_server_started_total"): 0})
    assert_serving(server.address)


def test_garbage_on_many_connections_held_open(server: RunningServer, bystanders: Bystanders) -> None:
    """50 connections stuck mid-handshake (a truncated preface, or random bytes) while sessions are served."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    held = [_send_garbage(server.address, PREFACE[:11] if i % 2 else _noise.randbytes(512)) for i in range(50)]
    stream.round("while the bad connections are open")
    assert_serving(server.address)
    for sock in held:
        sock.close()
    stream.round("after")
    stream.close()
    assert_serving(server.address)
