"""Assembly and lifecycle: load the model, wire the layers, serve, shut down in order.

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
import os
import resource
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
import torch
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import disable_created_metrics

from seqpredict.models import Checkpoint, load_checkpoint
from seqpredict.server.admission import HARD_LIMIT_FACTOR, Admission
from seqpredict.server.config import Settings
from seqpredict.server.engine import Engine
from seqpredict.server.inference_thread import InferenceThread
from seqpredict.server.interceptor import RpcGuard
from seqpredict.server.metrics import Metrics
from seqpredict.server.metrics_http import start_metrics_server
from seqpredict.server.model_card import model_card
from seqpredict.server.scheduler import BatchingConfig, Scheduler
from seqpredict.server.service import SequencePredictorService, build_model_info
from seqpredict.server.sessions import SessionPool
from seqpredict.server.snapshotter import Snapshotter, StartupError
from seqpredict.server.streams import Window
from seqpredict.server.validation import Validator
from seqpredict.server.watchdog import Watchdog
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SequencePredictor"].full_name
HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# File descriptors kept free beyond max_connections: snapshots, the metrics port, the checkpoint, logs.
FD_RESERVE = 256
# At the end of a drain, how long open health Watch streams get to deliver NOT_SERVING.
HEALTH_NOTICE_S = 0.5
# A connection that has not finished its HTTP/2 (and TLS) handshake after this long is closed.
HANDSHAKE_TIMEOUT_MS = 10_000


@dataclass
class App:
    settings: Settings
    server: aio.Server
    port: int
    metrics_port: int
    metrics: Metrics
    scheduler: Scheduler
    runner: InferenceThread
    pool: SessionPool
    service: SequencePredictorService
    admission: Admission
    health: health.aio.HealthServicer
    checkpoint: Checkpoint
    snapshotter: Snapshotter | None
    metrics_http: ThreadingHTTPServer
    fatal: asyncio.Event = field(default_factory=asyncio.Event)  # the inference thread died
    _unhealthy: set[str] = field(default_factory=set)  # reasons health is NOT_SERVING (besides draining)
    _draining: bool = False
    _watchdog: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return not self._draining and not self._unhealthy

    async def set_healthy(self, reason: str, ok: bool) -> None:
        """Health is SERVING only when nothing is wrong and the server is not draining."""
        (self._unhealthy.discard if ok else self._unhealthy.add)(reason)
        await self._publish()

    async def _publish(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        self.metrics.ready.set(1 if self.serving else 0)

    def start_watchdog(self) -> None:
        dog = Watchdog(self.runner, self.settings.engine_stall_s, self.set_healthy, self.fatal.set)
        self._watchdog = asyncio.get_running_loop().create_task(dog.run())

    async def stop(self, grace: float | None = None) -> bool:
        """Drain in the fixed order; returns when everything is down: True unless the final snapshot failed."""
        grace = self.settings.grace_s if grace is None else grace
        log.info("draining: NOT_SERVING, refusing new calls, %.0fs for open calls to finish", grace)
        self._draining = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()
        self.admission.draining = True
        self.service.drain()
        # Keep listening while calls finish, so probes see NOT_SERVING and new calls a clear
        # UNAVAILABLE from admission rather than a refused connection.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.admission.active > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Whatever is still open now is a call past the grace period or a health Watch, which never
        # ends by itself and must not hold the drain: cancelled after a moment in which Watch streams
        # deliver NOT_SERVING (gRPC returns at once when nothing is open).
        await self.server.stop(min(HEALTH_NOTICE_S, max(0.0, deadline - loop.time())))
        await loop.run_in_executor(None, self.runner.stop)
        # The inference thread has ended: the pool is ours to read now.
        saved = True
        if self.fatal.is_set():
            log.error("no final snapshot: the inference thread died mid-batch; the last periodic one stands")
        elif self.snapshotter is not None:
            saved = await loop.run_in_executor(None, self.snapshotter.final)
        else:
            dropped = self.pool.release_all("shutdown")
            if dropped:
                log.info("%d session(s) dropped at shutdown (no --snapshot-path)", dropped)
        self.metrics_http.shutdown()
        self.metrics_http.server_close()
        log.info("stopped")
        return saved


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def connection_limit(settings: Settings) -> int:
    """max_connections, checked against the file-descriptor limit (raised to its hard maximum first):
    connections must run out before descriptors do, or snapshots and the metrics port fail with them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and settings.max_connections + FD_RESERVE > soft:
        raise StartupError(
            f"max_connections {settings.max_connections} needs {settings.max_connections + FD_RESERVE} file"
            f" descriptors, the limit is {soft}: lower max_connections or raise `ulimit -n`"
        )
    return settings.max_connections


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """Message sizes, connection bounds and keepalive enforcement for the gRPC server."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes * HARD_LIMIT_FACTOR),
        ("grpc.max_send_message_length", settings.max_answer_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", connection_limit(settings)),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        # Let idle clients keep connections alive with pings, but not flood us with them: a client
        # pinging more often than every 10 s without data gets GOAWAY after two strikes.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if settings.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)))
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)))
    return options


async def create_server(settings: Settings) -> App:
    """Load the checkpoint, build every layer, restore sessions, bind the ports and start serving."""
    options = grpc_options(settings)  # checks the descriptor limit before anything slow
    torch.set_num_threads(settings.torch_threads)
    # oneDNN keeps a compiled primitive per nn.LSTM input shape and reads its cache size from the
    # environment once, at the first prefill (warm-up, below). 1024 shapes cost ~250 MB of RSS
    # in the soak run; 64 kept the same prefill speed (bench figures in README).
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(settings.onednn_cache_capacity)
    checkpoint = load_checkpoint(settings.checkpoint)
    cfg = checkpoint.config
    log.info(
        "loaded %s: %s H=%d x %d layers, vocabulary %d, sha256 %s",
        checkpoint.path,
        cfg.cell,
        cfg.hidden_size,
        cfg.num_layers,
        cfg.vocab_size,
        checkpoint.fingerprint[:12],
    )
    disable_created_metrics()  # `_created` series double the exposition and no dashboard reads them
    metrics = Metrics()
    pool = SessionPool(
        num_states=len(cfg.state_names),
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        max_sessions=settings.max_sessions,
        idle_ttl=settings.idle_ttl_s,
        evict_lru=settings.session_policy == "evict",
        dtype=STATE_DTYPES[settings.state_dtype],
        on_end=lambda reason, n: metrics.sessions_ended.labels(reason).inc(n),
    )
    snapshotter = None
    if settings.snapshot_path:
        snapshotter = Snapshotter(
            settings.snapshot_path, settings.snapshot_interval_s, pool, checkpoint.fingerprint, metrics
        )
        snapshotter.restore_at_start([(cfg.num_layers, cfg.hidden_size)] * len(cfg.state_names))
    engine = Engine(checkpoint, pool, metrics)

    def housekeeping() -> None:
        """Runs about once a second on the inference thread."""
        expired = pool.expire_idle(protected=engine.ops.busy)
        if expired:
            log.info("expired %d idle session(s) (idle TTL %.0fs)", expired, settings.idle_ttl_s)
        metrics.sessions_active.set(len(pool))
        metrics.pool_bytes.set(pool.state_bytes)
        metrics.pool_slots.set(pool.capacity)
        if snapshotter is not None:
            snapshotter.maybe_periodic()

    scheduler = Scheduler(
        engine,
        BatchingConfig(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            prefill_chunk=settings.prefill_chunk,
            max_delay=settings.max_delay_ms / 1000,
        ),
        metrics,
    )
    runner = InferenceThread(scheduler, housekeeping)
    limits = pb.ServerLimits(
        max_tokens_per_request=settings.max_tokens_per_request,
        max_generate_tokens=settings.max_generate_tokens,
        max_sessions=settings.max_sessions,
        idle_ttl_seconds=settings.idle_ttl_s,
        max_message_bytes=settings.max_message_bytes,
        max_answer_bytes=settings.max_answer_bytes,
        stream_window_requests=settings.stream_window,
        stream_window_bytes=settings.stream_window_bytes,
    )
    card = model_card(checkpoint, settings.state_dtype, pool.state_bytes_per_session)
    service = SequencePredictorService(
        runner,
        Validator(checkpoint.vocab, settings.max_tokens_per_request, settings.max_generate_tokens),
        card,
        build_model_info(card, limits),
        metrics,
        Window(settings.stream_window, settings.stream_window_bytes),
        settings.max_answer_bytes,
    )
    tokens = settings.bearer_tokens()
    admission = Admission(tokens, settings.max_streams, settings.max_message_bytes)
    server = aio.server(interceptors=[RpcGuard(metrics, admission)], options=options)
    pb_grpc.add_SequencePredictorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    app_ref: list[App] = []
    metrics_http = start_metrics_server(
        settings.metrics_host,
        settings.metrics_port,
        metrics.registry,
        live=lambda: runner.alive,
        ready=lambda: bool(app_ref) and app_ref[0].serving,
    )
    metrics.sessions_limit.set(settings.max_sessions)
    metrics.engine_heartbeat_age.set_function(lambda: time.monotonic() - runner.heartbeat)
    metrics.model.info(
        {
            "name": Path(checkpoint.path).name,
            "fingerprint": checkpoint.fingerprint,
            "cell": cfg.cell,
            "hidden_size": str(cfg.hidden_size),
            "num_layers": str(cfg.num_layers),
            "vocab_size": str(cfg.vocab_size),
        }
    )
    housekeeping()
    engine.warm_up()
    runner.start(asyncio.get_running_loop())
    await server.start()
    app = App(
        settings,
        server,
        port,
        metrics_http.server_port,
        metrics,
        scheduler,
        runner,
        pool,
        service,
        admission,
        health_servicer,
        checkpoint,
        snapshotter,
        metrics_http,
    )
    app_ref.append(app)
    await app.set_healthy("starting", True)
    app.start_watchdog()
    log.info(
        "serving %s on %s (%s%s), metrics on http://%s:%d/metrics",
        SERVICE_NAME,
        f"{settings.host}:{port}",
        "TLS" if credentials else "plaintext",
        f", {len(tokens)} bearer token(s)" if tokens else "",
        settings.metrics_host,
        metrics_http.server_port,
    )
    return app
