"""The multi-process server (`--frontends N`): one engine process, N gRPC frontends, one supervisor.

The supervisor starts the engine (model, pool, scheduler, snapshots) and waits for it to be
ready; then the frontends, which all listen on the gRPC port (SO_REUSEPORT); then serves the
merged metrics port. It holds the gRPC port reserved (bound, not listening) so that port 0
means one free port shared by every frontend.

Lifecycle:
- SIGTERM / SIGINT: the frontends drain (NOT_SERVING, open calls finish within the grace
  period) and exit; then the engine finishes what is queued, writes the final snapshot and
  exits; the supervisor exits with the engine's status. A second signal kills everything.
- The engine dies: the frontends see it at once (a pidfd), fail every call in flight with
  INTERNAL and turn NOT_SERVING; the supervisor stops them and exits 1, so the orchestrator
  restarts the server, which restores the last periodic snapshot (as new incarnations).
- A frontend dies: it is started again (its calls in flight are lost with its connections);
  after more than a few deaths a minute the supervisor gives up and exits 1.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import zmq

from seqpredict.server import frontend
from seqpredict.server.aggregate import handler, probe
from seqpredict.server.config import Settings
from seqpredict.server.errors import EXIT_SNAPSHOT_FAILED, StartupError
from seqpredict.server.metrics_http import start_http
from seqpredict.server.model_card import ModelCard
from seqpredict.server.ports import check_free
from seqpredict.server.transport import grpc_options
from seqpredict.server.wire import ENCODER, ToEngine

log = logging.getLogger("seqpredict.server.supervisor")

START_TIMEOUT_S = 300.0  # loading a checkpoint and restoring a million-session snapshot take a while
RESTARTS_PER_MINUTE = 5


def _run_engine(*args: object) -> None:
    """The engine process's entry point, imported only there: the supervisor never loads torch."""
    from seqpredict.server import engine_process

    engine_process.main(*args)  # type: ignore[arg-type]


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = mp.get_context("spawn")  # no inherited grpc, torch or zmq state in the children
        self.workdir = tempfile.mkdtemp(prefix="seqpredict-")
        self.endpoint = f"ipc://{self.workdir}/engine.sock"
        self.engine: BaseProcess | None = None
        self.engine_metrics = 0
        self.card: ModelCard | None = None
        self.frontends: dict[int, BaseProcess] = {}
        self.frontend_metrics: dict[int, int] = {}
        self.port = 0
        self._reserved: socket.socket | None = None
        self._restarts: list[float] = []
        self._signals = 0
        self._wake_r, self._wake_w = os.pipe()

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> None:
        settings = self.settings
        check_free("gRPC", settings.host, settings.port, "--port")
        check_free("metrics", settings.metrics_host, settings.metrics_port, "--metrics-port")
        grpc_options(settings)  # the descriptor limit, before anything slow
        # A signal from here on is a drain: the first frontend serves (and reports SERVING) while
        # the others are still starting, and a client may stop the server at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._reserve_port()
        self._start_engine()
        # Before any frontend serves: whoever sees SERVING can also scrape the metrics.
        self.metrics_http = start_http(
            settings.metrics_host,
            settings.metrics_port,
            handler(self._metrics_urls, self._live, self._ready),
        )
        if not self._signals:  # stopping already: serve() drains what has started
            self._start_frontends(range(1, settings.frontends + 1))
        log.info(
            "serving on %s:%d with %d frontend process(es) and an engine process, metrics on http://%s:%d/metrics",
            settings.host,
            self.port,
            settings.frontends,
            settings.metrics_host,
            self.metrics_http.server_port,
        )

    def _reserve_port(self) -> None:
        """Bind (not listen) the gRPC port with SO_REUSEPORT, so the frontends share one port number."""
        family = socket.getaddrinfo(self.settings.host, self.settings.port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.settings.host, self.settings.port))
        self._reserved, self.port = sock, sock.getsockname()[1]

    def _start_engine(self) -> None:
        parent, child = self.ctx.Pipe(duplex=False)
        self.engine = self.ctx.Process(
            target=_run_engine, args=(self.settings, self.endpoint, child), name="seqpredict-engine"
        )
        self.engine.start()
        child.close()
        message = self._await_ready(parent, self.engine, "the engine")
        _, self.card, self.engine_metrics = message
        log.info("engine process ready (pid %d)", self.engine.pid)

    def _start_frontends(self, indices: Iterable[int]) -> None:
        """Start the frontends at once (each imports gRPC on its own core), then wait for each."""
        assert self.engine is not None and self.card is not None
        pipes = {}
        for index in indices:
            parent, child = self.ctx.Pipe(duplex=False)
            args = (self.settings, self.card, self.endpoint, self.engine.pid, index, self.port, child)
            process = self.ctx.Process(target=frontend.main, args=args, name=f"seqpredict-frontend-{index}")
            process.start()
            child.close()
            self.frontends[index], pipes[index] = process, parent  # known at once, so a failure kills it
        for index, parent in pipes.items():
            process = self.frontends[index]
            _, self.frontend_metrics[index] = self._await_ready(parent, process, f"frontend {index}")
            log.info("frontend %d ready (pid %d)", index, process.pid)

    def _await_ready(self, conn: Connection, process: BaseProcess, what: str) -> tuple:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if conn.poll(0.1):
                try:
                    message = conn.recv()
                except EOFError:
                    break
                if message[0] == "error":
                    process.join(10)
                    raise StartupError(message[1])
                return message
            if not process.is_alive():
                break
        process.join(1)
        raise StartupError(f"{what} did not start (exit status {process.exitcode}); see the log above")

    # -- serve ------------------------------------------------------------------------------------------
    def serve(self) -> int:
        """Until a signal or the engine's death; returns the exit status."""
        while True:
            assert self.engine is not None
            sentinels = [self.engine.sentinel, *(p.sentinel for p in self.frontends.values()), self._wake_r]
            wait(sentinels)
            if self._signals:
                return self.stop()
            if not self.engine.is_alive():
                log.critical("the engine process exited (status %s): stopping the frontends", self.engine.exitcode)
                self._stop_frontends(grace=5.0)
                return 1
            for index, process in list(self.frontends.items()):
                if not process.is_alive():
                    if not self._may_restart():
                        log.critical("frontend %d exited (status %s) too often: giving up", index, process.exitcode)
                        self._stop_frontends(grace=5.0)
                        self._stop_engine()
                        return 1
                    log.error("frontend %d exited (status %s): starting it again", index, process.exitcode)
                    self._start_frontends([index])

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("%s again: exiting now without draining", signal.Signals(signum).name)
            self._kill_all()
            os._exit(1)
        log.info("%s received: draining (send it again to exit at once)", signal.Signals(signum).name)
        os.write(self._wake_w, b"x")

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        return len(self._restarts) <= RESTARTS_PER_MINUTE

    # -- stop -------------------------------------------------------------------------------------------
    def stop(self) -> int:
        """The drain, in order: frontends, then the engine (final snapshot); the engine's status."""
        self._stop_frontends(grace=self.settings.grace_s + 10)
        status = self._stop_engine()
        self.close()
        if status == EXIT_SNAPSHOT_FAILED:
            log.error("exiting with status 1: the final snapshot was not written")
        elif status != 0:
            log.error("exiting with status 1: the engine stopped with status %d", status)
        else:
            log.info("stopped")
        return 0 if status == 0 else 1

    def _stop_frontends(self, grace: float) -> None:
        for process in self.frontends.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + grace
        for process in self.frontends.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("frontend %s did not stop within %.0fs: killed", process.name, grace)
                process.kill()
                process.join(5)

    def _stop_engine(self) -> int:
        engine = self.engine
        if engine is None or not engine.is_alive():
            return 1 if engine is None else (engine.exitcode or 0)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.endpoint)
        sock.send(ENCODER.encode(ToEngine(stop=True)))
        engine.join(self.settings.grace_s + 120)  # what is queued, then the final snapshot
        sock.close()
        if engine.is_alive():
            log.error("the engine did not stop: killed (no final snapshot)")
            engine.kill()
            engine.join(5)
            return 1
        return engine.exitcode or 0

    def _kill_all(self) -> None:
        for process in (*self.frontends.values(), self.engine):
            if process is not None and process.is_alive():
                process.kill()

    def close(self) -> None:
        if hasattr(self, "metrics_http"):
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        if self._reserved is not None:
            self._reserved.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the merged metrics port ------------------------------------------------------------------------
    def _metrics_urls(self) -> list[str]:
        ports = [self.engine_metrics, *self.frontend_metrics.values()]
        return [f"http://127.0.0.1:{p}/metrics" for p in ports]

    def _live(self) -> bool:
        return self.engine is not None and self.engine.is_alive() and all(p.is_alive() for p in self.frontends.values())

    def _ready(self) -> str | None:
        """Every frontend's /readyz answered 200: the first that says it is degraded, or ok."""
        # Not while one is still starting (a restarting one's old port does not answer the probe).
        if not self._live() or len(self.frontend_metrics) < self.settings.frontends:
            return None
        bodies = [probe(f"http://127.0.0.1:{p}/readyz") for p in self.frontend_metrics.values()]
        if any(body is None for body in bodies):
            return None
        return next((body for body in bodies if "degraded" in body), "ok\n")  # type: ignore[arg-type]


def run(settings: Settings) -> int:
    supervisor = Supervisor(settings)
    try:
        supervisor.start()
    except BaseException:
        supervisor._kill_all()
        supervisor.close()
        raise
    return supervisor.serve()
