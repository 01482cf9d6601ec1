"""Assembly and lifecycle: load the model, wire the layers, serve, shut down in order.

`create_server(settings)` returns a started `App` (tests bind port 0 and read the ports
back). Health turns SERVING only after the model is loaded, sessions are restored and a
warm-up step ran. `App.stop(grace)` is the drain: health NOT_SERVING → new calls refused
→ open calls finish within the grace period → the engine drains → final snapshot.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import disable_created_metrics, start_http_server

from seqpredict.models import Checkpoint, load_checkpoint
from seqpredict.server.admission import HARD_LIMIT_FACTOR, Admission, load_tokens
from seqpredict.server.config import Settings
from seqpredict.server.engine import Engine
from seqpredict.server.interceptor import RpcGuard
from seqpredict.server.metrics import Metrics
from seqpredict.server.ports import PortInUse, check_free, in_use_message
from seqpredict.server.scheduler import BatchingConfig, Scheduler
from seqpredict.server.service import SequencePredictorService, build_model_info
from seqpredict.server.sessions import SessionPool
from seqpredict.server.snapshot import Snapshotter
from seqpredict.server.validation import Validator
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SequencePredictor"].full_name
HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class App:
    settings: Settings
    server: aio.Server
    port: int
    metrics_port: int
    metrics: Metrics
    scheduler: Scheduler
    pool: SessionPool
    service: SequencePredictorService
    admission: Admission
    health: health.aio.HealthServicer
    checkpoint: Checkpoint
    snapshotter: Snapshotter | None
    metrics_http: Any

    async def stop(self, grace: float | None = None) -> None:
        """Drain in the fixed order; returns when everything is down."""
        grace = self.settings.grace_s if grace is None else grace
        log.info("draining: NOT_SERVING, refusing new calls, %.0fs for open calls to finish", grace)
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
        await self.server.stop(max(0.0, deadline - loop.time()))  # cancels whatever is still open
        await loop.run_in_executor(None, self.scheduler.stop)
        # The inference thread has ended: the pool is ours to read now.
        if self.snapshotter is not None:
            await loop.run_in_executor(None, self.snapshotter.final)
        else:
            dropped = self.pool.release_all("shutdown")
            if dropped:
                log.info("%d session(s) dropped at shutdown (no --snapshot-path)", dropped)
        self.metrics_http.shutdown()
        self.metrics_http.server_close()
        log.info("stopped")


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def create_server(settings: Settings) -> App:
    """Load the checkpoint, build every layer, restore sessions, bind the ports and start serving."""
    check_free("gRPC", settings.host, settings.port, "--port")
    check_free("metrics", settings.metrics_host, settings.metrics_port, "--metrics-port")
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
        expired = pool.expire_idle()
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
            session_queue_limit=settings.session_queue_limit,
            queue_limit=settings.queue_limit,
        ),
        metrics,
        housekeeping=housekeeping,
    )
    limits = pb.ServerLimits(
        max_tokens_per_request=settings.max_tokens_per_request,
        max_generate_tokens=settings.max_generate_tokens,
        max_sessions=settings.max_sessions,
        idle_ttl_seconds=settings.idle_ttl_s,
        max_message_bytes=settings.max_message_bytes,
    )
    service = SequencePredictorService(
        scheduler,
        Validator(checkpoint.vocab, settings.max_tokens_per_request, settings.max_generate_tokens),
        checkpoint,
        build_model_info(checkpoint, limits, pool.state_bytes_per_session),
        metrics,
    )
    tokens = load_tokens(settings.auth_tokens, settings.auth_tokens_file)
    admission = Admission(tokens, settings.max_streams, settings.max_message_bytes)
    server = aio.server(
        interceptors=[RpcGuard(metrics, admission)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes * HARD_LIMIT_FACTOR),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            # Let idle clients keep connections alive with pings, but not flood us with them.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    pb_grpc.add_SequencePredictorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # taken since check_free (a race), or an address grpc cannot bind
        port = 0
    if port == 0:
        check_free("gRPC", settings.host, settings.port, "--port")
        raise OSError(f"cannot listen on {address} (--host / --port)")
    try:
        metrics_http, _ = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        message = in_use_message("metrics", settings.metrics_host, settings.metrics_port, "--metrics-port")
        raise PortInUse(message) from None
    metrics.sessions_limit.set(settings.max_sessions)
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
    scheduler.start(asyncio.get_running_loop())
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics.ready.set(1)
    log.info(
        "serving %s on %s (%s%s), metrics on http://%s:%d/metrics",
        SERVICE_NAME,
        f"{settings.host}:{port}",
        "TLS" if credentials else "plaintext",
        f", {len(tokens)} bearer token(s)" if tokens else "",
        settings.metrics_host,
        metrics_http.server_port,
    )
    return App(
        settings,
        server,
        port,
        metrics_http.server_port,
        metrics,
        scheduler,
        pool,
        service,
        admission,
        health_servicer,
        checkpoint,
        snapshotter,
        metrics_http,
    )
