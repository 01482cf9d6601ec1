"""A compose project on the tests' engine, driven with the client users have (test_compose, test_cluster).

`docker compose` (v2) when the client has it, Debian's docker-compose (v1) otherwise; every command
runs against the tests' own engine, under the project's name, with its port and other variables.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deployfiles import require_tool
from tests.docker.containers import Container
from tests.docker.engine import Engine


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) when the client has it, else Debian's docker-compose (v1)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [require_tool("docker-compose", "docker-compose")]


@dataclass
class Stack:
    engine: Engine
    project: str
    files: list[Path]
    ports: dict[str, int]
    variables: dict[str, str] = field(default_factory=dict)  # more of the file's settings (the cluster's)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['GRPC_HOST_PORT']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.ports['PROMETHEUS_HOST_PORT']}"

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [*compose_command(), "--project-name", self.project]
        argv += [arg for f in self.files for arg in ("--file", str(f))]
        env = {**self.engine.env, **{k: str(v) for k, v in self.ports.items()}, **self.variables}
        done = subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"compose {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        return done

    def up(self) -> None:
        self.compose("up", "--detach", "--no-build", "server", "prometheus")
        self.server().wait_healthy()
        self.wait_prometheus()

    def server(self) -> Container:
        container_id = self.compose("ps", "--quiet", "server").stdout.strip()
        assert container_id, "no server container"
        return Container(self.engine, container_id, self.ports["GRPC_HOST_PORT"], self.ports["METRICS_HOST_PORT"])

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_prometheus(self, timeout: float = 90.0) -> None:
        """Until Prometheus has scraped the server once and is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if any(r["value"][1] == "1" for r in self.api("query", query='up{job="seqpredict"}')["result"]):
                    return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus never scraped the server:\n{self.compose('logs', 'prometheus').stdout}")
