"""Clients that go away: cancelled calls, closed channels, killed processes, expired deadlines,
and a thousand streams abandoned without a goodbye. Nothing leaks, nobody else notices."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from seqpredict.models import CharRNN, Vocabulary
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.badinput import (
    DEFAULT_MAX_GENERATE,
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
    unique_id,
    wait_until,
)
from tests.conftest import RunningServer
from tests.reference import TOLERANCE, assert_top_matches, reference_probabilities
from tests.serverproc import ServerProcess

# -- clients that go away -----------------------------------------------------------------------------------------

# A client that opens Predict streams, writes its requests, waits for each stream's first answer,
# says "ready" and then hangs until it is SIGKILLed: its connections end without any HTTP/2 goodbye.
ABANDONING_CLIENT = r"""
import asyncio, sys
from grpc import aio
from seqpredict.v1 import seqpredict_pb2 as pb, seqpredict_pb2_grpc as pb_grpc

async def main(address, channels, streams, requests, length, prefix):
    chans = [aio.insecure_channel(address) for _ in range(channels)]
    async def one(i):
        call = pb_grpc.SequencePredictorStub(chans[i % channels]).Predict()
        for j in range(requests):
            tokens = [(7 * j + 13 * t) % 80 for t in range(length)]
            await call.write(pb.PredictRequest(session_id=f"{prefix}-{i}", tokens=tokens, top_k=1))
        await call.read()
    await asyncio.gather(*(one(i) for i in range(streams)))
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]))
"""


def abandoning_tokens(j: int, length: int) -> list[int]:
    """Request j's tokens in ABANDONING_CLIENT."""
    return [(7 * j + 13 * t) % 80 for t in range(length)]


def abandon(address: str, channels: int, streams: int, requests: int, length: int, prefix: str) -> None:
    """Run ABANDONING_CLIENT until every stream is answered once, then SIGKILL it."""
    args = [str(a) for a in (address, channels, streams, requests, length, prefix)]
    client = subprocess.Popen([sys.executable, "-c", ABANDONING_CLIENT, *args], stdout=subprocess.PIPE)
    try:
        ready: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=lambda: ready.put(client.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        assert ready.get(timeout=120) == b"ready\n", "the abandoning client did not get its answers"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(30)


DISCONNECTS = ("cancel-the-call", "close-the-channel", "kill-the-client-process")


@pytest.mark.parametrize("how", DISCONNECTS)
def test_a_client_that_disconnects_mid_stream(
    server: RunningServer, bystanders: Bystanders, model: CharRNN, how: str
) -> None:
    """12 requests of 1000 tokens for one session are in flight when the client goes away: the
    server drops what it had not started and frees the stream, and the session's state is exactly
    that of the tokens its position counts. A request that had started is finished (never applied
    in part), so the position is a whole number of requests."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    session, requests, length = unique_id("gone"), 12, 1000
    before = Metrics(server.metrics_url)
    if how == "kill-the-client-process":
        abandon(server.address, 1, 1, requests, length, session)
        session = f"{session}-0"
    else:
        channel = grpc.insecure_channel(server.address)
        outbox: queue.Queue[pb.PredictRequest] = queue.Queue()
        for j in range(requests):  # the request stream is never half-closed: the client just goes
            outbox.put(pb.PredictRequest(session_id=session, tokens=abandoning_tokens(j, length), top_k=1))
        call = pb_grpc.SequencePredictorStub(channel).Predict(iter(outbox.get, None), timeout=120)
        assert next(call).position == length
        if how == "cancel-the-call":
            call.cancel()
        channel.close()
    stream.round("while the server cleans up")
    wait_until(lambda: calls_active(server) == 1, "the abandoned call leaves the concurrent-call budget")
    wait_until(lambda: Metrics(server.metrics_url).value("seqpredict_queue_depth") == 0, "the requests leave the queue")
    stub = server.stub()
    position = stub.GetSession(pb.GetSessionRequest(session_id=session), timeout=30).position
    assert length <= position <= requests * length
    fed = [t for j in range(requests) for t in abandoning_tokens(j, length)][:position]
    (now,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session, expected_position=position)])))
    assert_top_matches(now.next, reference_probabilities(model, fed)[position], "after the disconnect")
    stream.round("after")
    stream.close()
    assert_counters_moved(server.metrics_url, before, {handled_total("Predict", "Canceled"): 1})
    wait_until(lambda: Metrics(server.metrics_url).value("seqpredict_streams_active") == 0, "no stream left open")
    assert_serving(server.address)


def test_cancelled_generates_are_counted_as_canceled(server: RunningServer, bystanders: Bystanders) -> None:
    """grpc_server_handled_total is the per-code series dashboards alert on: a client cancelling
    must show as Canceled, never as OK or Unknown (a server fault). Repeated because where the
    cancel catches the handler (awaiting a token, or suspended in `yield`) varies from call to call."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    stub, calls = server.stub(), 40
    before = Metrics(server.metrics_url)
    for i in range(calls):
        call = stub.Generate(pb.GenerateRequest(session_id=unique_id(f"cancel{i}"), max_tokens=4096), timeout=60)
        next(call)
        call.cancel()
    stream.round("after")
    stream.close()
    assert_counters_moved(
        server.metrics_url,
        before,
        {
            handled_total("Generate", "Canceled"): calls,
            handled_total("Generate", "Unknown"): 0,
            handled_total("Generate", "OK"): 0,
        },
    )
    assert_serving(server.address)


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_generate_stopped_midway_leaves_a_consistent_session(
    server: RunningServer, bystanders: Bystanders, model: CharRNN, vocab: Vocabulary, how: str
) -> None:
    """A long Generate ends early (0.2 s deadline, or the client cancels): the session's position
    counts exactly the tokens fed, and its state is what replaying that many tokens with the same
    seed from the same state gives."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    stub, stopped, replay = server.stub(), unique_id("stopped"), unique_id("replay")
    prompt = vocab.encode("ROMEO:\n")
    for session in (stopped, replay):
        list(stub.Predict(iter([pb.PredictRequest(session_id=session, tokens=prompt)]), timeout=60))
    before = Metrics(server.metrics_url)
    request = pb.GenerateRequest(session_id=stopped, max_tokens=DEFAULT_MAX_GENERATE, seed=11)
    received: list[int] = []
    call = stub.Generate(request, timeout=0.2 if how == "deadline" else 60)
    with pytest.raises(grpc.RpcError) as err:
        for answer in call:
            received.append(answer.token)
            if how == "cancel" and len(received) == 20:
                call.cancel()
    assert err.value.code() == (grpc.StatusCode.DEADLINE_EXCEEDED if how == "deadline" else grpc.StatusCode.CANCELLED)
    stream.round("while the generation stops")

    position = stub.GetSession(pb.GetSessionRequest(session_id=stopped), timeout=30).position
    assert stub.GetSession(pb.GetSessionRequest(session_id=stopped), timeout=30).position == position, "settled"
    generated = position - len(prompt)
    assert len(received) <= generated < DEFAULT_MAX_GENERATE
    tokens: list[int] = []
    if generated:
        again = pb.GenerateRequest(session_id=replay, max_tokens=generated, seed=11)
        tokens = [a.token for a in stub.Generate(again, timeout=60)]
    assert tokens[: len(received)] == received, "the replay samples what the stopped call sent"
    now: dict[str, pb.PredictResponse] = {}
    for session in (stopped, replay):
        ask = pb.PredictRequest(session_id=session, top_k=len(vocab), expected_position=position)
        (now[session],) = list(stub.Predict(iter([ask]), timeout=60))
        assert not now[session].HasField("error"), now[session].error
    replayed = {t.id: t.probability for t in now[replay].next}
    for t in now[stopped].next:
        assert abs(t.probability - replayed[t.id]) <= TOLERANCE, f"token {t.id}: stopped vs replayed"
    reference = reference_probabilities(model, prompt + tokens)[position]
    assert_top_matches(now[stopped].next, reference, "stopped session vs reference")
    stream.round("after")
    stream.close()
    after = Metrics(server.metrics_url)
    counted = {
        code: handled_total("Generate", code).read(after) - handled_total("Generate", code).read(before)
        for code in ("Canceled", "DeadlineExceeded", "Unknown", "OK")
    }
    assert counted["Canceled"] + counted["DeadlineExceeded"] == 1, f"the stopped Generate was counted as {counted}"
    assert_serving(server.address)


@pytest.mark.slow
def test_a_thousand_abandoned_streams_leave_no_memory_behind(tmp_path: Path, model: CharRNN, vocab: Vocabulary) -> None:
    """Rounds of 1000 Predict streams (one request each, over 4 connections) whose client is SIGKILLed.

    RSS is read after a warm-up round (so allocator arenas, grpc's per-call pools and the 1000
    sessions the streams create all exist) and again after three more rounds that reuse the same
    session ids. A leak of 10 KB per abandoned stream would add 30 MB over those 3000 streams;
    below that, RSS moves with allocator fragmentation (glibc arenas keep freed blocks), a few MB.
    One frontend: every stream goes through it. With two, the kernel may send all four connections
    of the warm-up round to one frontend and the next round's to the other, whose first ~40 MB
    of pools then look like growth (seen: each frontend rose 49 -> 97 MB once and stayed there).
    """
    server = ServerProcess(tmp_path / "server.log", "--frontends", "1")
    try:
        bystanders, stub = Bystanders(model, vocab), server.stub()
        bystanders.round(stub, "before")
        # Any code: a stream whose client vanished after its last answer ends as OK in grpc.aio (see the report).
        handled = Counter.of("grpc_server_handled_total", grpc_method="Predict")
        rss = []
        for n in range(1, 5):
            start = handled.read(Metrics(server.metrics_url))
            abandon(server.address, 4, 1000, 1, 1, "abandoned")
            wait_until(
                lambda start=start: handled.read(Metrics(server.metrics_url)) - start == 1000,
                "the server noticed every abandoned stream",
                timeout=120,
            )
            wait_until(lambda: Metrics(server.metrics_url).value("seqpredict_streams_active") == 0, "streams freed")
            bystanders.round(stub, f"after round {n}")
            time.sleep(2)  # settle: let the event loop and grpc core finish freeing the calls
            rss.append(server.rss_bytes())
        assert server.health() == health_pb2.HealthCheckResponse.SERVING
        wait_until(
            lambda: Metrics(server.metrics_url).value("seqpredict_sessions_active") == 1000 + len(bystanders.members),
            "abandoned streams leave their sessions (ids reused every round), nothing more",
        )
        assert rss[-1] - rss[0] < 30 * 2**20, f"RSS after each round (MB): {[round(r / 2**20, 1) for r in rss]}"
    finally:
        server.signal()
        server.wait(60)
