"""Replicas behind the shipped nginx config, sharing Redis, under a load of strict client sessions.

The faults an operator meets — a replica killed, the ring grown and shrunk, every replica
restarted in turn, Redis restarted — happen while 64 sessions keep feeding through nginx with the client library
(its routing header, its resends). In `sync` mode no acknowledged token may be lost and clients
see errors (UNAVAILABLE) only while Redis is down; in `async` mode a crash may lose the last commit interval, and every
session that lost tokens must be told so (PositionMismatch), never continue on other state.
At the end every session's state is checked against the model fed its acknowledged tokens.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seqpredict.client import Client, PositionMismatch, SeqpredictError, Unavailable
from seqpredict.models import Checkpoint
from tests.cluster.nginx_conf import Nginx
from tests.cluster.replicas import RedisServer, Replicas
from tests.reference import assert_top_matches, reference_probabilities
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow

SESSIONS = 64
WORKERS = 8  # threads, each feeding its share of the sessions in turn


@dataclass
class Tracked:
    """One session as its client saw it: the tokens the server acknowledged, and what went wrong."""

    session_id: str
    acknowledged: list[int] = field(default_factory=list)
    errors: list[tuple[float, SeqpredictError]] = field(default_factory=list)  # (when, what)
    losses: list[tuple[int, int]] = field(default_factory=list)  # (expected, actual) positions told


class Load:
    """WORKERS threads feeding SESSIONS strict sessions through one address until stopped."""

    def __init__(self, address: str, tag: str) -> None:
        self.client = Client(address, timeout=30)
        self.sessions = [Tracked(f"{tag}-{i}") for i in range(SESSIONS)]
        self.stopping = threading.Event()
        self.began = time.monotonic()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(WORKERS)]
        for thread in self.threads:
            thread.start()

    def _run(self, worker: int) -> None:
        mine = self.sessions[worker::WORKERS]
        handles = [self.client.session(t.session_id, strict=True, position=0) for t in mine]
        rng = random.Random(worker)
        while not self.stopping.is_set():
            for tracked, session in zip(mine, handles, strict=True):
                try:
                    if session.position is None:  # an earlier error left its outcome unknown: ask first
                        del tracked.acknowledged[session.refresh() :]
                    tokens = [rng.randrange(1, 82) for _ in range(rng.randint(1, 3))]
                    session.feed(tokens)
                    tracked.acknowledged += tokens
                except PositionMismatch as exc:  # state was lost: told, and the client resumes from it
                    tracked.losses.append((len(tracked.acknowledged), exc.actual_position or 0))
                    del tracked.acknowledged[exc.actual_position or 0 :]
                    session.position, session.incarnation = exc.actual_position, exc.actual_incarnation
                except SeqpredictError as exc:
                    tracked.errors.append((time.monotonic(), exc))
                    session.position = None
                    time.sleep(0.1)

    def run_for(self, seconds: float) -> None:
        print(f"  {time.monotonic() - self.began:6.1f} s: {self.fed()} tokens acknowledged")
        before = self.fed()
        time.sleep(seconds)
        assert self.fed() > before, "the load stalled"

    def fed(self) -> int:
        return sum(len(t.acknowledged) for t in self.sessions)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a load thread hung"

    def check_every_session(self, checkpoint: Checkpoint) -> None:
        """Each session's state, read through the proxy, is the model fed exactly its acknowledged tokens."""
        model = checkpoint.build_model()
        for tracked in self.sessions:
            now = self.client.session(tracked.session_id).feed(())
            assert now.position == len(tracked.acknowledged), (tracked.session_id, now.position)
            reference = reference_probabilities(model, tracked.acknowledged)[-1]
            assert_top_matches(now.next, reference, tracked.session_id)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def addresses(replicas: list[ServerProcess]) -> list[str]:
    return [r.address for r in replicas]


def drain(replica: ServerProcess) -> None:
    replica.signal()
    assert replica.wait(60) == 0, replica.log()[-2000:]


def test_sync_loses_no_acknowledged_token_through_kill_ring_changes_rolling_restart_and_redis_restart(
    tmp_path: Path, redis: RedisServer, checkpoint: Checkpoint
) -> None:
    replicas = Replicas(tmp_path, redis.url, "sync")
    replicas.add(3)
    nginx = Nginx(addresses(list(replicas)), tmp_path / "nginx")
    load = Load(nginx.address, "sync")
    try:
        load.run_for(1.5)
        dead = replicas[0]
        dead.kill()  # SIGKILL mid-load: its sessions move to the next replica on the ring
        load.run_for(2.0)

        replicas.add(1)  # the ring changes: the dead replica leaves it, a new one joins
        replicas.replicas.remove(dead)
        nginx.reload(addresses(list(replicas)))
        load.run_for(2.0)

        for n in range(3):  # a rolling restart: each drains (committing what it holds), then comes back
            drain(replicas[n])
            replicas.restart(replicas[n])
            load.run_for(1.0)

        nginx.reload(addresses(list(replicas)[:2]))  # a live replica leaves the ring, then drains
        drain(replicas[2])
        replicas.replicas.pop()
        load.run_for(1.5)

        outage_began = time.monotonic()  # Redis stopped under load: sync refuses to answer uncommitted
        redis.stop()
        time.sleep(1.5)
        redis.start()  # with its append-only file: every committed session is back
        outage_ended = time.monotonic()
        load.run_for(3.0)
    finally:
        load.stop()
    try:
        errors = [(t.session_id, when, e) for t in load.sessions for when, e in t.errors]
        unexpected = [e for e in errors if not (outage_began <= e[1] <= outage_ended + 3.0)]
        assert not unexpected, f"{len(unexpected)} client errors outside the Redis outage: {unexpected[:3]}"
        assert all(isinstance(e, Unavailable) for _, _, e in errors), errors[:3]
        assert errors, "the Redis outage was never seen: it proves nothing"
        losses = [(t.session_id, loss) for t in load.sessions for loss in t.losses]
        assert not losses, f"sync mode lost acknowledged tokens: {losses[:5]}"
        load.check_every_session(checkpoint)
        print(f"sync: {load.fed()} tokens acknowledged, none lost; {len(errors)} UNAVAILABLE while Redis was down")
    finally:
        nginx.stop()
        replicas.stop_all()


def test_async_tells_every_session_that_lost_tokens_in_a_crash(
    tmp_path: Path, redis: RedisServer, checkpoint: Checkpoint
) -> None:
    replicas = Replicas(tmp_path, redis.url, "async", "--commit-interval-ms", "500")
    replicas.add(2)
    nginx = Nginx(addresses(list(replicas)), tmp_path / "nginx")
    load = Load(nginx.address, "async")
    try:
        load.run_for(2.0)
        replicas[1].kill()
        load.run_for(2.0)
    finally:
        load.stop()
    try:
        told = sum(len(t.losses) for t in load.sessions)
        lost = sum(expected - actual for t in load.sessions for expected, actual in t.losses)
        assert told > 0, "a crash with a 500 ms commit interval under load lost nothing: the test proves nothing"
        load.check_every_session(checkpoint)  # the survivors' states are exactly what each client now holds
        print(f"async: the crash lost {lost} acknowledged tokens of {told} sessions, each told (PositionMismatch)")
    finally:
        nginx.stop()
        replicas.stop_all()
