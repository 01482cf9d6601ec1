"""The real server as a separate process, for tests of signals, restarts and resource use.

The server may be several processes (a supervisor, an engine, frontends): it runs in a
process group of its own, signals go to the supervisor as an orchestrator sends them, and
`kill()` kills the whole group at once, as a crash or an OOM kill of a container does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`seqpredict-server` started with flags and SEQPREDICT_* variables; logs go to a file."""

    def __init__(
        self,
        log_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        ports: tuple[int, int] | None = None,
    ) -> None:
        self.port, self.metrics_port = ports or (free_port(), free_port())
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "seqpredict.server.cli",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *args,
        ]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEQPREDICT_")}
        full_env.update(env or {})
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        if wait:
            self.wait_serving()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self, timeout: float = 2.0) -> int | None:
        """The health status code, or None when unreachable."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            except grpc.RpcError:
                return None
            return reply.status

    def wait_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            # gRPC SERVING comes from whichever frontend answers; /readyz only once every process is up.
            if self.health(timeout=0.5) == health_pb2.HealthCheckResponse.SERVING and self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING after {timeout}s:\n{self.log()}")

    def ready(self) -> bool:
        """/readyz on the metrics port answers 200 (every process of the server is up)."""
        try:
            with urllib.request.urlopen(self.metrics_url.replace("/metrics", "/readyz"), timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stub(self, channel: grpc.Channel | None = None) -> pb_grpc.SequencePredictorStub:
        return pb_grpc.SequencePredictorStub(channel or grpc.insecure_channel(self.address))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def pids(self) -> list[int]:
        """Every process of the server (its process group)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[2]) == self.proc.pid:  # field 5: the process group
                    found.append(int(entry.name))
        return found

    def rss_bytes(self) -> int:
        """Resident memory of all the server's processes together."""
        total = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += next((int(x.split()[1]) * 1024 for x in lines if x.startswith("VmRSS:")), 0)
        return total

    def kill(self) -> None:
        """SIGKILL to every process of the server at once: a crash."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait()
