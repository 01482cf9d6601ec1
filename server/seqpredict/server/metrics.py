"""Every Prometheus collector of the server, in one place, on an injected registry.

Names follow Prometheus conventions (base units, `_total` counters) and the grpc-ecosystem
names for the RPC-level series. Labels are bounded: RPC names, status codes, reasons —
never a session id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from seqpredict.server.errors import RequestFailed, code_name
from seqpredict.server.fasthist import SingleWriterHistogram

# Seconds: from a 100 µs engine step to a multi-second stream.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Sessions in one engine batch; powers of two up to the largest sensible max batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")

# Reasons a session ends; a closed set so dashboards and alerts can rely on it. "error": dropped
# because a failed engine batch may have left its state half-updated. "replaced": overwritten by
# ForkSession or ImportSession. "stale": dropped by a replica because the shared store holds a
# newer state of it (another replica moved it on), or a commit of it could not be confirmed.
END_REASONS = ("end", "ttl", "capacity", "shutdown", "error", "replaced", "stale")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds: what an operator checks first.
        ProcessCollector(registry=r)
        # grpc-ecosystem (go-grpc-prometheus) names, filled by the asyncio interceptor.
        self.grpc_started = Counter("grpc_server_started", "RPCs started on the server.", RPC_LABELS, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*RPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end (a stream's whole lifetime).",
            RPC_LABELS,
            buckets=(*LATENCY_BUCKETS, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received", "Stream messages received from clients.", RPC_LABELS, registry=r
        )
        self.grpc_msg_sent = Counter("grpc_server_msg_sent", "Stream messages sent to clients.", RPC_LABELS, registry=r)

        # Work.
        self.tokens_consumed = Counter(
            "seqpredict_tokens_consumed",
            "Input tokens fed to sessions (Predict inputs and Generate prompts).",
            registry=r,
        )
        self.tokens_generated = Counter(
            "seqpredict_tokens_generated", "Tokens sampled by Generate (and fed to their sessions).", registry=r
        )
        self.requests = Counter(
            "seqpredict_requests", "Session requests answered, by kind and outcome code.", ("kind", "code"), registry=r
        )
        self.request_latency = SingleWriterHistogram(
            "seqpredict_request_latency_seconds",
            "Per-step latency: a Predict request from receipt to answer, or one Generate token from the previous one.",
            ("kind",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = SingleWriterHistogram(
            "seqpredict_queue_wait_seconds",
            "Time a request waited in the scheduler before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = SingleWriterHistogram(
            "seqpredict_batch_seconds",
            "Engine time to run one batch (gather, model, scatter, top-k).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = SingleWriterHistogram(
            "seqpredict_batch_size", "Sessions stepped together in one engine batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = SingleWriterHistogram(
            "seqpredict_batch_tokens", "Tokens processed in one engine batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("seqpredict_queue_depth", "Requests waiting in the scheduler.", registry=r)
        self.rejected = Counter("seqpredict_rejected", "Requests refused by a limit, by limit.", ("limit",), registry=r)

        # Sessions and state.
        self.sessions_active = Gauge("seqpredict_sessions_active", "Sessions holding state.", registry=r)
        self.sessions_limit = Gauge("seqpredict_sessions_limit", "Configured maximum number of sessions.", registry=r)
        self.sessions_created = Counter("seqpredict_sessions_created", "Sessions created.", registry=r)
        self.sessions_ended = Counter(
            "seqpredict_sessions_ended",
            "Sessions released here, by reason (end, ttl, capacity, shutdown, error, replaced, stale).",
            ("reason",),
            registry=r,
        )
        for reason in END_REASONS:
            self.sessions_ended.labels(reason)
        self.pool_bytes = Gauge("seqpredict_state_pool_bytes", "Bytes allocated for recurrent state.", registry=r)
        self.pool_slots = Gauge("seqpredict_state_pool_slots", "Session slots allocated in the state pool.", registry=r)
        self.streams_active = Gauge("seqpredict_streams_active", "Open Predict/Generate streams.", registry=r)
        self.calls_active = Gauge(
            "seqpredict_calls_active",
            "RPCs in progress that count against --max-streams (every call but health checks).",
            registry=r,
        )
        self.stream_pauses = Counter(
            "seqpredict_stream_pauses",
            "Times a Predict stream's window filled and the server stopped reading it (flow control).",
            registry=r,
        )
        self.streams_paused = Gauge(
            "seqpredict_streams_paused",
            "Predict streams whose window is full: not read until their client reads answers.",
            registry=r,
        )

        # Snapshots.
        self.snapshot_seconds = Histogram(
            "seqpredict_snapshot_seconds",
            "Time to write a session snapshot.",
            buckets=(*LATENCY_BUCKETS, 10.0, 30.0),
            registry=r,
        )
        self.snapshot_sessions = Gauge(
            "seqpredict_snapshot_sessions", "Sessions in the last snapshot written.", registry=r
        )
        self.snapshot_failures = Counter("seqpredict_snapshot_failures", "Snapshots that failed to write.", registry=r)

        # The shared session store (--state-store).
        self.state_store_up = Gauge(
            "seqpredict_state_store_up",
            "1 while the session store answers (or none is configured), 0 during an outage.",
            registry=r,
        )
        self.state_store_up.set(1)
        self.store_seconds = Histogram(
            "seqpredict_state_store_seconds",
            "One round trip to the session store: loading a batch's sessions, or committing them.",
            ("op",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_sessions = Counter(
            "seqpredict_state_store_sessions",
            "Sessions loaded from the store (taken over) and committed to it.",
            ("event",),
            registry=r,
        )
        self.store_conflicts = Counter(
            "seqpredict_state_store_conflicts",
            "Commits and checks refused because another replica had moved the session on.",
            registry=r,
        )

        self.model = Info("seqpredict_model", "The loaded model.", registry=r)
        self.ready = Gauge(
            "seqpredict_ready", "1 when the server is SERVING, 0 while starting, draining or unhealthy.", registry=r
        )
        self.engine_heartbeat_age = Gauge(
            "seqpredict_engine_heartbeat_age_seconds",
            "Seconds since the inference thread last showed it was alive (a batch, or its idle tick).",
            registry=r,
        )

    def count_failure(self, kind: str, error: RequestFailed) -> None:
        """One refused request: by kind and code, and by limit when a limit refused it."""
        self.requests.labels(kind, code_name(error.code)).inc()
        if error.limit:
            self.rejected.labels(error.limit).inc()
