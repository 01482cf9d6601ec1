"""The shipped nginx settings (deploy/nginx/nginx.conf) in front of real replicas on loopback.

No state store here: these tests are about routing — a session's calls reach one replica, the
sessions spread over the replicas, and a killed replica's sessions reach another one at once.
Taking the state over is the store's part, tested with Redis.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.cluster.nginx_conf import NGINX_CONF, nginx_binary, render_nginx_conf, running_nginx
from tests.cluster.replicas import REPLICA_SHAPE
from tests.serverproc import ServerProcess

FAILOVER_BOUND_S = 2.0  # issue 13's goal for the first answer of an affected session


def test_the_shipped_config_runs_with_loopback_replicas(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), ["127.0.0.1:1", "127.0.0.1:2"], 8080, tmp_path))
    done = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = conf.read_text()
    servers = [
        line.strip() for line in text.splitlines() if line.strip().startswith("server ") and line.strip().endswith(";")
    ]
    assert servers == [
        "server 127.0.0.1:1 max_fails=1 fail_timeout=2s;",
        "server 127.0.0.1:2 max_fails=1 fail_timeout=2s;",
    ]
    assert "hash $http_x_session_id consistent;" in text


def feed(stub: pb_grpc.SequencePredictorStub, session: str, timeout: float = 10) -> pb.PredictResponse:
    request = pb.PredictRequest(session_id=session, text="a")
    (answer,) = stub.Predict(iter([request]), metadata=(("x-session-id", session),), timeout=timeout)
    assert answer.error.code == 0, answer.error
    return answer


def holder(replicas: list[ServerProcess], session: str) -> list[int]:
    """Indexes of the replicas holding the session, asked directly (not through nginx)."""
    found = []
    for i, replica in enumerate(replicas):
        if replica.proc.poll() is not None:
            continue
        try:
            replica.stub().GetSession(pb.GetSessionRequest(session_id=session), timeout=5)
            found.append(i)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
    return found


@pytest.mark.slow
def test_sessions_stick_to_one_replica_and_move_at_once_when_it_is_killed(tmp_path: Path) -> None:
    replicas = [ServerProcess(tmp_path / f"replica-{n}.log", *REPLICA_SHAPE, wait=False) for n in (1, 2, 3)]
    try:
        for replica in replicas:
            replica.wait_serving()
        with running_nginx([r.address for r in replicas], tmp_path / "nginx") as port:
            stub = pb_grpc.SequencePredictorStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            sessions = [f"user-{i}" for i in range(30)]
            for _ in range(3):
                for session in sessions:
                    feed(stub, session)
            owners = {}
            for session in sessions:
                held = holder(replicas, session)
                assert len(held) == 1, f"{session} is on replicas {held}: its calls were not kept together"
                owners[session] = held[0]
                assert feed(stub, session).position == 4  # every call of it reached that one replica
            assert len(set(owners.values())) == 3, f"30 sessions all hashed onto {set(owners.values())}"

            victim = owners[sessions[0]]
            affected = [s for s in sessions if owners[s] == victim]
            replicas[victim].kill()
            started = time.monotonic()
            # A call nginx had already sent on a kept-alive connection to the dead replica fails
            # with UNAVAILABLE (nginx does not resend what a replica may have applied); the
            # client's retry reaches the next replica on the ring.
            attempts = 0
            while True:
                attempts += 1
                try:
                    feed(stub, affected[0])
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and attempts < 3, exc
            first_answer_s = time.monotonic() - started
            assert first_answer_s < FAILOVER_BOUND_S
            # The replica is out of the ring now: the next affected session gets through at once.
            for session in affected[1:]:
                feed(stub, session)
                (moved_to,) = holder(replicas, session)
                assert moved_to != victim
            # And the others stay where they were.
            for session in sessions:
                if owners[session] != victim:
                    assert feed(stub, session).position == 5
    finally:
        for replica in replicas:
            replica.kill()
