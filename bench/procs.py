"""Servers under test as child processes, and what the benchmark reads about them from outside.

Every server runs in processes of its own, started here on free ports and stopped with
SIGTERM (the way an orchestrator stops it), so its CPU time and RSS can be read from /proc
without counting the load generator's. Ours is a process tree (a supervisor, the engine
process and N frontends; one process with --frontends 0): CPU and RSS are the whole tree's,
and `roles()` names each process from the supervisor's log so that a run can say what each
one cost. Readiness is the standard gRPC health check, the same probe a deployment would use.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proctree import tree_cpu_seconds, tree_rss_bytes

BENCH_DIR = Path(__file__).resolve().parent
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
# The supervisor's log lines naming its children (seqpredict/server/supervisor.py).
_ENGINE_READY = re.compile(r"\bengine process ready \(pid (\d+)\)")
_FRONTEND_READY = re.compile(r"\bfrontend (\d+) ready \(pid (\d+)\)")


def process_roles(log_text: str, root_pid: int, single_role: str) -> dict[str, int]:
    """{role: pid} of a server from its log: "supervisor", "engine", "frontend-K" for the
    multi-process server (a restarted frontend's latest pid wins), else {single_role: root_pid}."""
    roles: dict[str, int] = {}
    for match in _ENGINE_READY.finditer(log_text):
        roles["engine"] = int(match[1])
    for match in _FRONTEND_READY.finditer(log_text):
        roles[f"frontend-{match[1]}"] = int(match[2])
    if not roles:
        return {single_role: root_pid}
    return {"supervisor": root_pid, **roles}


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None
    log_path: Path
    single_role: str = "server"  # the role of a server that is one process: "server" (ours), "echo"
    _terminated: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process tree (supervisor, engine, frontends)."""
        return tree_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree."""
        return tree_rss_bytes(self.pid)

    def roles(self) -> dict[str, int]:
        """{role: pid}: "supervisor", "engine", "frontend-K" — or one role for a one-process server.
        Read from the log, which names the children only at INFO level (the default)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        return process_roles(text, self.pid, self.single_role)

    def metrics(self) -> dict[str, float]:
        """Our server's Prometheus samples (series with labels keep them in the key)."""
        if self.metrics_port is None:
            return {}
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM once (a second one would make our server exit without draining)."""
        if self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not drain in time; returns the exit code."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _spawn(name: str, argv: list[str], log_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, log_path


def start_ours(name: str, log_dir: Path, extra: list[str] | None = None) -> ServerProcess:
    """`seqpredict-server` with default settings except the ports and `extra` flags."""
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "seqpredict.server.cli", "--port", str(port), "--metrics-port", str(metrics_port)]
    proc, log_path = _spawn(name, argv + (extra or []), log_dir)
    return ServerProcess(name, proc, port, metrics_port, log_path)


def start_echo(name: str, log_dir: Path) -> ServerProcess:
    port = free_port()
    proc, log_path = _spawn(name, [sys.executable, str(BENCH_DIR / "echo_server.py"), "--port", str(port)], log_dir)
    return ServerProcess(name, proc, port, None, log_path, single_role="echo")


def wait_serving(server: ServerProcess, timeout: float = 180.0) -> None:
    """Poll grpc.health.v1 until SERVING; raises with the server's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{server.name} not SERVING after {timeout:.0f} s:\n{server.log_tail()}")


def proc_status_bytes(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM, ...) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in /proc/{pid}/status")


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Parse the Prometheus text format into {name{labels}: value}."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples
