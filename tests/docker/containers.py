"""Containers of the seqpredict image, started as the README tells users to, and read from outside.

The tests reach a container the way a user does: gRPC and /metrics on ports published on
127.0.0.1, Docker's own view through `docker inspect` and `docker logs`.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.docker.engine import Engine
from tests.docker.images import IMAGE
from tests.serverproc import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


def grpc_health(address: str, timeout: float = 2.0) -> int | None:
    """The server's grpc.health.v1 status, or None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return None


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@dataclass
class Container:
    engine: Engine
    name: str
    grpc_port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def inspect(self, template: str) -> str:
        return self.engine.docker("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        done = self.engine.docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, timeout: float = 150.0) -> None:
        """Docker's HEALTHCHECK says healthy and the server answers SERVING through the published port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect("{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")
            if state.startswith(("exited", "dead")):
                raise AssertionError(f"{self.name} {state}:\n{self.logs()}")
            if state == "running healthy" and grpc_health(self.address) == SERVING:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s ({state}):\n{self.logs()}")

    def wait_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if grpc_health(self.address) == SERVING:
                return
            if self.inspect("{{.State.Status}}") in ("exited", "dead"):
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not SERVING after {timeout}s:\n{self.logs()}")

    def start(self) -> None:
        self.engine.docker("start", self.name)

    def stop(self, grace_s: int = 45) -> int:
        """`docker stop` (SIGTERM, SIGKILL after grace_s); returns the container's exit code."""
        self.engine.docker("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return int(self.inspect("{{.State.ExitCode}}"))

    def kill(self) -> None:
        self.engine.docker("kill", "--signal", "KILL", self.name)
        self.engine.docker("wait", self.name)

    def remove(self) -> None:
        self.engine.docker("rm", "--force", "--volumes", self.name, check=False)


def run_container(engine: Engine, name: str, volume: str, *flags: str, env: dict[str, str] | None = None) -> Container:
    """`docker run -d` as the README shows it: --stop-timeout 45, loopback ports, a named volume at /data."""
    container = Container(engine, name, free_port(), free_port())
    environment = [f"--env={key}={value}" for key, value in (env or {}).items()]
    engine.docker(
        "run",
        "--detach",
        f"--name={name}",
        "--stop-timeout=45",
        f"--publish=127.0.0.1:{container.grpc_port}:50051",
        f"--publish=127.0.0.1:{container.metrics_port}:9095",
        f"--volume={volume}:/data",
        *environment,
        IMAGE,
        *flags,
    )
    return container


@contextlib.contextmanager
def container_of(engine: Engine, name: str, volume: str, *flags: str, env: dict[str, str] | None = None):
    container = run_container(engine, name, volume, *flags, env=env)
    try:
        yield container
    finally:
        container.remove()
        engine.docker("volume", "rm", "--force", volume, check=False)
