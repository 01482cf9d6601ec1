"""The compose `cluster` profile on a real engine: three replicas, nginx, Redis and Prometheus.

docker-compose.yml's own cluster services, brought up as its header tells users to
(`--profile cluster up -d nginx prometheus-cluster`, here `--no-build`: the image was built from
the repository just before), under a project name of their own, with the host ports and the
cluster's subnet moved to free ones (CLUSTER_GRPC_HOST_PORT & co.) and nothing else changed.
The tests talk gRPC to nginx's published port with the client library, which sets the routing
header; they learn which replica served a call from nginx's access log (its `upstream=` field,
the replicas' fixed addresses), what a replica holds from its own /metrics (`docker exec`; the
replicas publish no port) and what Redis holds with redis-cli in its container. Then the faults
an operator meets: a replica SIGKILLed (`docker kill`) and one stopped (`compose stop`, a drain).

COMPOSE_PROFILES=cluster stands for `--profile cluster` on every command. The module takes about
45 s on this 2-core machine when it is otherwise idle (up 20 s — the replicas' first healthcheck
comes after its 10 s interval —, the tests 20 s, most of it the killed replica's way back to
healthy, down 5 s), up to 2 minutes when the cores are busy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from seqpredict.client import Client
from tests.deployfiles import COMPOSE, PROMETHEUS_DIR, load_yaml
from tests.docker.compose import Stack
from tests.docker.containers import SERVING, grpc_health, metric
from tests.docker.engine import Engine, progress
from tests.serverproc import free_port

REPLICAS = ("replica-1", "replica-2", "replica-3")
UP_TIMEOUT_S = 240.0  # three replicas loading torch at once on two cores, then nginx after them


def subnet_prefix() -> str:
    """The cluster's /24 (CLUSTER_SUBNET_PREFIX): the file's default unless the host uses it already.

    The engine's bridge for it lives in the host's network namespace, beside the host's own routes.
    """
    done = subprocess.run(["ip", "-o", "-4", "route", "show"], capture_output=True, text=True, check=False)
    taken = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in done.stdout.splitlines()
        if line and line.split()[0] != "default"
    ]
    for third in (13, *range(100, 200)):
        candidate = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return f"10.213.{third}"
    raise AssertionError(f"no free 10.213.x.0/24 for the cluster's network among the host's routes:\n{done.stdout}")


@dataclass
class Cluster(Stack):
    """The cluster profile of one compose project (`variables`: COMPOSE_PROFILES=cluster and its subnet)."""

    ids: dict[str, str] = field(default_factory=dict)  # service → container (kept through stop/start/kill)
    upstreams: dict[str, str] = field(default_factory=dict)  # a replica's fixed address → its service

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['CLUSTER_GRPC_HOST_PORT']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.ports['CLUSTER_PROMETHEUS_HOST_PORT']}"

    def up(self) -> None:
        self.compose("up", "--detach", "--no-build", "nginx", "prometheus-cluster", timeout=UP_TIMEOUT_S)
        # nginx's upstream addresses: each replica's fixed address on the cluster network, as compose resolves it.
        config = load_yaml(self.compose("config").stdout)["services"]
        self.upstreams = {config[name]["networks"]["cluster"]["ipv4_address"]: name for name in REPLICAS}
        for name in REPLICAS:
            self.wait_healthy(name)
        deadline = time.monotonic() + 30
        while grpc_health(self.address) != SERVING:
            assert time.monotonic() < deadline, f"nginx does not pass health on:\n{self.logs('nginx')}"
            time.sleep(0.2)
        self.wait_scraped()

    # -- the containers ------------------------------------------------------------------------------------
    def container(self, service: str) -> str:
        if service not in self.ids:
            container_id = self.compose("ps", "--quiet", service).stdout.strip()
            assert container_id, f"no {service} container"
            self.ids[service] = container_id
        return self.ids[service]

    def inspect(self, service: str, template: str) -> str:
        return self.engine.docker("inspect", "--format", template, self.container(service)).stdout.strip()

    def logs(self, service: str) -> str:
        done = self.engine.docker("logs", self.container(service), check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, service: str, timeout: float = 120.0) -> float:
        """Until Docker's HEALTHCHECK says healthy; returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.inspect(service, "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")
            if state.startswith(("exited", "dead")):
                raise AssertionError(f"{service} {state}:\n{self.logs(service)[-3000:]}")
            if state == "running healthy":
                return time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"{service} not healthy after {timeout}s ({state}):\n{self.logs(service)[-3000:]}")

    def exec(self, service: str, *argv: str) -> str:
        return self.engine.docker("exec", self.container(service), *argv, timeout=60).stdout

    def metrics(self, replica: str) -> str:
        """The replica's /metrics, read inside its container (the replicas publish no port)."""
        code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9095/metrics').read().decode())"
        return self.exec(replica, "python", "-c", code)

    # -- where sessions are ----------------------------------------------------------------------------------
    def calls(self, *sessions: str) -> dict[str, list[tuple[str, str]]]:
        """session → (replica, gRPC status) of each of its calls nginx logged, in order (the replica
        that answered last where nginx tried more than one)."""
        found: dict[str, list[tuple[str, str]]] = {session: [] for session in sessions}
        for line in self.logs("nginx").splitlines():
            fields = re.search(r" grpc-status=(\S*) session=(\S+) upstream=(.*?) upstream_status=", line)
            if fields is None or fields.group(2) not in found:
                continue
            last = fields.group(3).split(",")[-1].strip().rsplit(":", 1)[0]
            found[fields.group(2)].append((self.upstreams.get(last, last), fields.group(1)))
        return found

    def holders(self, sessions: list[str], calls: int) -> dict[str, str]:
        """session → the one replica nginx sent each of its first `calls` calls to (logged as a call ends)."""
        deadline = time.monotonic() + 10
        logged = self.calls(*sessions)
        while any(len(c) < calls for c in logged.values()):
            assert time.monotonic() < deadline, f"nginx logged fewer than {calls} calls of some session: {logged}"
            time.sleep(0.1)
            logged = self.calls(*sessions)
        served = {session: {replica for replica, _ in logged[session][:calls]} for session in sessions}
        assert all(len(replicas) == 1 for replicas in served.values()), f"a session's calls were spread: {logged}"
        return {session: replicas.pop() for session, replicas in served.items()}

    def stored(self, prefix: str) -> dict[str, tuple[str, int]]:
        """The sessions whose id starts with `prefix` as Redis holds them: id → (its key, committed position).

        Keys are `seqpredict:{<id>}:<model>` (server/seqpredict/server/store.py); one redis-cli round.
        """
        script = 'for key in $(redis-cli --scan --pattern "$1"); do echo "$key $(redis-cli HGET "$key" p)"; done'
        out = self.exec("redis", "sh", "-c", script, "sh", f"seqpredict:{{{prefix}*}}:*")
        found = {}
        for line in out.splitlines():
            key, position = line.split()
            session = key.split("{", 1)[1].rsplit("}", 1)[0]
            assert session not in found, f"two keys for {session}: {found[session][0]}, {key}"
            found[session] = (key, int(position))
        return found

    def wait_scraped(self, timeout: float = 90.0) -> None:
        """Until Prometheus has scraped every replica and found it up."""
        want = {f"{name}:9095" for name in REPLICAS}
        deadline = time.monotonic() + timeout
        up: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                result = self.api("query", query='up{job="seqpredict"} == 1')["result"]
                up = {r["metric"]["instance"] for r in result}
                if want <= up:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus sees {sorted(up)} up, not {sorted(want)}")


@pytest.fixture(scope="module")
def cluster(engine: Engine, image, prometheus_image, cluster_images, summary) -> Iterator[Cluster]:
    ports = {name: free_port() for name in ("CLUSTER_GRPC_HOST_PORT", "CLUSTER_PROMETHEUS_HOST_PORT")}
    prefix = subnet_prefix()
    stack = Cluster(
        engine,
        f"seqpredict-cluster-{uuid.uuid4().hex[:8]}",
        [COMPOSE],
        ports,
        {"COMPOSE_PROFILES": "cluster", "CLUSTER_SUBNET_PREFIX": prefix},
    )
    started = time.monotonic()
    try:
        stack.up()
        summary.add(
            f"cluster: 3 replicas healthy, nginx passing, Prometheus scraping all 3 "
            f"{time.monotonic() - started:.0f}s after up (subnet {prefix}.0/24)"
        )
        yield stack
    finally:
        started = time.monotonic()
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
        progress(f"cluster: down --volumes in {time.monotonic() - started:.0f}s")


def strict_session(client: Client, session: str):
    """A new session whose every feed is guarded by its position and incarnation (resent after UNAVAILABLE)."""
    return client.session(session, strict=True, position=0)


def created(cluster: Cluster) -> dict[str, float]:
    return {name: metric(cluster.metrics(name), "seqpredict_sessions_created_total") for name in REPLICAS}


def test_a_session_stays_on_one_replica_through_nginx_and_is_committed_to_redis(cluster: Cluster) -> None:
    session = "cluster-routing"
    before = created(cluster)
    with Client(cluster.address, timeout=30) as client:
        handle = strict_session(client, session)
        positions = [handle.feed(text).position for text in ("ROMEO:", " But soft", ", what light")]
    assert positions == [6, 15, 27]
    holder = cluster.holders([session], 3)[session]
    after = created(cluster)
    assert {name: after[name] - before[name] for name in REPLICAS} == {
        name: 1.0 if name == holder else 0.0 for name in REPLICAS
    }, "the session must have been created on exactly the replica nginx sent it to, and only there"
    key, position = cluster.stored(session)[session]
    assert position == 27
    ttl = int(cluster.exec("redis", "redis-cli", "TTL", key))
    assert ttl > 0, f"a stored session expires after the idle TTL (TTL {ttl})"
    progress(f"cluster: {session} on {holder} only, committed to Redis as {key} at position {position}")


def test_prometheus_scrapes_every_replica_and_loads_every_alert_rule(cluster: Cluster) -> None:
    targets = cluster.api("targets")["activeTargets"]
    seen = sorted((t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets)
    assert seen == [("seqpredict", f"{name}:9095", "up") for name in REPLICAS], targets
    rules = load_yaml((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    loaded = {r["name"]: r for g in cluster.api("rules")["groups"] for r in g["rules"]}
    assert set(loaded) == alerts, "Prometheus did not load every rule of alerts.yml"
    deadline = time.monotonic() + 30  # rules are evaluated every 5 s: each must have run once, cleanly
    while any(r["health"] != "ok" for r in loaded.values()) and time.monotonic() < deadline:
        time.sleep(1)
        loaded = {r["name"]: r for g in cluster.api("rules")["groups"] for r in g["rules"]}
    assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}


def labelled(text: str, name: str, labels: str) -> float:
    """The value of one labelled sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_a_sigkilled_replicas_session_continues_at_its_exact_position_on_another(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    session, more = "cluster-kill", " the question"
    caplog.set_level(logging.INFO, logger="seqpredict.client")  # the client says when it resends a feed
    with Client(cluster.address, timeout=30) as client:
        handle = strict_session(client, session)
        handle.feed("To be, or not to be")
        at = handle.feed(", that is").position
        holder = cluster.holders([session], 2)[session]
        victim = cluster.container(holder)
        cluster.engine.docker("kill", "--signal", "KILL", victim)
        cluster.engine.docker("wait", victim)
        assert cluster.inspect(holder, "{{.State.ExitCode}}") == "137", "SIGKILL: no drain, no last commit"

        started = time.monotonic()
        answer = handle.feed(more)  # through nginx to the next replica on the ring, resent after UNAVAILABLE
        failover_s = time.monotonic() - started
        assert answer.position == at + len(more), "the feed must be applied exactly once, on the stored state"
        after = cluster.calls(session)[session][2:]
        taker, status = after[-1]
        assert status == "0" and taker in REPLICAS and taker != holder, after
        assert cluster.stored(session)[session][1] == answer.position
        loaded = labelled(cluster.metrics(taker), "seqpredict_state_store_sessions_total", 'event="loaded"')
        assert loaded >= 1, f"{taker} answered without taking the session over from Redis"
        # nginx either finds the replica gone when it connects (and tries the next one itself) or
        # had sent the call on a kept-alive connection (UNAVAILABLE; the client resends): both count.
        resends = sum("sending the feed again" in r.getMessage() for r in caplog.records)
        progress(
            f"cluster: {holder} SIGKILLed; {session} answered by {taker} at position {answer.position} "
            f"{failover_s:.2f}s later ({resends} resend(s) by the client; nginx logged {after})"
        )

        cluster.compose("start", holder)
        healthy_s = cluster.wait_healthy(holder)
        # Back in nginx's ring (fail_timeout has long passed): the session returns to its replica,
        # which loads what the other one committed.
        assert handle.feed(".").position == answer.position + 1
        assert cluster.calls(session)[session][-1] == (holder, "0"), cluster.calls(session)
    progress(f"cluster: {holder} started again, healthy after {healthy_s:.0f}s; {session} is back on it")


def test_compose_stop_drains_a_replica_and_its_sessions_continue_elsewhere(cluster: Cluster) -> None:
    sessions = [f"cluster-drain-{i}" for i in range(12)]
    with Client(cluster.address, timeout=30) as client:
        handles = {session: strict_session(client, session) for session in sessions}
        for handle in handles.values():
            handle.feed("ab")
            handle.feed("cd")
        holders = cluster.holders(sessions, 2)
        counts = {name: sum(1 for h in holders.values() if h == name) for name in REPLICAS}
        victim = max(REPLICAS, key=counts.__getitem__)
        assert counts[victim] >= 2, counts

        started = time.monotonic()
        cluster.compose("stop", victim, timeout=120)  # SIGTERM, stop_grace_period 45s
        stop_s = time.monotonic() - started
        logs = cluster.logs(victim)
        assert cluster.inspect(victim, "{{.State.ExitCode}}") == "0", f"a drain ends in exit 0:\n{logs[-3000:]}"
        assert "draining" in logs and "stopped" in logs, logs[-3000:]
        assert {s: p for s, (_, p) in cluster.stored("cluster-drain-").items()} == dict.fromkeys(sessions, 4)

        for session, handle in handles.items():
            assert handle.feed("e").position == 5, session
    logged = cluster.calls(*sessions)
    for session in sessions:
        replica, status = logged[session][-1]
        assert status == "0", logged[session]
        if holders[session] == victim:
            assert replica in REPLICAS and replica != victim, logged[session]
        else:
            assert replica == holders[session], "consistent hashing moves only the stopped replica's sessions"
    assert {s: p for s, (_, p) in cluster.stored("cluster-drain-").items()} == dict.fromkeys(sessions, 5)
    progress(
        f"cluster: compose stop {victim}: exit 0 after {stop_s:.1f}s; its {counts[victim]} sessions went on "
        f"on the others at their positions, the rest stayed (sessions per replica before: {counts})"
    )
