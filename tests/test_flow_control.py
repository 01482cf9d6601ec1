"""Flow control and bounded answers: a client that never reads costs bounded memory, a pipelining
client is slowed down and never refused, and no work is applied whose answer cannot be delivered."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from seqpredict.client import Client
from seqpredict.models import CharRNN, Vocabulary
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.badinput import EXHAUSTED, NOT_FOUND, number
from tests.bystanders import (
    Bystanders,
    BystanderStream,
    Counter,
    Metrics,
    assert_counters_moved,
    rejected_total,
    unique_id,
    wait_until,
)
from tests.conftest import RunningServer
from tests.reference import assert_top_matches, reference_probabilities
from tests.serverproc import ServerProcess

# A channel of its own connection: gRPC otherwise shares one connection among channels to a target.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
V = 82
DECLARED = (("seqpredict-max-receive-bytes", str(64 * 1024 * 1024)),)
BIG_CHANNEL = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class CountingRequests:
    """A request iterator that counts how many requests gRPC has taken from it."""

    def __init__(self, make: callable) -> None:  # type: ignore[valid-type]
        self.make = make
        self.taken = 0
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[pb.PredictRequest]:
        while not self.stop.is_set():
            self.taken += 1
            yield self.make(self.taken - 1)


@pytest.mark.slow
def test_a_client_that_never_reads_is_held_back_and_costs_bounded_memory(tmp_path, model: CharRNN) -> None:
    """Requests whose answers are ~0.4 MB each (all_steps, top_k = the vocabulary), written as fast as
    gRPC takes them and never read: the server stops reading the stream, so the client's writes stop
    being taken (once the HTTP/2 windows are full), the server's memory stays flat, and other clients are
    served all along. Reading then gets the answers, in order and correct."""
    server = ServerProcess(tmp_path / "server.log")
    try:
        rng = random.Random(5)
        tokens = [[rng.randrange(V) for _ in range(256)] for _ in range(8)]
        greedy = unique_id("greedy")

        def make(i: int) -> pb.PredictRequest:
            return pb.PredictRequest(session_id=greedy, tokens=tokens[i % 8], all_steps=True, top_k=V, request_id=i)

        baseline = server.rss_bytes()
        requests = CountingRequests(make)
        call = server.stub().Predict(iter(requests), timeout=300)
        with Client(server.address) as bystander:
            chat = bystander.session(unique_id("bystander"))
            samples = []
            for _ in range(8):  # 8 s of the greedy client writing while the bystander is served
                time.sleep(1.0)
                assert chat.feed("a").position > 0
                samples.append((requests.taken, server.rss_bytes()))
        taken_midway, taken_end = samples[3][0], samples[-1][0]
        grown = max(rss for _, rss in samples) - baseline
        assert taken_end - taken_midway <= 1, f"the server kept reading: {samples}"
        assert grown < 300 * 2**20, f"server memory grew by {grown / 2**20:.0f} MB for a client that never reads"
        paused = Metrics(server.metrics_url).value("seqpredict_streams_paused")
        assert paused == 1, "the stream is counted as paused by flow control"

        fed: list[int] = []
        for i, response in zip(range(40), call, strict=False):
            assert response.request_id == i and not response.HasField("error")
            fed += tokens[i % 8]
            assert response.position == len(fed)
            if i < 3:  # the answers that waited longest are still the right ones
                reference = reference_probabilities(model, fed)
                assert_top_matches(response.next, reference[len(fed)], f"answer {i}")
        requests.stop.set()
        call.cancel()
    finally:
        server.kill()


def test_pipelining_thousands_of_requests_on_one_session_works_and_runs_in_chunks(
    server: RunningServer, model: CharRNN, vocab: Vocabulary
) -> None:
    """`stream()` of 2,000 single characters: all applied, in order, none refused; the session's
    queued requests share chunks, so far fewer engine batches than requests run."""
    rng = random.Random(11)
    text = "".join(rng.choice(vocab.chars) for _ in range(2000))
    batches = Counter.of("seqpredict_batch_size_count")
    before = batches.read(Metrics(server.metrics_url))
    with Client(server.address) as client:
        session = client.session(unique_id("pipeline"), strict=True, position=0)
        answers = list(session.stream(list(text)))
    assert [a.position for a in answers] == list(range(1, 2001))
    ran = batches.read(Metrics(server.metrics_url)) - before
    assert ran < 1000, f"{ran} batches for 2,000 pipelined requests: consecutive requests were not chunked"
    reference = reference_probabilities(model, vocab.encode(text))
    for i in (0, 1, 499, 1000, 1999):
        assert_top_matches(answers[i].next, reference[i + 1], f"pipelined answer {i}")


def _huge(session_id: str) -> pb.PredictRequest:
    """~11 MB of answer: the top-k of the whole vocabulary after each of 8,192 tokens."""
    rng = random.Random(2)
    return pb.PredictRequest(
        session_id=session_id, tokens=[rng.randrange(V) for _ in range(8192)], all_steps=True, top_k=V
    )


def test_an_answer_the_client_cannot_receive_is_refused_before_any_work(server: RunningServer) -> None:
    """A client that declares nothing gets gRPC's default receive limit of 4 MiB: an ~11 MB answer is
    refused in-band with RESOURCE_EXHAUSTED naming the limit, and nothing is applied. Declaring a
    larger limit (as our client libraries do) gets the answer."""
    session = unique_id("huge")
    before = Metrics(server.metrics_url)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        (refused,) = list(stub.Predict(iter([_huge(session)]), timeout=120))
        assert refused.error.code == number(EXHAUSTED), refused.error
        assert "4194304-byte limit" in refused.error.message and "nothing was applied" in refused.error.message
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id=session), timeout=30)
        assert err.value.code() == NOT_FOUND, "nothing was applied: the session was never created"
    assert_counters_moved(server.metrics_url, before, {rejected_total("answer_size"): 1})
    with grpc.insecure_channel(server.address, options=BIG_CHANNEL) as channel:
        (answer,) = list(
            pb_grpc.SequencePredictorStub(channel).Predict(iter([_huge(session)]), timeout=120, metadata=DECLARED)
        )
    assert not answer.HasField("error") and answer.position == 8192 and len(answer.steps) == 8192


def test_a_predict_many_message_whose_answer_is_too_large_applies_none_of_its_requests(server: RunningServer) -> None:
    """2,000 one-token requests asking for all steps of the whole vocabulary: ~6 MB of answer for a
    message of ~30 kB. Every request is refused (the message is all or nothing), no session is created,
    and the same message goes through for a client that declares it can take the answer."""
    ids = [unique_id(f"many{i}") for i in range(2000)]
    message = pb.PredictManyRequest(
        requests=[pb.PredictRequest(session_id=s, tokens=[i % V], all_steps=True, top_k=V) for i, s in enumerate(ids)]
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        (reply,) = list(stub.PredictMany(iter([message]), timeout=120))
        assert len(reply.responses) == len(ids)
        assert all(r.error.code == number(EXHAUSTED) for r in reply.responses)
        assert "this message's answer" in reply.responses[0].error.message
        for sid in (ids[0], ids[-1]):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=30)
            assert err.value.code() == NOT_FOUND
    with grpc.insecure_channel(server.address, options=BIG_CHANNEL) as channel:
        (reply,) = list(
            pb_grpc.SequencePredictorStub(channel).PredictMany(iter([message]), timeout=120, metadata=DECLARED)
        )
    assert all(not r.HasField("error") and r.position == 1 for r in reply.responses)


def test_a_paused_stream_does_not_hold_up_other_streams(limited: RunningServer, bystanders: Bystanders) -> None:
    """With a window of 4 requests, a stream whose client stops reading pauses; bystanders on other
    streams of the same channel keep getting exact answers while it is paused."""
    channel = grpc.insecure_channel(limited.address)
    stub = pb_grpc.SequencePredictorStub(channel)
    slow, text = unique_id("slow"), "abcdefgh" * 32  # ~0.4 MB answers: the client's buffers fill fast
    requests = CountingRequests(lambda i: pb.PredictRequest(session_id=slow, text=text, all_steps=True, top_k=V))
    call = stub.Predict(iter(requests), timeout=120)
    paused = lambda: Metrics(limited.metrics_url).value("seqpredict_streams_paused") >= 1
    wait_until(paused, "the unread stream pauses")
    stream = BystanderStream(stub, bystanders)
    for i in range(5):
        stream.round(f"round {i} beside a stream that is not read")
    stream.close()
    assert paused(), "still paused: its client has not read anything"
    requests.stop.set()
    call.cancel()
    channel.close()


def ends_quietly(server: ServerProcess) -> None:
    """Every stream is gone, the next client is served, the drain exits 0, and no error was logged."""
    wait_until(lambda: Metrics(server.metrics_url).value("seqpredict_streams_active") == 0, "all gone")
    with Client(server.address) as client:
        assert client.session(unique_id("next")).feed("abc").position == 3
    server.signal()
    assert server.wait(60) == 0
    assert " ERROR " not in server.log(), server.log()


@pytest.mark.slow
def test_streams_abandoned_while_flow_control_holds_their_answers_end_quietly(tmp_path) -> None:
    """A client that stops reading, then cancels: its stream ends without an error in the server's
    log (it is a client going away, not a server failure), and the server serves the next one."""
    server = ServerProcess(tmp_path / "server.log", "--stream-window", "8", "--stream-window-bytes", "1048576")
    try:
        for k in range(3):
            slow = unique_id(f"gone{k}")
            requests = CountingRequests(
                lambda i, s=slow: pb.PredictRequest(session_id=s, text="abcdefgh" * 32, all_steps=True, top_k=V)
            )
            call = server.stub().Predict(iter(requests), timeout=60)
            wait_until(lambda: Metrics(server.metrics_url).value("seqpredict_streams_paused") >= 1, "paused")
            time.sleep(1)  # the server's write of an answer is held by flow control when the client goes
            call.cancel()
            requests.stop.set()
        ends_quietly(server)
    finally:
        server.kill()


@pytest.mark.slow
def test_generations_abandoned_while_flow_control_holds_their_tokens_end_quietly(tmp_path) -> None:
    """The same for Generate: clients that ask for thousands of tokens, never read and cancel once
    HTTP/2 flow control holds the server's write: no error in the server's log (seen in soaks: grpc
    logs ExecuteBatchError when the failed write, or the status after it, is handled before the
    cancellation), and the server serves the next one. Rounds of 8 at once, to meet that race."""
    server = ServerProcess(tmp_path / "server.log")
    try:
        for k in range(4):
            calls, channels = [], []
            for n in range(8):
                request = pb.GenerateRequest(
                    session_id=unique_id(f"gone{k}-{n}"), prompt_text="a", max_tokens=4096, seed=n
                )
                # No automatic window growth: 4,096 answers of ~35 bytes overflow HTTP/2's first 64 KB window.
                channels.append(grpc.insecure_channel(server.address, [*OWN_CONNECTION, ("grpc.http2.bdp_probe", 0)]))
                calls.append(pb_grpc.SequencePredictorStub(channels[-1]).Generate(request, timeout=60))
            time.sleep(2)  # every window is full; the server's next writes wait for clients that never read
            for call, channel in zip(calls, channels, strict=True):
                call.cancel()
                channel.close()
        ends_quietly(server)
    finally:
        server.kill()
