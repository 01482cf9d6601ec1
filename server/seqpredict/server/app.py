"""The single-process server (`--frontends 0`): the engine on an inference thread, gRPC on the event loop.

`create_server(settings)` returns a started `App` (tests bind port 0 and read the ports
back). Health turns SERVING only after the model is loaded, sessions are restored and a
warm-up step ran, and stays SERVING only while the inference thread shows signs of life
(the watchdog). `App.stop(grace)` is the drain: health NOT_SERVING → new calls refused →
open calls finish within the grace period → the engine drains → final snapshot. If the
inference thread dies, `App.fatal` is set and the server should stop without a final
snapshot (the pool may be mid-batch) and exit non-zero.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from prometheus_client import disable_created_metrics

from seqpredict.server.admission import Admission
from seqpredict.server.config import Settings
from seqpredict.server.engine_side import EngineSide, build_engine_side
from seqpredict.server.inference_thread import InferenceThread
from seqpredict.server.metrics import Metrics
from seqpredict.server.metrics_http import STORE_DOWN, start_metrics_server
from seqpredict.server.ports import check_free
from seqpredict.server.scheduler import Scheduler
from seqpredict.server.transport import SERVICE_NAME, Transport, grpc_options, start_transport

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    side: EngineSide
    runner: InferenceThread
    transport: Transport
    metrics_http: ThreadingHTTPServer

    @property
    def port(self) -> int:
        return self.transport.port

    @property
    def metrics_port(self) -> int:
        return self.metrics_http.server_port

    # What tests and tools reach for most.
    @property
    def metrics(self) -> Metrics:
        return self.side.metrics

    @property
    def scheduler(self) -> Scheduler:
        return self.side.scheduler

    @property
    def admission(self) -> Admission:
        return self.transport.admission

    @property
    def fatal(self) -> asyncio.Event:
        return self.transport.fatal

    @property
    def serving(self) -> bool:
        return self.transport.serving

    async def stop(self, grace: float | None = None) -> bool:
        """Drain in the fixed order; returns when everything is down: True unless the final snapshot failed."""
        await self.transport.drain(self.settings.grace_s if grace is None else grace)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.runner.stop)
        # The inference thread has ended: the pool is ours to read now.
        saved = True
        if self.fatal.is_set():
            log.error("no final snapshot: the inference thread died mid-batch; the last periodic one stands")
        else:
            saved = await loop.run_in_executor(None, self.side.finish)
        self.metrics_http.shutdown()
        self.metrics_http.server_close()
        log.info("stopped")
        return saved


async def create_server(settings: Settings) -> App:
    """Load the checkpoint, build every layer, restore sessions, bind the ports and start serving."""
    check_free("gRPC", settings.host, settings.port, "--port")
    check_free("metrics", settings.metrics_host, settings.metrics_port, "--metrics-port")
    grpc_options(settings)  # checks the descriptor limit before anything slow
    disable_created_metrics()  # `_created` series double the exposition and no dashboard reads them
    metrics = Metrics()
    side = build_engine_side(settings, metrics)
    runner = InferenceThread(side.scheduler, side.housekeeping, side.between_batches, side.next_commit)
    runner.start(asyncio.get_running_loop())
    transport = await start_transport(settings, side.card, runner, metrics)
    metrics_http = start_metrics_server(
        settings.metrics_host,
        settings.metrics_port,
        metrics.registry,
        live=lambda: runner.alive,
        ready=lambda: transport.serving,
        degraded=lambda: "" if runner.store_up else STORE_DOWN,
    )
    app = App(settings, side, runner, transport, metrics_http)
    log.info(
        "serving %s on %s:%d (%s%s), metrics on http://%s:%d/metrics",
        SERVICE_NAME,
        settings.host,
        app.port,
        "TLS" if settings.tls_cert else "plaintext",
        f", {len(settings.bearer_tokens())} bearer token(s)" if settings.auth_enabled else "",
        settings.metrics_host,
        app.metrics_port,
    )
    return app
