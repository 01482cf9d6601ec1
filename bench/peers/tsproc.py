"""TorchServe as a child process: archive the model, start it fresh, wait for its workers, stop it.

Everything TorchServe writes goes under one run directory (bench/out/peers/torchserve/...):
its model store, logs, metrics log and temporary files. TMPDIR is pointed there too, because
`torchserve` keeps its PID file in the system temp directory: with a private one, our
`torchserve --stop` can only ever stop the TorchServe we started. It runs with --foreground,
so the process we start lives as long as the Java frontend; after `torchserve --stop`, any
process of its tree still alive is killed by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from proctree import descendants, tree_cpu_seconds, tree_rss_bytes
from tsconfig import MODEL_NAME, Ports, TorchServeSettings, properties, to_yaml

PEERS_DIR = Path(__file__).resolve().parent
HANDLER = PEERS_DIR / "torchserve" / "handler.py"
TS_VENV = PEERS_DIR / ".venv-torchserve"
TS_BIN = TS_VENV / "bin"
STUBS_DIR = TS_VENV / "ts-grpc"
# The frontend's shutdown waits for sequence pollers still blocked on idle sequences (up to
# sequenceMaxIdleMSec); the measured run is over by then, so it is not waited for that long.
STOP_TIMEOUT_S = 10.0


@dataclass
class TorchServeProcess:
    """A running TorchServe; `cpu_seconds` and `rss_bytes` cover the frontend and its workers."""

    name: str
    proc: subprocess.Popen[bytes]
    ports: Ports
    run_dir: Path
    env: dict[str, str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_inference}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid)

    def worker_pids(self) -> list[int]:
        return [s.pid for s in descendants(self.pid)[1:]]

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for log in (self.run_dir / "torchserve.out", self.run_dir / "logs" / "model_log.log"):
            with contextlib.suppress(OSError):
                parts.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """`torchserve --stop` (SIGTERM to the frontend), then SIGKILL by PID to whatever of the tree is left."""
        tree = [s.pid for s in descendants(self.pid)]
        if self.proc.poll() is None:
            subprocess.run(
                [str(TS_BIN / "torchserve"), "--stop"],
                env=self.env,
                cwd=self.run_dir,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()


def free_ports() -> Ports:
    """Six distinct free loopback ports: all held open at once, so the kernel cannot hand one out twice.

    TorchServe binds its HTTP and gRPC servers only after its workers have loaded the model; a
    duplicate port then ends the frontend after a successful start, which is how a round was lost.
    """
    sockets = [socket.socket() for _ in range(6)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return Ports(*(s.getsockname()[1] for s in sockets))
    finally:
        for s in sockets:
            s.close()


def archive(settings: TorchServeSettings, sessions: int, checkpoint: Path, store: Path) -> Path:
    """A model directory (no-archive format: nothing to unzip at start) with this C's model-config.yaml."""
    store.mkdir(parents=True, exist_ok=True)
    config = store / f"model-config-c{sessions}.yaml"
    config.write_text(to_yaml(settings.model_config(sessions)))
    target = store / MODEL_NAME
    shutil.rmtree(target, ignore_errors=True)
    argv = [
        str(TS_BIN / "torch-model-archiver"),
        *("--model-name", MODEL_NAME, "--version", "1.0"),
        *("--serialized-file", str(checkpoint), "--handler", str(HANDLER)),
        *("--config-file", str(config), "--export-path", str(store), "--archive-format", "no-archive", "--force"),
    ]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    return target


def start(
    name: str, settings: TorchServeSettings, sessions: int, checkpoint: Path, run_dir: Path, ports: Ports
) -> TorchServeProcess:
    """Archive the model for C=`sessions` and start TorchServe on it in `run_dir`."""
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "tmp").mkdir(parents=True)
    store = run_dir / "model-store"
    archive(settings, sessions, checkpoint, store)
    props = run_dir / "config.properties"
    props.write_text(properties(settings, ports, str(store)))
    tmp = str(run_dir / "tmp")
    env = {
        **os.environ,
        "TMPDIR": tmp,  # torchserve's PID file, and the workers' Unix sockets (java.io.tmpdir via TEMP)
        "TEMP": tmp,
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
    }
    argv = [
        str(TS_BIN / "torchserve"),
        *("--start", "--foreground", "--ncs", "--disable-token-auth"),
        *("--model-store", str(store), "--models", f"{MODEL_NAME}={MODEL_NAME}", "--ts-config", str(props)),
    ]
    with open(run_dir / "torchserve.out", "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=run_dir, env=env
        )
    return TorchServeProcess(name, proc, ports, run_dir, env)


def wait_ready(server: TorchServeProcess, workers: int, timeout: float = 180.0) -> None:
    """Poll the management API until the model reports `workers` READY workers."""
    url = f"http://127.0.0.1:{server.ports.management}/models/{MODEL_NAME}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                described = json.loads(response.read())
            ready = [w for w in described[0].get("workers", []) if w.get("status") == "READY"]
            if len(ready) >= workers:
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{server.name}: {MODEL_NAME} not READY after {timeout:.0f} s:\n{server.log_tail()}")
