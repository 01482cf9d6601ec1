"""The `cluster` deployment files agree with each other, checked without Docker or Kubernetes.

The replicas, nginx's upstream, nginx's /etc/hosts and Prometheus's targets name the same
replicas in four places (docker-compose.yml, deploy/nginx/nginx.conf,
deploy/prometheus/prometheus-cluster.yml; the Kubernetes example has its own copy of the nginx
file): a replica added in one and not the others would be a replica never routed to, or never
scraped. tests/docker/test_cluster.py runs the stack for real.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from tests.cluster.nginx_conf import NGINX_CONF
from tests.deployfiles import (
    PROMETHEUS_DIR,
    compose_config,
    compose_healthcheck_command,
    duration_s,
    load_yaml,
    require_tool,
)

REPLICAS = ["replica-1", "replica-2", "replica-3"]


def cluster_services(config: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in config["services"].items() if "cluster" in s.get("profiles", [])}


def nginx_servers(text: str) -> list[tuple[str, int]]:
    """(host, port) of every `server` line of the upstream block."""
    upstream = re.search(r"upstream seqpredict \{(.*?)\n    \}", text, re.S)
    assert upstream, "no `upstream seqpredict { … }` block"
    return [(h, int(p)) for h, p in re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b[^;]*;", upstream.group(1), re.M)]


def test_the_cluster_profile_leaves_the_default_stack_as_it_was() -> None:
    config = compose_config()
    default = {name for name, s in config["services"].items() if not s.get("profiles")}
    assert default == {"server", "prometheus", "grafana"}
    assert set(cluster_services(config)) == {*REPLICAS, "nginx", "redis", "prometheus-cluster"}
    for name in default:
        assert "networks" not in config["services"][name] or "cluster" not in config["services"][name]["networks"]


def test_replicas_are_the_server_image_with_the_store_and_a_drain_docker_waits_for() -> None:
    config = compose_config()
    server, services = config["services"]["server"], cluster_services(config)
    for name in REPLICAS:
        replica = services[name]
        assert (replica["image"], replica["build"]) == (server["image"], server["build"])
        env = replica["environment"]
        assert env["SEQPREDICT_STATE_STORE"] == "redis://redis:6379/0" and env["SEQPREDICT_DURABILITY"] == "sync"
        assert env["SEQPREDICT_SNAPSHOT_PATH"] == "", "the server refuses a snapshot beside a state store"
        assert duration_s(replica["stop_grace_period"]) > float(env["SEQPREDICT_GRACE_S"]) + 5
        assert compose_healthcheck_command(replica["healthcheck"]["test"]) == compose_healthcheck_command(
            server["healthcheck"]["test"]
        )
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes" and "/data" in redis["volumes"][0]


def test_nginx_routes_to_exactly_the_replicas_at_their_fixed_addresses() -> None:
    config = compose_config()
    services = cluster_services(config)
    nginx = services["nginx"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"] == str(NGINX_CONF)
    ports = {name: int(services[name]["environment"]["SEQPREDICT_PORT"]) for name in REPLICAS}
    assert nginx_servers(NGINX_CONF.read_text()) == [(name, ports[name]) for name in REPLICAS]
    hosts = dict(entry.split(":", 1) for entry in nginx["extra_hosts"])
    addresses = {name: services[name]["networks"]["cluster"]["ipv4_address"] for name in REPLICAS}
    assert hosts == addresses, "nginx's /etc/hosts must name each replica's fixed address"
    (subnet,) = [c["subnet"] for c in config["networks"]["cluster"]["ipam"]["config"]]
    prefix = subnet.rsplit(".", 1)[0] + "."
    assert subnet.endswith(".0/24") and all(a.startswith(prefix) for a in addresses.values())
    listen = re.search(r"^\s*listen\s+(\d+)\s+http2;", NGINX_CONF.read_text(), re.M)
    assert listen and nginx["ports"][0].split(":")[-1].split("/")[0] == listen.group(1)


def test_prometheus_scrapes_every_replica_as_the_dashboards_job() -> None:
    config = compose_config()
    services = cluster_services(config)
    prometheus = services["prometheus-cluster"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounts[config_file.rsplit("/", 1)[0]] == str(PROMETHEUS_DIR)
    scrape = load_yaml((PROMETHEUS_DIR / config_file.rsplit("/", 1)[1]).read_text())["scrape_configs"]
    assert [job["job_name"] for job in scrape] == ["seqpredict"]  # the dashboard's and alerts' job
    targets = [t for sc in scrape[0]["static_configs"] for t in sc["targets"]]
    ports = {name: services[name]["environment"]["SEQPREDICT_METRICS_PORT"] for name in REPLICAS}
    assert targets == [f"{name}:{ports[name]}" for name in REPLICAS]
    promtool = require_tool("promtool", "prometheus")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus-cluster.yml"], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
