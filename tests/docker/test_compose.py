"""The compose stack on a real engine: `docker-compose.yml` as users run it, with Debian's docker-compose.

Brought up with `up -d --no-build` (the image was built from the repository just before), under a
project name of its own, with the host ports moved to free ones (GRPC_HOST_PORT & co.) and an
override file that only lowers two limits (so the dashboard's eviction and rejection panels have
something to show) and shortens the load generator's run. Grafana cannot be obtained on these
machines: its container is not started, and the dashboard is checked by running every panel's
query against the stack's real Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqpredict.client import Client
from tests.deployfiles import (
    COMPOSE,
    DASHBOARD,
    PROMETHEUS_DIR,
    compose_config,
    dashboard_queries,
    grafana_to_promql,
    load_yaml,
    variable_queries,
    without_comparison,
)
from tests.docker.compose import Stack
from tests.docker.engine import Engine, progress
from tests.serverproc import free_port
from tests.test_deploy import exercise, has_data, steady_traffic

MAX_SESSIONS, MAX_TOKENS = 48, 64  # above the load generator's 32 sessions; exercise() goes past it
GRAFANA_NOTE = (
    "Grafana container not started: grafana/grafana cannot be obtained on this machine; "
    "every query of its dashboard runs against the stack's Prometheus instead"
)


def override(tmp: Path) -> Path:
    """Lower two limits and shorten the load generator's run; everything else is the file's own."""
    loadgen = list(compose_config()["services"]["loadgen"]["command"])
    loadgen[loadgen.index("--duration") + 1] = "10"
    path = tmp / "docker-compose.test.yml"
    changes = {
        "services": {
            "server": {
                "environment": {
                    "SEQPREDICT_MAX_SESSIONS": str(MAX_SESSIONS),
                    "SEQPREDICT_MAX_TOKENS_PER_REQUEST": str(MAX_TOKENS),
                }
            },
            "loadgen": {"command": [*loadgen, "--warmup", "0", "--json"]},
        }
    }
    path.write_text(json.dumps(changes))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def stack(engine: Engine, image, prometheus_image, tmp_path_factory, summary) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("GRPC_HOST_PORT", "METRICS_HOST_PORT", "PROMETHEUS_HOST_PORT")}
    ports["GRAFANA_HOST_PORT"] = free_port()
    stack = Stack(
        engine,
        f"seqpredict-test-{uuid.uuid4().hex[:8]}",
        [COMPOSE, override(tmp_path_factory.mktemp("compose"))],
        ports,
    )
    started = time.monotonic()
    try:
        stack.up()
        summary.add(f"compose: server healthy and scraped {time.monotonic() - started:.1f}s after up")
        summary.add(GRAFANA_NOTE)
        yield stack
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            stack.compose("down", "--volumes", "--remove-orphans")


def feed(address: str, session: str, text: str) -> int:
    with Client(address, timeout=30) as client:
        return client.session(session).feed(text).position


def position(address: str, session: str) -> int:
    with Client(address, timeout=30) as client:
        return client.session(session).info().position


def test_prometheus_scrapes_the_server_and_loads_every_alert_rule(stack: Stack) -> None:
    targets = stack.api("targets")["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("seqpredict", "up")], targets
    rules = load_yaml((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    loaded = {r["name"]: r for g in stack.api("rules")["groups"] for r in g["rules"]}
    assert set(loaded) == alerts, "Prometheus did not load every rule of alerts.yml"
    deadline = time.monotonic() + 30  # rules are evaluated every 5 s: each must have run once, cleanly
    while any(r["health"] != "ok" for r in loaded.values()) and time.monotonic() < deadline:
        time.sleep(1)
        loaded = {r["name"]: r for g in stack.api("rules")["groups"] for r in g["rules"]}
    assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}


def test_loadgen_profile_runs_and_reports_no_errors(stack: Stack) -> None:
    done = stack.compose("--profile", "loadgen", "run", "--rm", "loadgen", timeout=180)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    progress(f"loadgen: {report['tokens_total']} tokens, {report['tokens_per_s']:.0f}/s, errors {report['errors']}")
    assert report["error_count"] == 0 and not report["errors"], report
    assert report["tokens_total"] > 0


def test_every_dashboard_panel_and_alert_query_returns_data(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rules = load_yaml((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}
    # Grafana's $__rate_interval for this Prometheus's 5 s scrapes: four scrapes.
    interval = "20s"
    queries = {
        f"panel {title!r}, query {i}": grafana_to_promql(expr, dashboard, interval)
        for i, (title, expr) in enumerate(dashboard_queries(dashboard), 1)
    }
    queries.update(
        {f"variable ${n}": grafana_to_promql(e, dashboard, interval) for n, e in variable_queries(dashboard)}
    )
    queries.update({f"alert {name}, measured side": without_comparison(expr) for name, expr in alerts.items()})
    must_fire = {"SeqpredictCapacityEvictions", "SeqpredictSessionPoolNearCapacity"}
    queries.update({f"alert {name}, whole": alerts[name] for name in must_fire})

    exercise(stack.address, MAX_TOKENS, MAX_SESSIONS)
    stop = threading.Event()
    traffic = threading.Thread(target=steady_traffic, args=(stack.address, stop), daemon=True)
    traffic.start()
    try:
        missing = dict(queries)
        deadline = time.monotonic() + 90
        while missing and time.monotonic() < deadline:
            missing = {w: e for w, e in missing.items() if not has_data(stack.api("query", query=e)["result"])}
            if missing:
                time.sleep(2)
        assert not missing, "queries with no data:\n" + "\n".join(f"{w}: {e}" for w, e in missing.items())
        active = {a["labels"]["alertname"] for a in stack.api("alerts")["alerts"]}
        assert must_fire <= active and "SeqpredictDown" not in active, active
    finally:
        stop.set()
        traffic.join(30)
    progress(f"dashboard: {len(dashboard_queries(dashboard))} panel queries returned data; {GRAFANA_NOTE}")


def test_compose_restart_keeps_sessions(stack: Stack) -> None:
    session = f"restart-{uuid.uuid4().hex[:8]}"
    at = feed(stack.address, session, "ROMEO:")
    stack.compose("restart", "server", timeout=120)
    stack.server().wait_healthy()
    assert position(stack.address, session) == at
    assert "snapshot of" in stack.compose("logs", "server").stdout


def test_compose_down_and_up_keep_sessions(stack: Stack) -> None:
    session = f"down-up-{uuid.uuid4().hex[:8]}"
    at = feed(stack.address, session, "JULIET:")
    stack.compose("down", timeout=120)  # no --volumes: the named volume keeps the snapshot
    stack.up()
    assert position(stack.address, session) == at
