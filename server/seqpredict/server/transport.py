"""The gRPC face of a server process: service, health, admission and the drain.

Used as-is by the single-process server (`app`) and by every frontend process (`frontend`),
in front of whatever runs the engine (an EngineHandle). Health is SERVING only while
nothing is wrong (the watchdog follows the engine) and the process is not draining.
`drain(grace)`: health NOT_SERVING → new calls refused → open calls finish within the
grace period → the gRPC server stops.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from seqpredict.models import Vocabulary
from seqpredict.server.admission import HARD_LIMIT_FACTOR, Admission
from seqpredict.server.config import Settings
from seqpredict.server.errors import StartupError
from seqpredict.server.handle import EngineHandle
from seqpredict.server.interceptor import RpcGuard
from seqpredict.server.metrics import Metrics
from seqpredict.server.model_card import ModelCard
from seqpredict.server.ports import check_free
from seqpredict.server.service import SequencePredictorService, build_model_info
from seqpredict.server.streams import Window
from seqpredict.server.validation import Validator
from seqpredict.server.watchdog import Watchdog
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SequencePredictor"].full_name
HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# File descriptors kept free beyond max_connections: snapshots, the metrics port, the checkpoint, logs.
FD_RESERVE = 256
# At the end of a drain, how long open health Watch streams get to deliver NOT_SERVING.
HEALTH_NOTICE_S = 0.5
# A connection that has not finished its HTTP/2 (and TLS) handshake after this long is closed.
HANDSHAKE_TIMEOUT_MS = 10_000


@dataclass
class Transport:
    settings: Settings
    server: aio.Server
    port: int
    metrics: Metrics
    service: SequencePredictorService
    admission: Admission
    health: health.aio.HealthServicer
    engine: EngineHandle
    fatal: asyncio.Event = field(default_factory=asyncio.Event)  # the engine died
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
        dog = Watchdog(
            self.engine,
            self.settings.engine_stall_s,
            self.set_healthy,
            self.fatal.set,
            require_store=self.settings.durability_mode == "sync",
        )
        self._watchdog = asyncio.get_running_loop().create_task(dog.run())

    async def drain(self, grace: float) -> None:
        """Stop taking work and let open calls finish within `grace`; returns when gRPC has stopped."""
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


def grpc_options(settings: Settings, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Message sizes, connection bounds and keepalive enforcement for the gRPC server.

    `reuse_port`: several frontend processes listen on one port (SO_REUSEPORT); the kernel
    spreads connections over them. Off otherwise, so a second server on a taken port fails.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes * HARD_LIMIT_FACTOR),
        ("grpc.max_send_message_length", settings.max_answer_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_allowed_incoming_connections", connection_limit(settings)),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        # Let idle clients keep connections alive with pings, but not flood us with them: a client
        # pinging more often than every 10 s without data gets GOAWAY after two strikes.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        # No automatic growth of a stream's receive window: with it, a client that never reads parked
        # ~18,000 requests (5 MB) in gRPC's buffers before flow control held it back; without it, ~300.
        ("grpc.http2.bdp_probe", 0),
    ]
    if settings.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)))
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)))
    return options


def server_limits(settings: Settings) -> pb.ServerLimits:
    return pb.ServerLimits(
        max_tokens_per_request=settings.max_tokens_per_request,
        max_generate_tokens=settings.max_generate_tokens,
        max_sessions=settings.max_sessions,
        idle_ttl_seconds=settings.idle_ttl_s,
        max_message_bytes=settings.max_message_bytes,
        max_answer_bytes=settings.max_answer_bytes,
        stream_window_requests=settings.stream_window,
        stream_window_bytes=settings.stream_window_bytes,
    )


async def start_transport(
    settings: Settings,
    card: ModelCard,
    engine: EngineHandle,
    metrics: Metrics,
    *,
    port: int | None = None,
    reuse_port: bool = False,
) -> Transport:
    """Build the service and the gRPC server in front of `engine`, bind, start, turn SERVING."""
    options = grpc_options(settings, reuse_port)
    service = SequencePredictorService(
        engine,
        Validator(Vocabulary(card.vocabulary), settings.max_tokens_per_request, settings.max_generate_tokens),
        card,
        build_model_info(card, server_limits(settings)),
        metrics,
        Window(settings.stream_window, settings.stream_window_bytes),
        settings.max_answer_bytes,
    )
    admission = Admission(
        settings.bearer_tokens(), settings.max_streams, settings.max_message_bytes, shared=bool(settings.state_store)
    )
    server = aio.server(interceptors=[RpcGuard(metrics, admission)], options=options)
    pb_grpc.add_SequencePredictorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_NAME, reflection.SERVICE_NAME), server)
    port = settings.port if port is None else port
    address = f"{settings.host}:{port}"
    credentials = server_credentials(settings)
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # taken since it was checked (a race), or an address grpc cannot bind
        bound = 0
    if bound == 0:
        if not reuse_port:
            check_free("gRPC", settings.host, port, "--port")
        raise OSError(f"cannot listen on {address} (--host / --port)")
    metrics.engine_heartbeat_age.set_function(lambda: time.monotonic() - engine.heartbeat)
    await server.start()
    transport = Transport(settings, server, bound, metrics, service, admission, health_servicer, engine)
    await transport.set_healthy("starting", True)
    transport.start_watchdog()
    return transport
