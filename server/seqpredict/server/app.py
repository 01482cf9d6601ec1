"""Assembly and lifecycle: load the model, wire the layers, serve, shut down in order.

`create_server(settings)` returns a started `App` (tests bind port 0 and read the ports
back). Health turns SERVING only after the model is loaded and a warm-up step ran.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import torch
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import disable_created_metrics, start_http_server

from seqpredict.models import Checkpoint, load_checkpoint
from seqpredict.server.config import Settings
from seqpredict.server.engine import Engine
from seqpredict.server.interceptor import MetricsInterceptor
from seqpredict.server.metrics import Metrics
from seqpredict.server.scheduler import BatchingConfig, Scheduler
from seqpredict.server.service import SequencePredictorService, build_model_info
from seqpredict.server.sessions import SessionPool
from seqpredict.server.validation import Validator
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SequencePredictor"].full_name
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
    health: health.aio.HealthServicer
    checkpoint: Checkpoint
    _metrics_http: object = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING → stop accepting and let in-flight calls finish → drain the engine."""
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.stop, grace)
        http = self._metrics_http
        if http is not None:
            http.shutdown()  # type: ignore[attr-defined]
            http.server_close()  # type: ignore[attr-defined]
        log.info("stopped")


async def create_server(settings: Settings) -> App:
    """Load the checkpoint, build every layer, bind the ports and start serving."""
    torch.set_num_threads(settings.torch_threads)
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
    engine = Engine(checkpoint, pool, metrics)

    def housekeeping() -> None:
        expired = pool.expire_idle()
        if expired:
            log.info("expired %d idle session(s)", expired)
        metrics.sessions_active.set(len(pool))
        metrics.pool_bytes.set(pool.state_bytes)
        metrics.pool_slots.set(pool.capacity)

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
    server = aio.server(
        interceptors=[MetricsInterceptor(metrics)],
        maximum_concurrent_rpcs=settings.max_streams,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
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
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    http, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    metrics_port = http.server_port
    metrics.sessions_limit.set(settings.max_sessions)
    metrics.model.info(
        {
            "name": checkpoint.path.rsplit("/", 1)[-1],
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
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    metrics.ready.set(1)
    log.info(
        "serving %s on %s:%d, metrics on http://%s:%d/metrics",
        SERVICE_NAME,
        settings.host,
        port,
        settings.metrics_host,
        metrics_port,
    )
    return App(settings, server, port, metrics_port, metrics, scheduler, pool, health_servicer, checkpoint, http)
