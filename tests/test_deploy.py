"""The Docker image and the compose stack, checked without a Docker engine.

Real parts only, on loopback: Debian's docker-compose validates and resolves the compose file;
the server is started exactly as the container starts it (the Dockerfile's ENV and ENTRYPOINT,
the compose service's environment; only listen addresses, ports and /data differ outside a
container); a real Prometheus runs the project's own prometheus.yml and alerts.yml against
it under load, and every query of the dashboard and of the alert rules must return data;
promtool checks and unit-tests the rules; the build stage is replayed from the build context
that .dockerignore leaves, down to the wheel the image installs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.server.config import default_checkpoint
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.deployfiles import (
    DASHBOARD,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    ROOT,
    build_context,
    compose_config,
    compose_healthcheck_command,
    dashboard_panels,
    dashboard_queries,
    dockerfile_stages,
    duration_s,
    exec_form,
    grafana_to_promql,
    healthcheck_command,
    load_yaml,
    replay_copies,
    require_tool,
    variable_queries,
    without_comparison,
)
from tests.serverproc import free_port

SHIPPED = "seqpredict/models/shipped/shakespeare-lstm.pt"  # inside site-packages: package data
VENV_BIN = Path(sys.executable).parent
# Rate windows on the test's 1 s scrapes: several samples, and recent enough to see the load.
RATE_INTERVAL = "15s"


# -- the container, outside a container ---------------------------------------------------------
class ContainerLikeServer:
    """The image's entrypoint with the container's environment, as Docker would run it.

    Outside a container only these differ: listen addresses (0.0.0.0 → 127.0.0.1), ports (free
    loopback ports), /data (a temporary folder), the image's path to the shipped checkpoint
    (this checkout's), and PATH (this venv instead of the image's).
    """

    def __init__(self, tmp: Path, *flags: str) -> None:
        runtime = dockerfile_stages()[-1]
        service = compose_config()["services"]["server"]
        env = {**runtime.env(), **{k: str(v) for k, v in service.get("environment", {}).items()}}
        entrypoint = service.get("entrypoint") or exec_form(runtime.one("ENTRYPOINT"))
        command = service.get("command", [] if "entrypoint" in service else exec_form(runtime.one("CMD")))
        self.port, self.metrics_port = free_port(), free_port()
        self.data = tmp / "data"
        self.data.mkdir(exist_ok=True)
        self.env = self._outside_container(env, tmp)
        self.argv = [*entrypoint, *command, *flags]
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _outside_container(self, env: dict[str, str], tmp: Path) -> dict[str, str]:
        for key in ("SEQPREDICT_HOST", "SEQPREDICT_METRICS_HOST"):
            assert env.get(key) == "0.0.0.0", (
                f"in a container {key} must be 0.0.0.0 to be reachable, got {env.get(key)}"
            )
        checkpoint = env.get("SEQPREDICT_CHECKPOINT", "")
        assert checkpoint.endswith("/site-packages/" + SHIPPED), f"SEQPREDICT_CHECKPOINT={checkpoint!r}"
        out = {"HOME": str(tmp), "LANG": "C.UTF-8"}  # a container's environment is nearly empty
        for key, value in env.items():
            inside = value == "/data" or value.startswith("/data/")
            out[key] = str(self.data / value.removeprefix("/data").lstrip("/")) if inside else value
        out.update(
            SEQPREDICT_HOST="127.0.0.1",
            SEQPREDICT_METRICS_HOST="127.0.0.1",
            SEQPREDICT_PORT=str(self.port),
            SEQPREDICT_METRICS_PORT=str(self.metrics_port),
            SEQPREDICT_CHECKPOINT=default_checkpoint(),
            PATH=f"{VENV_BIN}:{os.environ['PATH']}",
        )
        return out

    def start(self) -> ContainerLikeServer:
        executable = subprocess.run(
            ["/bin/sh", "-c", 'command -v "$1"', "sh", self.argv[0]], env=self.env, capture_output=True, text=True
        ).stdout.strip()
        assert executable.startswith(str(VENV_BIN)), f"{self.argv[0]} is not a console script of the package"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_serving()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, f"server exited:\n{self.log()}"
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.2)
        raise TimeoutError(f"not SERVING after {timeout}s:\n{self.log()}")

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """A command in the 'container': its environment, e.g. a healthcheck."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=False)

    def terminate(self, timeout: float) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def container_like_server(tmp: Path, *flags: str) -> Iterator[ContainerLikeServer]:
    server = ContainerLikeServer(tmp, *flags)
    try:
        yield server.start()
    finally:
        server.kill()


def predict(address: str, session: str, *requests: dict[str, Any]) -> list[pb.PredictResponse]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        return list(stub.Predict(iter([pb.PredictRequest(session_id=session, **r) for r in requests]), timeout=30))


# -- (a) docker-compose config --------------------------------------------------------------------
def test_compose_file_is_valid_and_consistent_with_the_image():
    config = compose_config()
    # The `cluster` profile's services are checked in tests/test_deploy_cluster.py.
    services = {name: s for name, s in config["services"].items() if "cluster" not in s.get("profiles", [])}
    assert set(services) == {"server", "prometheus", "grafana", "loadgen"}
    runtime = dockerfile_stages()[-1]
    exposed = {int(p.split("/")[0]) for p in runtime.one("EXPOSE").split()}

    server = services["server"]
    env = {**runtime.env(), **server["environment"]}
    grpc_port, metrics_port = int(env.get("SEQPREDICT_PORT", 50051)), int(env.get("SEQPREDICT_METRICS_PORT", 9095))
    assert {grpc_port, metrics_port} <= exposed
    published = {int(str(p).split(":")[-1].split("/")[0]) for p in server["ports"]}
    assert published == {grpc_port, metrics_port}
    assert server["restart"] == "unless-stopped"
    grace = float(env.get("SEQPREDICT_GRACE_S", 30))
    assert duration_s(server["stop_grace_period"]) > grace + 5, "Docker would SIGKILL the drain"
    volume, _, target = server["volumes"][0].partition(":")
    assert volume in config["volumes"] and target.split(":")[0] == "/data", "a named volume at /data"
    assert env["SEQPREDICT_SNAPSHOT_PATH"].startswith("/data/")
    assert "/data" in runtime.one("VOLUME").split()
    assert "health" in compose_healthcheck_command(server["healthcheck"]["test"])[-1]

    # Prometheus gets deploy/prometheus as its config folder and scrapes the server's metrics port.
    prometheus = services["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert Path(mounts[str(Path(config_file).parent)]) == PROMETHEUS_DIR
    scrape = load_yaml((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    targets = [t for job in scrape for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"server:{metrics_port}"]

    # Grafana gets the provisioning folder and the dashboards where the provider looks for them.
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: Path(v.split(":")[0]) for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    provider = load_yaml((GRAFANA_DIR / "provisioning" / "dashboards" / "seqpredict.yml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[str(Path(home).parent)] / Path(home).name == DASHBOARD
    datasources = load_yaml((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"

    # The load generator: the server's image, only with its profile, aimed at the server.
    loadgen = services["loadgen"]
    assert loadgen["profiles"] == ["loadgen"] and loadgen["image"] == server["image"]
    assert loadgen["command"][loadgen["command"].index("--target") + 1] == f"server:{grpc_port}"


# -- (b) the server as the container runs it --------------------------------------------------------
@pytest.mark.slow
def test_server_runs_as_in_the_container_and_keeps_sessions_across_a_restart(tmp_path):
    service = compose_config()["services"]["server"]
    _, docker_health = healthcheck_command(dockerfile_stages()[-1].one("HEALTHCHECK"))
    compose_health = compose_healthcheck_command(service["healthcheck"]["test"])
    stop_grace = duration_s(service["stop_grace_period"])
    session = "docker-restart"

    with container_like_server(tmp_path) as server:
        for argv in (docker_health, compose_health):
            probe = server.run(argv)
            assert probe.returncode == 0, f"healthcheck {argv} failed:\n{probe.stdout}{probe.stderr}"
        (answer,) = predict(server.address, session, {"text": "ROMEO:"})
        assert not answer.HasField("error") and answer.position == 6 and len(answer.next) == 5
        assert server.terminate(timeout=stop_grace) == 0, server.log()
        snapshot = Path(server.env["SEQPREDICT_SNAPSHOT_PATH"])
        assert snapshot.is_file() and snapshot.parent == server.data, "the snapshot goes to the /data volume"
        probe = server.run(docker_health)
        assert probe.returncode == 1, "the healthcheck must fail once the server is gone"

    # `docker compose restart`: the same container, so the same /data; the session is still there.
    with container_like_server(tmp_path) as again:
        with grpc.insecure_channel(again.address) as channel:
            info = pb_grpc.SequencePredictorStub(channel).GetSession(
                pb.GetSessionRequest(session_id=session), timeout=10
            )
        assert info.position == 6
        assert again.terminate(timeout=stop_grace) == 0, again.log()


# -- (c) a real Prometheus on the project's config, every query returns data ------------------------
class Prometheus:
    """Debian's prometheus on the shipped prometheus.yml, scraping the given target every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        exe = require_tool("prometheus", "prometheus")
        config = load_yaml((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "seqpredict"]
        job["static_configs"] = [{"targets": [target]}]
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = tmp / "prometheus.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> Any:
        data = urllib.parse.urlencode(params).encode() if params else None
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", data=data, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_scraping(self, timeout: float = 60.0) -> None:
        """Until the first scrape of the server is stored (Prometheus starts scraping a few seconds after it starts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()}"
            with contextlib.suppress(OSError):
                if self.query('up{job="seqpredict"} == 1'):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus never scraped the server:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile of nothing is NaN, which is no data)."""
    return any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result)


def exercise(address: str, max_tokens: int, max_sessions: int) -> None:
    """What the panels and alerts must see at least once: an in-band error, a gRPC error, a
    rejection by a limit, an ended session, evictions at the session limit."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        requests = [
            pb.PredictRequest(session_id="deploy-a", text="ROMEO:"),
            pb.PredictRequest(session_id="deploy-a", tokens=[10_000]),  # out of the vocabulary
            pb.PredictRequest(session_id="deploy-a", tokens=[1] * (max_tokens + 1)),  # over tokens_per_request
            pb.PredictRequest(session_id="deploy-a", text="O", end=True),
        ]
        answers = list(stub.Predict(iter(requests), timeout=30))
        assert [a.error.code for a in answers] == [0, 3, 3, 0]
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetSession(pb.GetSessionRequest(session_id="deploy-never-created"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        fill = [pb.PredictRequest(session_id=f"deploy-fill-{i}", text="A") for i in range(max_sessions + 4)]
        list(stub.Predict(iter(fill), timeout=30))


def steady_traffic(address: str, stop: threading.Event) -> None:
    """Predict and Generate a few times a second until `stop` (two minutes at most), so rates and
    quantiles over the last seconds have something to measure. While the load generator holds
    every slot busy, a new session is refused (RESOURCE_EXHAUSTED): that is traffic too."""
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                list(stub.Predict(iter([pb.PredictRequest(session_id="deploy-bg", text="To be")]), timeout=30))
                list(stub.Generate(pb.GenerateRequest(session_id="deploy-bg", max_tokens=5, seed=1), timeout=30))
            stop.wait(0.2)


@pytest.mark.slow
def test_prometheus_scrapes_the_server_and_every_dashboard_and_alert_query_returns_data(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    rules = load_yaml((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}
    queries = {
        f"panel {title!r}, query {i}": grafana_to_promql(expr, dashboard, RATE_INTERVAL)
        for i, (title, expr) in enumerate(dashboard_queries(dashboard), 1)
    }
    for name, expr in variable_queries(dashboard):
        queries[f"variable ${name}"] = grafana_to_promql(expr, dashboard, RATE_INTERVAL)
    # A quiet alert's expression returns nothing; the left side of its comparison is the
    # measurement itself, which must exist whenever the server is scraped under load.
    for name, expr in alerts.items():
        queries[f"alert {name}, measured side"] = without_comparison(expr)
    # This load fills the session pool past its limit: these two must return their alert
    # (and show up as pending or firing in Prometheus's alerts).
    must_fire = {"SeqpredictCapacityEvictions", "SeqpredictSessionPoolNearCapacity"}
    for name in must_fire:
        queries[f"alert {name}, whole"] = alerts[name]

    max_tokens, max_sessions = 64, 8
    workdir = replay_copies(dockerfile_stages()[-1], ROOT, tmp_path / "image")
    stop = threading.Event()
    flags = (f"--max-sessions={max_sessions}", f"--max-tokens-per-request={max_tokens}")
    with container_like_server(tmp_path, *flags) as server:
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}")
        loadgen = None
        try:
            prometheus.wait_scraping()  # counters are seen before they move: rates start at the first request
            exercise(server.address, max_tokens, max_sessions)
            loadgen = run_compose_loadgen(server, workdir)
            traffic = threading.Thread(target=steady_traffic, args=(server.address, stop), daemon=True)
            traffic.start()
            out, err = loadgen.communicate(timeout=60)
            assert loadgen.returncode == 0, f"loadgen failed:\n{err}"
            assert json.loads(out)["tokens_total"] > 0, out

            missing = dict(queries)
            deadline = time.monotonic() + 60
            while missing and time.monotonic() < deadline:
                missing = {what: e for what, e in missing.items() if not has_data(prometheus.query(e))}
                if missing:
                    time.sleep(1)
            assert not missing, "queries that returned no data:\n" + "\n".join(f"{w}: {e}" for w, e in missing.items())

            assert {r["value"][1] for r in prometheus.query('up{job="seqpredict"}')} == {"1"}
            loaded = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}
            assert set(loaded) == set(alerts), "Prometheus did not load every rule of alerts.yml"
            broken = {name: r.get("lastError") for name, r in loaded.items() if r["health"] != "ok"}
            assert not broken, f"rules that fail to evaluate: {broken}"
            active = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
            assert must_fire <= active and "SeqpredictDown" not in active, active
        finally:
            stop.set()
            if loadgen is not None and loadgen.poll() is None:
                loadgen.kill()
                loadgen.communicate()
            prometheus.stop()


def run_compose_loadgen(server: ContainerLikeServer, workdir: Path) -> subprocess.Popen[str]:
    """The compose `loadgen` service's command, from the image's layout; only the target and
    the duration change (the service runs for ten minutes)."""
    service = compose_config()["services"]["loadgen"]
    command = list(service["command"])
    command[command.index("--target") + 1] = server.address
    command[command.index("--duration") + 1] = "2"
    argv = [*service["entrypoint"], *command, "--warmup", "0", "--json"]
    return subprocess.Popen(
        argv, cwd=workdir, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# -- (d) promtool -----------------------------------------------------------------------------------
def test_promtool_checks_the_config_and_unit_tests_every_alert():
    promtool = require_tool("promtool", "prometheus")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"

    rules = load_yaml((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    cases = [
        case
        for test in load_yaml((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts <= fires, f"alerts without a firing test: {alerts - fires}"
    assert alerts <= quiet, f"alerts without a quiet test: {alerts - quiet}"


# -- (e) the dashboard ------------------------------------------------------------------------------
def test_dashboard_is_valid_and_every_query_is_among_the_checked_ones():
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = load_yaml((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"] if d["type"] == "prometheus"}
    panels = dashboard_panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] in uids, f"panel {panel['title']!r} uses an unprovisioned datasource"
        assert all(t.get("expr", "").strip() for t in panel["targets"]), f"panel {panel['title']!r}: empty query"

    # Every `expr` anywhere in the file is one that the Prometheus test runs.
    def exprs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from [value] if key == "expr" else exprs(value)
        elif isinstance(node, list):
            for item in node:
                yield from exprs(item)

    assert sorted(exprs(dashboard)) == sorted(e for _, e in dashboard_queries(dashboard))

    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("tokens/s", "latency", "batch size", "queue wait", "sessions", "reason", "errors", "memory"):
        assert topic in titles, f"no panel about {topic}"
    metrics = " ".join(e for _, e in dashboard_queries(dashboard))
    for metric in ("process_resident_memory_bytes", "seqpredict_streams_active", "seqpredict_rejected_total"):
        assert metric in metrics


# -- the image build stage, replayed ----------------------------------------------------------------
def test_dockerfile_stages_are_what_the_stack_relies_on():
    build, runtime = dockerfile_stages()
    args = build.args()
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", "CPU-only torch by default"
    assert args["INDEX_URL"] == "https://pypi.org/simple" and args["WHEELS"] == "deploy/image/wheels"
    runs = build.all("RUN")
    (torch_step,) = [r for r in runs if "torch==2.13.0" in r]
    # torch itself only from its own index or the wheel folder (never INDEX_URL: PyPI's is CUDA), then checked.
    assert "pip install --no-deps $torch_from --find-links /wheels torch==2.13.0" in torch_step
    assert 'torch_from="--index-url $TORCH_INDEX_URL"' in torch_step and "INDEX_URL $INDEX_URL" not in torch_step
    assert torch_step.rstrip().endswith("python /build/check_cpu_torch.py")
    (install,) = [r for r in runs if "protos/generate.py" in r]
    assert install.index("python protos/generate.py") < install.index(
        "pip install $from --find-links /wheels ./client ."
    )
    assert "pip install -e" not in install and "uninstall --yes grpcio-tools" in install
    assert install.index("./client .") < install.index("check_cpu_torch.py") < install.index("slim.py /opt/seqpredict")

    assert runtime.base == build.base and "-slim" in runtime.base, "a slim runtime on the build's Python"
    runtime_runs = "\n".join(runtime.all("RUN"))
    assert "apt-get" not in runtime_runs and "pip" not in runtime_runs, "nothing is installed in the runtime stage"
    assert runtime.all("COPY")[0] == "--from=build /opt/seqpredict /opt/seqpredict", "only the venv from the build"
    assert runtime.one("USER") not in ("root", "0")
    env = runtime.env()
    assert env["PATH"].startswith("/opt/seqpredict/bin:")
    assert env["SEQPREDICT_CHECKPOINT"] == f"/opt/seqpredict/lib/python3.11/site-packages/{SHIPPED}"
    assert env["SEQPREDICT_SNAPSHOT_PATH"] == "/data/sessions.snapshot"
    assert env["TMPDIR"] == "/data", "the supervisor's folder for its engine's socket: /data is all it may write"
    assert "/data" in runtime.one("VOLUME").split()
    assert exec_form(runtime.one("ENTRYPOINT")) == ["seqpredict-server"], "exec form: SIGTERM reaches the server"
    options, command = healthcheck_command(runtime.one("HEALTHCHECK"))
    assert "health" in command[-1] and duration_s(options["timeout"]) > 3


def test_the_torch_check_refuses_anything_but_the_cpu_build_of_the_pin():
    """deploy/image/check_cpu_torch.py, which fails the image build; tests/docker runs it in a real build."""
    script = ROOT / "deploy" / "image" / "check_cpu_torch.py"
    spec = importlib.util.spec_from_file_location("check_cpu_torch", script)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.problems("2.13.0+cpu", None, None, ["torch", "numpy", "filelock"]) == []
    (gpu,) = check.problems("2.13.0", "12.8", None, ["torch"])
    assert "GPU build (CUDA 12.8" in gpu
    assert "GPU libraries" in check.problems("2.13.0+cpu", None, None, ["torch", "nvidia-cublas-cu12", "triton"])[0]
    assert "pins torch==2.13.0" in check.problems("2.14.0+cpu", None, None, ["torch"])[0]
    assert check.problems("2.13.0+rocm6.4", None, "6.4", ["torch"]), "ROCm is not the CPU build either"
    here = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert here.returncode == 0 and "CPU build: ok" in here.stdout, here.stderr


def wheel_members(wheel: Path) -> tuple[set[str], str, str]:
    """(file names, entry_points.txt, METADATA) of a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next((archive.read(n).decode() for n in names if n.endswith("entry_points.txt")), "")
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    return names, entry_points, metadata


@pytest.mark.slow
def test_image_build_stage_generates_the_code_and_installs_the_checkpoint(tmp_path):
    """The build stage on the build context .dockerignore leaves: COPY, protos/generate.py,
    then the two wheels `pip install ./client .` would install."""
    context = tmp_path / "context"
    sent = build_context(context)
    for excluded in (".venv/", ".git/", "models/data/", "bench/out/", "tests/", "deploy/prometheus/"):
        assert not any(path.startswith(excluded) for path in sent), f"{excluded} must not be in the build context"
    assert not any("_pb2" in path for path in sent), "generated code must come from the build, not the tree"
    for helper in ("deploy/image/check_cpu_torch.py", "deploy/image/slim.py", "deploy/image/wheels/README.md"):
        assert helper in sent, f"the build needs {helper}"
    size_mb = sum((context / p).stat().st_size for p in sent if not p.endswith(".whl")) / 1e6
    print(f"build context: {len(sent)} files, {size_mb:.1f} MB besides wheels")

    build = dockerfile_stages()[0]
    src = replay_copies(build, context, tmp_path / "build")
    assert (tmp_path / "build" / "wheels" / "README.md").is_file(), "COPY ${WHEELS}/ /wheels/ with the default"
    generate = subprocess.run([sys.executable, "protos/generate.py"], cwd=src, capture_output=True, text=True)
    assert generate.returncode == 0, generate.stderr
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels)]
    built = subprocess.run([*pip, "./client", "."], cwd=src, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr

    (client,) = wheels.glob("seqpredict_client-*.whl")
    names, entry_points, metadata = wheel_members(client)
    for member in (
        "seqpredict/v1/seqpredict_pb2.py",
        "seqpredict/v1/seqpredict_pb2_grpc.py",
        "seqpredict/client/cli.py",
    ):
        assert member in names, f"the client wheel would lack {member}"
    assert "seqpredict = seqpredict.client.cli:main" in entry_points
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [r for r in requires if "torch" in r or "seqpredict" in r], requires

    (server,) = wheels.glob("seqpredict-*.whl")
    names, entry_points, metadata = wheel_members(server)
    for member in ("seqpredict/server/cli.py", "seqpredict/models/network.py", SHIPPED):
        assert member in names, f"the server wheel would lack {member}"
    assert not any(n.startswith(("seqpredict/client/", "seqpredict/v1/")) for n in names), "those are the client's"
    assert "seqpredict-server = seqpredict.server.cli:main" in entry_points
    assert "Requires-Dist: seqpredict-client==0.1.0" in metadata and "Requires-Dist: torch==2.13.0" in metadata

    # And the load generator's files the runtime stage copies are all it needs (run in test (c)).
    runtime_root = tmp_path / "runtime"
    workdir = replay_copies(dockerfile_stages()[-1], context, runtime_root)
    loadgen = compose_config()["services"]["loadgen"]["entrypoint"][-1]
    assert (workdir / loadgen).is_file()
    help_text = subprocess.run([sys.executable, loadgen, "--help"], cwd=workdir, capture_output=True, text=True)
    assert help_text.returncode == 0, help_text.stderr
