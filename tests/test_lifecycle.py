"""Drain, snapshots and restarts, with the server as a real process receiving real signals."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2

from seqpredict.server import snapshot
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import assert_top_matches, reference_probabilities
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


def feed(stub, session_id: str, text: str, **kw) -> pb.PredictResponse:
    (response,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, text=text, **kw)]), timeout=30))
    return response


def snapshot_positions(path: Path, fingerprint: str, checkpoint) -> dict[str, int]:
    cfg = checkpoint.config
    snap = snapshot.read(path, fingerprint, [(cfg.num_layers, cfg.hidden_size)] * len(cfg.state_names))
    return dict(zip(snap.session_ids, snap.positions.tolist(), strict=True))


class OpenStream:
    """A Predict stream the test writes to one request at a time."""

    def __init__(self, stub) -> None:
        self._requests: queue.Queue = queue.Queue()
        self.call = stub.Predict(iter(self._requests.get, None), timeout=60)

    def ask(self, request: pb.PredictRequest) -> pb.PredictResponse:
        self._requests.put(request)
        return next(self.call)

    def close(self) -> None:
        self._requests.put(None)


def test_sigterm_drains_then_restart_continues_exactly(tmp_path, checkpoint):
    path = tmp_path / "sessions.snapshot"
    log = tmp_path / "server.log"
    first = ServerProcess(log, "--snapshot-path", str(path), "--grace-s", "20")
    stub = first.stub()
    session, writer = f"life-{uuid.uuid4().hex[:8]}", f"gen-{uuid.uuid4().hex[:8]}"
    part1, part2 = "ROMEO:\nBut soft, what light through yonder ", "window breaks?\n"
    first_answer = feed(stub, session, part1)
    assert first_answer.position == len(part1)
    stream = OpenStream(first.stub())
    assert stream.ask(pb.PredictRequest(session_id=f"open-{session}", text="abc")).position == 3
    # A long generation is in flight when the signal arrives: it must be allowed to finish.
    generation = first.stub().Generate(pb.GenerateRequest(session_id=writer, max_tokens=3000, seed=1), timeout=60)
    next(generation)
    first.signal(signal.SIGTERM)

    deadline = time.monotonic() + 10
    while first.health() != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health never went NOT_SERVING"
        time.sleep(0.02)
    with pytest.raises(grpc.RpcError) as refused:
        feed(first.stub(), session, "x")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as drained:  # the open stream is answered, then ended
        stream.ask(pb.PredictRequest(session_id=f"open-{session}", text="d"))
    assert drained.value.code() == grpc.StatusCode.UNAVAILABLE
    generated = 1 + sum(1 for _ in generation)
    assert generated == 3000, "the in-flight generation finished within the grace period"
    assert first.wait(60) == 0
    assert "snapshot of 3 session(s) written" in first.log()

    second = ServerProcess(log, "--snapshot-path", str(path))
    try:
        assert "restored 3 session(s)" in second.log()
        stub = second.stub()
        # A clean drain loses nothing: the session continues as the same incarnation.
        continued = feed(
            stub, session, part2, expected_position=len(part1), expected_incarnation=first_answer.incarnation
        )
        assert not continued.error.code, continued.error
        assert not continued.created and continued.position == len(part1 + part2)
        ref = reference_probabilities(checkpoint.build_model(), checkpoint.vocab.encode(part1 + part2))
        assert_top_matches(continued.next, ref[len(part1 + part2)], "after restart")
        assert stub.GetSession(pb.GetSessionRequest(session_id=writer)).position == 3000
    finally:
        second.signal(signal.SIGINT)
        assert second.wait(60) == 0


def test_sigkill_between_snapshots_is_reported_never_served_wrong(tmp_path, checkpoint):
    path = tmp_path / "sessions.snapshot"
    log = tmp_path / "server.log"
    session = f"crash-{uuid.uuid4().hex[:8]}"
    saved, lost = "To be, or not", " to be, that is the question"
    for _attempt in range(3):
        server = ServerProcess(log, "--snapshot-path", str(path), "--snapshot-interval-s", "2")
        fingerprint = server.stub().GetModelInfo(pb.GetModelInfoRequest()).fingerprint
        incarnation = feed(server.stub(), session, saved, reset=True).incarnation
        deadline = time.monotonic() + 20
        while not (path.exists() and snapshot_positions(path, fingerprint, checkpoint).get(session) == len(saved)):
            assert time.monotonic() < deadline, "no periodic snapshot"
            time.sleep(0.05)
        written = path.stat().st_mtime_ns
        while path.stat().st_mtime_ns == written:  # just after a periodic write: the next is ~2 s away
            time.sleep(0.01)
        feed(server.stub(), session, lost)
        server.kill()  # every process of the server at once: a crash
        if snapshot_positions(path, fingerprint, checkpoint)[session] == len(saved):
            break
    else:
        pytest.fail("could not kill the server between two periodic snapshots")

    restarted = ServerProcess(log, "--snapshot-path", str(path))
    try:
        stub = restarted.stub()
        moved_back = feed(stub, session, "?", expected_position=len(saved + lost))
        assert moved_back.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert moved_back.position == len(saved), "the client learns its position moved back"
        # Restored from a periodic snapshot, which may be older than what clients saw: a new incarnation,
        # so even a client at the snapshot's position learns its history may not be the server's.
        fenced = feed(stub, session, "?", expected_position=len(saved), expected_incarnation=incarnation)
        assert fenced.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert fenced.incarnation not in (0, incarnation)
        resumed = feed(stub, session, lost, expected_position=len(saved))
        ref = reference_probabilities(checkpoint.build_model(), checkpoint.vocab.encode(saved + lost))
        assert_top_matches(resumed.next, ref[len(saved + lost)], "resumed from the snapshot")
    finally:
        restarted.kill()


def _write_snapshot(path: Path, checkpoint, fingerprint: str) -> None:
    cfg = checkpoint.config
    state = [torch.zeros(cfg.num_layers, 1, cfg.hidden_size) for _ in cfg.state_names]
    snap = snapshot.Snapshot(
        fingerprint=fingerprint,
        session_ids=["kept"],
        positions=torch.tensor([3]),
        created_at=torch.tensor([time.time()], dtype=torch.float64),
        last_used_at=torch.tensor([time.time()], dtype=torch.float64),
        states=state,
    )
    snapshot.write(snap, path)


def test_a_snapshot_of_another_model_is_kept_aside_and_the_server_starts_clean(tmp_path, checkpoint):
    path = tmp_path / "sessions.snapshot"
    _write_snapshot(path, checkpoint, "0" * 64)
    original = path.read_bytes()
    server = ServerProcess(tmp_path / "server.log", "--snapshot-path", str(path))
    try:
        assert "not restoring" in server.log() and "starting with no sessions" in server.log()
        (aside,) = tmp_path.glob("sessions.snapshot.rejected-*")
        assert aside.read_bytes() == original, "the other model's sessions are moved aside, never destroyed"
        assert not path.exists()
        with pytest.raises(grpc.RpcError) as err:
            server.stub().GetSession(pb.GetSessionRequest(session_id="kept"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
    assert path.exists() and aside.read_bytes() == original


@pytest.mark.parametrize("content", ["garbage", "truncated-snapshot", "copy-of-the-checkpoint", "text"])
def test_a_file_at_the_snapshot_path_that_is_no_snapshot_stops_the_server_untouched(tmp_path, checkpoint, content):
    """Whatever it is, it is not ours to overwrite at the next drain: exit 2 naming it, the file unchanged."""
    path = tmp_path / "sessions.snapshot"
    if content == "garbage":
        path.write_bytes(os.urandom(4096))
    elif content == "truncated-snapshot":
        _write_snapshot(path, checkpoint, checkpoint.fingerprint)
        path.write_bytes(path.read_bytes()[:-100])
    elif content == "copy-of-the-checkpoint":
        path.write_bytes(Path(checkpoint.path).read_bytes())
    else:
        path.write_text("precious notes\n")
    original = path.read_bytes()
    server = ServerProcess(tmp_path / "server.log", "--snapshot-path", str(path), wait=False)
    assert server.wait(60) == 2
    assert "snapshot_path" in server.log() and "move it away or choose another path" in server.log()
    assert "Traceback" not in server.log()
    assert path.read_bytes() == original


def test_the_checkpoint_as_snapshot_path_is_refused_at_start_up(tmp_path, checkpoint):
    model = tmp_path / "model.pt"
    model.write_bytes(Path(checkpoint.path).read_bytes())
    original = model.read_bytes()
    server = ServerProcess(
        tmp_path / "server.log", "--checkpoint", str(model), "--snapshot-path", str(model), wait=False
    )
    assert server.wait(60) == 2
    assert "is the checkpoint" in server.log()
    assert model.read_bytes() == original


def test_a_checkpoint_that_would_run_code_is_refused_at_start_up(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "seqpredict-checkpoint", "version": 1, "payload": Exploit()}, hostile)
    server = ServerProcess(tmp_path / "server.log", "--checkpoint", str(hostile), wait=False)
    assert server.wait(60) == 2
    assert "refused" in server.log() and "weights-only" in server.log()
    assert not marker.exists(), "unpickling must never run code"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"SEQPREDICT_MAX_SESSIONS": "lots"}, (), "SEQPREDICT_MAX_SESSIONS='lots' is not a valid integer"),
        ({}, ("--checkpoint", "/nonexistent/model.pt"), "checkpoint /nonexistent/model.pt does not exist"),
        ({"SEQPREDICT_SESSION_POLICY": "drop"}, (), "session_policy must be 'evict' or 'reject'"),
        ({"SEQPREDICT_TLS_CERT": "/etc/hostname"}, (), "tls_cert and tls_key must be given together"),
        ({}, ("--max-batch-size", "0"), "max_batch_size must be at least 1"),
        # NaN passes every comparison: each float setting refuses it (and infinities) by name.
        ({"SEQPREDICT_IDLE_TTL_S": "nan"}, (), "idle_ttl_s must be a finite number, got nan"),
        ({"SEQPREDICT_MAX_DELAY_MS": "inf"}, (), "max_delay_ms must be a finite number, got inf"),
        ({}, ("--grace-s=-inf",), "grace_s must be a finite number, got -inf"),
        ({}, ("--snapshot-interval-s", "NaN"), "snapshot_interval_s must be a finite number, got nan"),
        ({}, ("--engine-stall-s", "0"), "engine_stall_s must be > 0"),
        ({}, ("--max-connections", str(2**31)), f"max_connections {2**31} needs"),
        ({}, ("--stream-window", "0"), "stream_window must be at least 1"),
    ],
)
def test_a_bad_setting_stops_the_server_with_a_message_naming_it(tmp_path, env, args, message):
    server = ServerProcess(tmp_path / "server.log", *args, env=env, wait=False)
    assert server.wait(60) == 2
    assert message in server.log()
    assert "Traceback" not in server.log()


def test_stream_limit_frees_up_when_calls_end(tmp_path):
    """A refused call is not a leak: once calls end, new ones are admitted again. (One frontend:
    the limit is per frontend process, and connections spread over frontends by a hash.)"""
    server = ServerProcess(tmp_path / "server.log", "--max-streams", "2", "--frontends", "1")
    try:
        streams = [OpenStream(server.stub()) for _ in range(2)]
        for i, s in enumerate(streams):
            s.ask(pb.PredictRequest(session_id=f"limit-{i}", text="a"))
        with pytest.raises(grpc.RpcError) as err:
            feed(server.stub(), "limit-x", "a")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in streams:
            s.close()
            list(s.call)
        threading.Event().wait(0.2)
        assert feed(server.stub(), "limit-x", "a").position == 1
    finally:
        server.kill()
