"""How the clients connect: channel options, retry policy, TLS credentials and auth metadata.

Shared by the sync and the asyncio client so both behave the same on the wire.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

ROUTING_METADATA = "x-session-id"
ROUTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the server's session id rule

log = logging.getLogger(__name__)

SERVICE = "seqpredict.v1.SequencePredictor"
HEALTH_SERVICE = "grpc.health.v1.Health"
DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Told to the server with every call, so it refuses (before doing any work) an answer we could not receive.
RECEIVE_LIMIT_METADATA = "seqpredict-max-receive-bytes"

# Only calls that change nothing may be retried: a retried Predict or Generate whose first
# attempt reached the server would feed the same tokens twice and silently corrupt the
# session's recurrent state, and a retried EndSession would answer NOT_FOUND for a session
# the first attempt did end. Those surface UNAVAILABLE to the caller, who knows what to do.
RETRYABLE_METHODS: tuple[tuple[str, str], ...] = (
    (SERVICE, "GetSession"),
    (SERVICE, "GetModelInfo"),
    (SERVICE, "ExportSession"),
    (SERVICE, "ListSessions"),
    (HEALTH_SERVICE, "Check"),
)

RETRY_POLICY: dict[str, Any] = {
    # Up to 4 attempts over about 0.7 s of backoff: rides out a server restart or a brief
    # network blip without making a caller wait long for a server that is really down.
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> dict[str, Any]:
    """The gRPC service config: a retry policy for the idempotent methods and for nothing else."""
    names = [{"service": service, "method": method} for service, method in RETRYABLE_METHODS]
    return {"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]}


def channel_options(extra: Sequence[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """Keepalive, message limits and the retry config; `extra` options override ours by name."""
    options: dict[str, Any] = {
        # Ping an idle connection every 30 s (the server accepts pings every 10 s) so a NAT or
        # load balancer does not drop it silently and a dead peer is noticed within ~40 s.
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        # all_steps answers and PredictMany batches outgrow gRPC's 4 MB default quickly.
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.enable_retries": 1,
        "grpc.service_config": json.dumps(service_config()),
    }
    options.update(dict(extra or ()))
    return list(options.items())


@dataclass(frozen=True)
class ChannelConfig:
    """Everything needed to open a channel and authenticate its calls."""

    target: str = DEFAULT_TARGET
    timeout: float | None = 30.0
    token: str | None = None
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("mutual TLS needs both private_key and certificate_chain")

    @property
    def secure(self) -> bool:
        return self.root_certificates is not None or self.private_key is not None

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS with the given CA (system roots when None); mutual TLS when a key and chain are given."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return channel_options(self.options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Sent with every call: our receive limit, and the bearer token when there is one."""
        limit = dict(self.channel_options()).get("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)
        metadata: tuple[tuple[str, str], ...] = ((RECEIVE_LIMIT_METADATA, str(limit)),)
        if self.token is None:
            return metadata
        if not self.secure:
            log.debug("sending a bearer token over a plaintext channel to %s", self.target)
        return (*metadata, ("authorization", f"Bearer {self.token}"))


def routed(metadata: tuple[tuple[str, str], ...], session_id: str | None) -> tuple[tuple[str, str], ...]:
    """`metadata` with the routing key of a call about one session.

    A proxy in front of several replicas (nginx's `hash $http_x_session_id consistent`, Envoy's
    ring_hash) sends every call of a session to the replica that holds it. An id the server would
    refuse anyway gets no header (metadata must be printable ASCII); the server then names the fault.
    """
    if session_id is None or ROUTABLE_ID.fullmatch(session_id) is None:
        return metadata
    return (*metadata, (ROUTING_METADATA, session_id))
