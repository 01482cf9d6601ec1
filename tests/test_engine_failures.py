"""When the inference side fails: visible at once, never a hang, never a wrong or partial session.

Faults are injected into the real in-process server (a method of its scheduler or engine made to
raise or stall), and everything is observed from outside over gRPC and the metrics endpoint.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import Counter, Metrics, assert_counters_moved, unique_id, wait_until
from tests.conftest import RunningServer
from tests.reference import assert_top_matches, reference_probabilities
from tests.serverproc import ServerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(server: RunningServer) -> int:
    with grpc.insecure_channel(server.address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def feed(stub, session_id: str, text: str) -> pb.PredictResponse:
    (response,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, text=text)]), timeout=30))
    return response


def test_when_the_inference_thread_dies_calls_fail_internal_and_health_turns_not_serving() -> None:
    server = RunningServer()
    try:
        scheduler = server.app.scheduler

        def broken_requeue(batch):  # an exception outside the engine call, on the inference thread
            raise RuntimeError("injected: the scheduler's bookkeeping broke")

        scheduler._requeue = broken_requeue  # type: ignore[method-assign]
        stub = server.stub()
        waiting = unique_id("waiting")
        answer = feed(stub, waiting, "abc")
        assert answer.error.code == grpc.StatusCode.INTERNAL.value[0], "the call fails instead of hanging"
        wait_until(lambda: health(server) == NOT_SERVING, "health follows the inference thread")
        assert server.app.fatal.is_set(), "the server is told to shut down (the CLI exits 1)"
        later = feed(stub, unique_id("later"), "x")
        assert later.error.code == grpc.StatusCode.INTERNAL.value[0]
        assert "inference engine has stopped" in later.error.message
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(pb.GenerateRequest(session_id=unique_id("gen"), max_tokens=2), timeout=10))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert Metrics(server.metrics_url).value("seqpredict_ready") == 0
        assert http_status(server, "/healthz") == http_status(server, "/readyz") == 503
    finally:
        server.stop()


def http_status(server: RunningServer, path: str) -> int:
    """The HTTP status of GET `path` on the metrics port."""
    try:
        with urllib.request.urlopen(server.metrics_url.replace("/metrics", path), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_failing_batch_delivers_what_it_answered_and_discards_only_what_it_may_have_broken(model, vocab) -> None:
    """One batch holds a single-token request (the fused step) and a prefill (nn.LSTM), and the prefill
    path raises: the single-token answer is delivered and exact; the prefill's request fails INTERNAL
    and its session is dropped (reason "error") rather than kept half-updated."""
    server = RunningServer(max_delay_ms=300, max_batch_size=2)  # both requests wait for one batch
    try:
        stub = server.stub()
        single, prefill = unique_id("single"), unique_id("prefill")
        feed(stub, single, "ab")
        engine = server.app.scheduler.engine
        original = engine._run_chunk

        def broken_chunk(group, hidden):
            raise RuntimeError("injected: the prefill path broke")

        before = Metrics(server.metrics_url)
        engine._run_chunk = broken_chunk  # type: ignore[method-assign]
        message = pb.PredictManyRequest(
            requests=[pb.PredictRequest(session_id=single, text="c"), pb.PredictRequest(session_id=prefill, text="xyz")]
        )
        (reply,) = list(stub.PredictMany(iter([message]), timeout=30))
        engine._run_chunk = original  # type: ignore[method-assign]
        ok, failed = reply.responses
        assert not ok.HasField("error") and ok.position == 3, "answered before the failure: delivered as answered"
        assert_top_matches(ok.next, reference_probabilities(model, vocab.encode("abc"))[3], "the single token")
        assert failed.error.code == grpc.StatusCode.INTERNAL.value[0] and "discarded" in failed.error.message
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id=prefill), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert_counters_moved(
            server.metrics_url, before, {Counter.of("seqpredict_sessions_ended_total", reason="error"): 1}
        )
        assert health(server) == SERVING and feed(stub, single, "d").position == 4, "and the server goes on"
    finally:
        server.stop()


def test_a_stalled_inference_thread_takes_the_server_out_of_service_until_it_moves_again() -> None:
    server = RunningServer(engine_stall_s=1.0)
    try:
        engine = server.app.scheduler.engine
        original, release = engine.run, threading.Event()

        def stuck(batch, out):
            release.wait(30)
            return original(batch, out)

        engine.run = stuck  # type: ignore[method-assign]
        stub = server.stub()
        result: list[pb.PredictResponse] = []
        caller = threading.Thread(target=lambda: result.append(feed(stub, unique_id("stuck"), "abc")))
        caller.start()
        wait_until(lambda: health(server) == NOT_SERVING, "NOT_SERVING while the inference thread is silent")
        engine.run = original  # type: ignore[method-assign]
        release.set()
        caller.join(30)
        assert result and result[0].position == 3, "the request that waited is answered once the thread moves"
        wait_until(lambda: health(server) == SERVING, "SERVING again")
        assert not server.app.fatal.is_set()
    finally:
        server.stop()


def test_a_started_request_is_finished_even_when_its_stream_is_cancelled(model, vocab) -> None:
    """An 8,192-token request runs in 512 batches of 16 tokens here. Cancelled after it started, it is
    still applied whole: the session is at 8,192, never at a chunk boundary in between."""
    server = RunningServer(prefill_chunk=16, max_batch_tokens=16)
    try:
        stub = server.stub()
        sid = unique_id("whole")
        text = ("To be, or not to be, that is the question. " * 200)[:8192]
        consumed = Counter.of("seqpredict_tokens_consumed_total")
        before = consumed.read(Metrics(server.metrics_url))
        call = stub.Predict(iter([pb.PredictRequest(session_id=sid, text=text)]), timeout=120)
        wait_until(lambda: consumed.read(Metrics(server.metrics_url)) > before, "the request started")
        call.cancel()
        info = stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=120)  # queued behind it
        assert info.position == 8192, f"applied in part: position {info.position}"
        after = feed(stub, sid, "!")
        reference = reference_probabilities(model, vocab.encode(text + "!"))
        assert_top_matches(after.next, reference[8193], "after the cancelled request")
    finally:
        server.stop()


def test_a_generation_cancelled_during_its_prompt_feeds_the_whole_prompt_and_nothing_more() -> None:
    server = RunningServer(prefill_chunk=16, max_batch_tokens=16)
    try:
        stub = server.stub()
        sid = unique_id("prompt")
        prompt = ("Now is the winter of our discontent. " * 100)[:2048]
        consumed = Counter.of("seqpredict_tokens_consumed_total")
        before = consumed.read(Metrics(server.metrics_url))
        call = stub.Generate(pb.GenerateRequest(session_id=sid, prompt_text=prompt, max_tokens=100), timeout=120)
        wait_until(lambda: consumed.read(Metrics(server.metrics_url)) > before, "the prompt started")
        call.cancel()
        info = stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=120)  # queued behind it
        assert info.position == 2048, "the whole prompt, and no generated token after the cancel"
    finally:
        server.stop()


# -- the multi-process server: the engine and the frontends are processes that can die ----------------------


def _pid_of(server: ServerProcess, what: str) -> int:
    """The pid the supervisor logged for "engine process" or "frontend 1"."""
    match = re.findall(rf"{what} (?:process )?ready \(pid (\d+)\)", server.log())
    assert match, f"no pid for {what} in the log"
    return int(match[-1])


def test_when_the_engine_process_dies_calls_fail_at_once_and_the_server_exits_1(tmp_path) -> None:
    """SIGKILL to the engine mid-generation: the generation fails INTERNAL at once (not at its deadline),
    health turns NOT_SERVING, and the supervisor stops the frontends and exits 1 for the orchestrator
    to restart the server."""
    server = ServerProcess(tmp_path / "server.log", "--frontends", "1")
    try:
        stub = server.stub()
        generation = stub.Generate(pb.GenerateRequest(session_id=unique_id("gen"), max_tokens=4096), timeout=120)
        next(generation)
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == SERVING
            os.kill(_pid_of(server, "engine"), signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as err:
                for _ in generation:
                    pass
            assert err.value.code() == grpc.StatusCode.INTERNAL and "engine has stopped" in err.value.details()
            assert next(watch).status == NOT_SERVING, "health follows the engine"
        assert server.wait(60) == 1
        assert "the engine process exited" in server.log()
    finally:
        server.kill()


def test_a_frontend_that_dies_is_started_again_and_the_sessions_are_kept(tmp_path) -> None:
    server = ServerProcess(tmp_path / "server.log", "--frontends", "1")
    try:
        sid = unique_id("kept")
        assert feed(server.stub(), sid, "abc").position == 3
        os.kill(_pid_of(server, "frontend 1"), signal.SIGKILL)
        wait_until(lambda: server.log().count("frontend 1 ready") == 2, "the frontend is started again")
        server.wait_serving()
        assert feed(server.stub(), sid, "d").position == 4, "the engine kept the session"
        assert "frontend 1 exited" in server.log()
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
