"""Replicas sharing one session space through a real redis-server, talked to directly (no proxy).

Sync durability's promise, tested with two replicas serving one session: every answer is
computed from the session's latest committed state, whichever replica computes it — even
when both write the same session at once (compare-and-set), and when a replica's copy is
stale. Async durability's: held sessions keep being served while Redis is down, a drain
hands every session over with its incarnation, and a crash's losses are told to a client
that sends its expected position and incarnation, never silent.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from seqpredict.models import CharRNN, Checkpoint
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import unique_id
from tests.cluster.replicas import RedisServer, Replicas
from tests.reference import assert_top_matches, reference_probabilities
from tests.serverproc import ServerProcess
from tests.test_properties import machine

pytestmark = pytest.mark.slow

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two sync replicas of the shipped shape (supervisor, engine, one frontend) on one Redis."""
    replicas = Replicas(tmp_path_factory.mktemp("pair"), redis_server.url, "sync")
    replicas.add(2)
    yield replicas
    replicas.stop_all()


def predict(replica: ServerProcess, sid: str, tokens: list[int], **fields: object) -> pb.PredictResponse:
    """One Predict on its own stream, routed like a client library routes it (x-session-id)."""
    with grpc.insecure_channel(replica.address) as channel:
        request = pb.PredictRequest(session_id=sid, tokens=tokens, **fields)
        stream = replica.stub(channel).Predict(iter([request]), timeout=30, metadata=(("x-session-id", sid),))
        (answer,) = list(stream)
        return answer


def check(model: CharRNN, history: list[int], answer: pb.PredictResponse, where: str) -> None:
    assert not answer.HasField("error"), f"{where}: {answer.error}"
    assert answer.position == len(history), where
    assert_top_matches(answer.next, reference_probabilities(model, history)[-1], where)


# -- sync -----------------------------------------------------------------------------------------------------
def test_a_session_moves_between_replicas_with_its_exact_state(pair: Replicas, checkpoint: Checkpoint) -> None:
    """Fed on A, then B, then A again (whose copy is stale by then): every answer is the
    reference's, the position runs on, and the incarnation never changes."""
    model, sid = checkpoint.build_model(), unique_id("move")
    history: list[int] = []
    incarnations = set()
    for step, replica in enumerate([pair[0], pair[1], pair[0], pair[1], pair[1], pair[0]]):
        tokens = [(step * 7 + i) % 60 for i in range(1 + step % 3)]
        history += tokens
        answer = predict(replica, sid, tokens)
        check(model, history, answer, f"step {step}")
        incarnations.add(answer.incarnation)
    assert len(incarnations) == 1


def test_a_stale_copy_never_answers_a_guarded_request(pair: Replicas) -> None:
    """A's copy is at 3, the session moved on to 5 on B: A reloads before judging the guard."""
    sid = unique_id("stale")
    first = predict(pair[0], sid, [1, 2, 3])
    predict(pair[1], sid, [4, 5])
    refused = predict(pair[0], sid, [6], expected_position=3)
    assert refused.error.code == FAILED_PRECONDITION and refused.position == 5, refused
    accepted = predict(pair[0], sid, [6], expected_position=5, expected_incarnation=first.incarnation)
    assert not accepted.HasField("error") and accepted.position == 6


def test_two_replicas_writing_one_session_at_once_lose_nothing(pair: Replicas, checkpoint: Checkpoint) -> None:
    """Each replica gets a client feeding one token per request into the same session, at once.
    Compare-and-set decides the order: every position is taken exactly once, and each answer is
    the reference after the tokens in that order — no write lost, none computed on a stale state."""
    model, sid, per_writer = checkpoint.build_model(), unique_id("race"), 25
    answers: dict[int, list[tuple[int, pb.PredictResponse]]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def writer(index: int, token: int) -> None:
        try:
            replica = pair[index]
            with grpc.insecure_channel(replica.address) as channel:
                stub = replica.stub(channel)
                for _ in range(per_writer):
                    request = pb.PredictRequest(session_id=sid, tokens=[token])
                    (answer,) = list(stub.Predict(iter([request]), timeout=30, metadata=(("x-session-id", sid),)))
                    answers[index].append((token, answer))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i, 10 + i)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    by_position = {}
    for token, answer in answers[0] + answers[1]:
        assert not answer.HasField("error"), answer.error
        assert answer.position not in by_position, f"position {answer.position} was answered twice"
        by_position[answer.position] = (token, answer)
    assert sorted(by_position) == list(range(1, 2 * per_writer + 1))
    history = [by_position[p][0] for p in sorted(by_position)]
    reference = reference_probabilities(model, history)
    for position, (_, answer) in by_position.items():
        assert_top_matches(answer.next, reference[position], f"position {position}")


def test_session_bookkeeping_holds_across_two_replicas(pair: Replicas, checkpoint: Checkpoint) -> None:
    """The property test's state machine, with a rule that moves its requests to the other replica."""
    run_state_machine_as_test(
        machine(list(pair), checkpoint.build_model(), checkpoint.vocab),
        settings=settings(
            max_examples=10,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_a_session_is_listed_by_every_replica(pair: Replicas) -> None:
    sid = unique_id("listed")
    predict(pair[0], sid, [1, 2])
    with grpc.insecure_channel(pair[1].address) as channel:
        page = pair[1].stub(channel).ListSessions(pb.ListSessionsRequest(prefix=sid), timeout=10)
    assert [(s.session_id, s.position) for s in page.sessions] == [(sid, 2)]


def test_ended_on_one_replica_is_gone_on_the_other(pair: Replicas) -> None:
    sid = unique_id("ended")
    predict(pair[0], sid, [1, 2])
    predict(pair[1], sid, [3])  # B holds a copy too
    with grpc.insecure_channel(pair[0].address) as channel:
        pair[0].stub(channel).EndSession(pb.EndSessionRequest(session_id=sid), metadata=(("x-session-id", sid),))
    with grpc.insecure_channel(pair[1].address) as channel, pytest.raises(grpc.RpcError) as refused:
        pair[1].stub(channel).GetSession(pb.GetSessionRequest(session_id=sid), metadata=(("x-session-id", sid),))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_predict_many_on_a_replica_that_holds_none_of_its_sessions_takes_them_over(
    pair: Replicas, checkpoint: Checkpoint
) -> None:
    """A message carrying many sessions has no routing key: whichever replica gets it loads what it lacks."""
    model = checkpoint.build_model()
    held, new = unique_id("many-held"), unique_id("many-new")
    predict(pair[0], held, [1, 2])
    message = pb.PredictManyRequest(
        requests=[
            pb.PredictRequest(session_id=held, tokens=[3], expected_position=2),
            pb.PredictRequest(session_id=new, tokens=[7]),
            pb.PredictRequest(session_id=held, tokens=[4]),
        ]
    )
    with grpc.insecure_channel(pair[1].address) as channel:
        (reply,) = list(pair[1].stub(channel).PredictMany(iter([message]), timeout=30))
    first, created, second = reply.responses
    check(model, [1, 2, 3], first, "held elsewhere, first request")
    check(model, [7], created, "a new session")
    check(model, [1, 2, 3, 4], second, "held elsewhere, second request")
    check(model, [1, 2, 3, 4, 5], predict(pair[0], held, [5]), "back on the first replica")


def test_a_routing_header_naming_another_session_is_refused(pair: Replicas) -> None:
    """A proxy routes on the header: a call whose body names another session could reach the wrong replica."""
    sid, other = unique_id("routed"), unique_id("other")
    request = pb.PredictRequest(session_id=sid, tokens=[1])
    with grpc.insecure_channel(pair[0].address) as channel:
        stub = pair[0].stub(channel)
        (answer,) = list(stub.Predict(iter([request]), timeout=30, metadata=(("x-session-id", other),)))
        assert answer.error.code == INVALID_ARGUMENT and "x-session-id" in answer.error.message, answer
        wrong = (("x-session-id", other),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=30, metadata=wrong)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=1), timeout=30, metadata=wrong))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    # nothing was applied, and the server goes on serving
    assert predict(pair[0], sid, [1]).position == 1


def test_a_stored_session_expires_after_the_idle_ttl(pair: Replicas, redis_server: RedisServer) -> None:
    sid = unique_id("expiring")
    predict(pair[0], sid, [1, 2])
    (key,) = redis_server.cli("--scan", "--pattern", f"seqpredict:{{{sid}}}:*").split()
    ttl_ms = int(redis_server.cli("pttl", key))
    assert 0 < ttl_ms <= 3600 * 1000, f"{key}: pttl {ttl_ms} (the idle TTL is 1 h)"


# -- the store unavailable -----------------------------------------------------------------------------------
def _readyz(replica: ServerProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{replica.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _metric(replica: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(replica.metrics_url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{}"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


def test_sync_fails_unavailable_while_redis_is_down_and_recovers_with_every_session(
    tmp_path: Path, checkpoint: Checkpoint
) -> None:
    model = checkpoint.build_model()
    redis = RedisServer(tmp_path / "redis")
    replicas = Replicas(tmp_path, redis.url, "sync")
    try:
        (replica,) = replicas.add(1)
        sid = unique_id("outage")
        check(model, [1, 2, 3], predict(replica, sid, [1, 2, 3]), "before")
        redis.stop()
        down = predict(replica, sid, [4])
        assert down.error.code == UNAVAILABLE and "session store" in down.error.message, down
        _wait(lambda: replica.health() == 2, "NOT_SERVING")  # 2: NOT_SERVING
        assert _readyz(replica)[0] == 503
        redis.start()  # the same data directory: the append-only file brings every session back
        _wait(lambda: replica.health() == 1, "SERVING again")
        check(model, [1, 2, 3, 5], predict(replica, sid, [5]), "after")  # the failed feed was not applied
        (other,) = replicas.add(1)  # a replica that never held it takes it over from the restarted Redis
        check(model, [1, 2, 3, 5, 6], predict(other, sid, [6]), "elsewhere")
        assert replica.log().count("session store unreachable") == 1, "one log line per outage"
    finally:
        replicas.stop_all()
        redis.stop()


def test_async_keeps_serving_held_sessions_while_redis_is_down_and_commits_them_after(
    tmp_path: Path, checkpoint: Checkpoint
) -> None:
    model = checkpoint.build_model()
    redis = RedisServer(tmp_path / "redis")
    replicas = Replicas(tmp_path, redis.url, "async", "--commit-interval-ms", "100")
    try:
        (replica,) = replicas.add(1)
        sid = unique_id("degraded")
        predict(replica, sid, [1, 2])
        redis.stop()
        check(model, [1, 2, 3], predict(replica, sid, [3]), "held, store down")
        check(model, [1, 2, 3, 4], predict(replica, sid, [4]), "held, store down")
        unknown = predict(replica, unique_id("not-held"), [1])
        assert unknown.error.code == UNAVAILABLE, unknown
        assert replica.health() == 1, "async serves on: SERVING"
        # the engine's store status reaches the frontend with its next status report
        _wait(lambda: "degraded" in _readyz(replica)[1], "readiness says degraded")
        status, body = _readyz(replica)
        assert status == 200 and "session store" in body, (status, body)
        _wait(lambda: _metric(replica, "seqpredict_state_store_up") == 0, "the store-down metric")
        redis.start()
        _wait(lambda: _metric(replica, "seqpredict_state_store_up") == 1, "the store back")
        time.sleep(1.0)  # several commit intervals
        (other,) = replicas.add(1)
        check(model, [1, 2, 3, 4, 5], predict(other, sid, [5], expected_position=4), "committed after the outage")
        assert replica.log().count("session store unreachable") == 1, "one log line per outage"
    finally:
        replicas.stop_all()
        redis.stop()


# -- async handover and loss -----------------------------------------------------------------------------------
def test_async_drain_hands_sessions_over_with_their_incarnation(tmp_path: Path, redis_server: RedisServer) -> None:
    """A drain commits every session as clean: the next replica keeps the incarnation, so a
    strict client's guard passes — nothing was lost."""
    replicas = Replicas(tmp_path, redis_server.url, "async", "--commit-interval-ms", "60000")
    try:
        first, second = replicas.add(2)
        sid = unique_id("handover")
        answer = predict(first, sid, [1, 2, 3])
        first.signal()
        assert first.wait(60) == 0, first.log()
        assert "handed over" in first.log()
        guarded = predict(second, sid, [4], expected_position=3, expected_incarnation=answer.incarnation)
        assert not guarded.HasField("error") and guarded.position == 4, guarded.error
    finally:
        replicas.stop_all()


def test_async_crash_losses_are_told_to_a_guarded_client(tmp_path: Path, redis_server: RedisServer) -> None:
    """Committed at 2, fed to 4, then SIGKILL before the next commit: a client expecting 4 is
    refused with the stored position and a new incarnation, never answered from position 2."""
    replicas = Replicas(tmp_path, redis_server.url, "async", "--commit-interval-ms", "300")
    try:
        first, second = replicas.add(2)
        sid = unique_id("lost")
        answer = predict(first, sid, [1, 2])
        time.sleep(1.5)  # committed
        assert predict(first, sid, [3, 4]).position == 4
        first.kill()
        told = predict(second, sid, [5], expected_position=4, expected_incarnation=answer.incarnation)
        assert told.error.code == FAILED_PRECONDITION, told
        assert told.position == 2 and told.incarnation != answer.incarnation
    finally:
        replicas.stop_all()


def test_async_eviction_commits_a_session_before_dropping_it(tmp_path: Path, redis_server: RedisServer) -> None:
    replicas = Replicas(tmp_path, redis_server.url, "async", "--commit-interval-ms", "60000")
    try:
        (small,) = replicas.add(1, "--max-sessions", "2")
        (other,) = replicas.add(1)
        first, *rest = [unique_id(f"evicted-{i}") for i in range(3)]
        predict(small, first, [1, 2, 3])
        for sid in rest:  # the third session evicts the first, before any periodic commit
            predict(small, sid, [4])
        continued = predict(other, first, [5], expected_position=3)
        assert not continued.HasField("error") and continued.position == 4, continued.error
    finally:
        replicas.stop_all()


# -- no store: export from one replica, import into another ----------------------------------------------------
def test_export_and_import_between_replicas_continue_bit_identically(tmp_path: Path) -> None:
    one = ServerProcess(tmp_path / "one.log")
    two = ServerProcess(tmp_path / "two.log")
    try:
        sid, rest = unique_id("carry"), [5, 9, 2, 44]
        predict(one, sid, [3, 1, 4, 1, 5, 9, 2, 6])
        with grpc.insecure_channel(one.address) as channel:
            blob = one.stub(channel).ExportSession(pb.ExportSessionRequest(session_id=sid)).blob
        with grpc.insecure_channel(two.address) as channel:
            two.stub(channel).ImportSession(pb.ImportSessionRequest(blob=blob))
        here, there = predict(one, sid, rest, all_steps=True), predict(two, sid, rest, all_steps=True)
        assert here.position == there.position == 12
        served = [[t.probability for t in s.top] for s in here.steps]
        assert served == [[t.probability for t in s.top] for s in there.steps], "bit-identical, not just close"
        assert torch.tensor(served).isfinite().all()
    finally:
        one.kill()
        two.kill()


def test_importing_a_session_over_itself_on_another_replica_with_force(pair: Replicas) -> None:
    """Found by the state machine: the forced import of a session's own blob, on a replica that only
    loaded it for the export, hung (its commit was refused and retried forever)."""
    sid = unique_id("self-import")
    predict(pair[0], sid, [80, 65, 71, 69])
    exported = pair[1].stub().ExportSession(pb.ExportSessionRequest(session_id=sid), timeout=30)
    request = pb.ImportSessionRequest(session_id=sid, blob=exported.blob, force=True)
    info = pair[1].stub().ImportSession(request, timeout=30, metadata=(("x-session-id", sid),))
    assert (info.position, info.incarnation) == (4, exported.session.incarnation)
    continued = predict(pair[0], sid, [1], expected_position=4, expected_incarnation=info.incarnation)
    assert not continued.HasField("error") and continued.position == 5, continued.error
