"""Real parts of a multi-replica deployment for tests: redis-server, replicas sharing it, nginx in front.

Each part is started by the test that needs it on 127.0.0.1 with ports, data and PID of its
own, and stopped at the end. Debian's `redis-server` and `nginx` (`make system-deps`) must be
installed; when one is missing, the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess, free_port

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def need(binary: str, package: str) -> None:
    if not Path(binary).exists() and shutil.which(binary) is None:
        pytest.skip(f"skipped, because {binary} is not installed (Debian's {package}: make system-deps installs it)")


class RedisServer:
    """redis-server with append-only persistence in `data_dir`: a restart keeps every session."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        need(REDIS, "redis-server")
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self.cli("ping") == "PONG":
                return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server not answering on {self.port}: {self.log()}")

    def stop(self) -> None:
        """SIGTERM: redis-server writes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    def log(self) -> str:
        path = self.data_dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# Each replica runs one frontend: what these replicas test is the store and the routing, and three
# replicas of the default shape (supervisor, engine, two frontends) are twelve processes on two cores.
REPLICA_SHAPE = ("--frontends", "1")


class Replicas:
    """Replicas of the server sharing one store, each a ServerProcess of its own (supervisor, engine, frontend)."""

    def __init__(self, tmp: Path, store_url: str, durability: str, *extra: str) -> None:
        self.tmp = tmp
        self.args = (*REPLICA_SHAPE, "--state-store", store_url, "--durability", durability, "--grace-s", "10", *extra)
        self.replicas: list[ServerProcess] = []
        self._started = 0

    def add(self, count: int = 1, *extra: str) -> list[ServerProcess]:
        """Start `count` replicas at once and wait until each is SERVING."""
        new = []
        for _ in range(count):
            self._started += 1
            log = self.tmp / f"replica-{self._started}.log"
            new.append(ServerProcess(log, *self.args, *extra, wait=False))
        for replica in new:
            replica.wait_serving()
        self.replicas += new
        return new

    def restart(self, replica: ServerProcess) -> ServerProcess:
        """The same replica again, on the same ports (what an orchestrator does after a crash)."""
        index = self.replicas.index(replica)
        again = ServerProcess(replica.log_path, *self.args, wait=False, ports=(replica.port, replica.metrics_port))
        again.wait_serving()
        self.replicas[index] = again
        return again

    def stop_all(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.kill()

    def __iter__(self) -> Iterator[ServerProcess]:
        return iter(self.replicas)

    def __getitem__(self, index: int) -> ServerProcess:
        return self.replicas[index]
