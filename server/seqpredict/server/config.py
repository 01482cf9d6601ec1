"""The server's settings: one frozen object, filled from flags and SEQPREDICT_* variables.

This module is the only reader of the environment. Precedence: flag > environment >
default. Every value is checked here, so a bad setting stops the server at start-up with
a message naming the setting, never later with a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from seqpredict.client.version import version_line

ENV_PREFIX = "SEQPREDICT_"
SECRETS = frozenset({"auth_tokens"})
STORE_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def redacted_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def default_checkpoint() -> str:
    """The checkpoint shipped inside the package."""
    return str(resources.files("seqpredict.models") / "shipped" / "shakespeare-lstm.pt")


def _meta(help: str, **kw: Any) -> dict[str, Any]:
    return {"help": help, **kw}


@dataclass(frozen=True)
class Settings:
    # Where to listen. Loopback by default: exposing the service is a deliberate choice.
    host: str = dataclasses.field(default="127.0.0.1", metadata=_meta("gRPC listen address"))
    port: int = dataclasses.field(default=50051, metadata=_meta("gRPC port (0: pick a free one)"))
    metrics_host: str = dataclasses.field(default="127.0.0.1", metadata=_meta("metrics HTTP listen address"))
    metrics_port: int = dataclasses.field(default=9095, metadata=_meta("metrics HTTP port (0: pick a free one)"))
    checkpoint: str = dataclasses.field(default_factory=default_checkpoint, metadata=_meta("checkpoint file to serve"))

    # Processes: the engine (model, sessions) in its own process, gRPC in `frontends` processes in
    # front of it; 0 runs everything in one process. Two measured best on two cores from 64 sessions
    # up (bench/RESULTS.md); connection and stream limits apply per frontend, like nginx's per worker.
    frontends: int = dataclasses.field(
        default=2,
        metadata=_meta("gRPC frontend processes in front of the engine process (0: one process for everything)"),
    )

    # Batching. 256 sessions per batch amortises the per-batch cost; 0 delay never waits.
    max_batch_size: int = dataclasses.field(default=256, metadata=_meta("sessions per engine batch (1: no batching)"))
    max_batch_tokens: int = dataclasses.field(default=2048, metadata=_meta("tokens per engine batch"))
    prefill_chunk: int = dataclasses.field(default=512, metadata=_meta("longest piece of one request per batch"))
    max_delay_ms: float = dataclasses.field(
        default=0.0, metadata=_meta("when new work arrives, wait up to this long for a fuller batch")
    )
    torch_threads: int = dataclasses.field(
        default=1, metadata=_meta("torch threads; 1 is fastest when other processes share the cores")
    )
    onednn_cache_capacity: int = dataclasses.field(
        default=64,
        metadata=_meta("oneDNN primitive cache entries (one per prefill shape; the default 1024 grew RSS by 250 MB)"),
    )
    state_dtype: str = dataclasses.field(
        default="float32", metadata=_meta("storage of idle session state: float32, bfloat16 or float16")
    )

    # Sessions.
    max_sessions: int = dataclasses.field(default=100_000, metadata=_meta("sessions held at once"))
    session_policy: str = dataclasses.field(
        default="evict", metadata=_meta("at the session limit: evict (least recently used) or reject")
    )
    idle_ttl_s: float = dataclasses.field(default=3600.0, metadata=_meta("seconds before an idle session expires"))

    # Limits on requests.
    max_tokens_per_request: int = dataclasses.field(default=8192, metadata=_meta("tokens in one request"))
    max_generate_tokens: int = dataclasses.field(default=4096, metadata=_meta("tokens one Generate may produce"))
    max_message_bytes: int = dataclasses.field(default=4 * 1024 * 1024, metadata=_meta("largest request message"))
    max_streams: int = dataclasses.field(
        default=4096, metadata=_meta("concurrent RPCs before RESOURCE_EXHAUSTED, per frontend process")
    )
    max_answer_bytes: int = dataclasses.field(
        default=64 * 1024 * 1024,
        metadata=_meta("largest answer sent, to clients that declare a receive limit at least this large"),
    )

    # Flow control: what one Predict stream may hold before the server stops reading it.
    stream_window: int = dataclasses.field(
        default=1024, metadata=_meta("requests one stream may have in flight or unsent before reading pauses")
    )
    stream_window_bytes: int = dataclasses.field(
        default=8 * 1024 * 1024, metadata=_meta("answer bytes one stream may have in flight or unsent (upper bound)")
    )

    # Connections: bounded, so idle or half-open ones cannot use up file descriptors.
    max_connections: int = dataclasses.field(
        default=1024, metadata=_meta("open gRPC connections per frontend process; more are refused until some close")
    )
    max_connection_idle_s: float = dataclasses.field(
        default=300.0, metadata=_meta("close a connection with no calls after this long (0: never)")
    )
    max_connection_age_s: float = dataclasses.field(
        default=0.0, metadata=_meta("ask clients to reconnect after this long, letting calls finish (0: never)")
    )

    # The inference thread's watchdog.
    engine_stall_s: float = dataclasses.field(
        default=30.0, metadata=_meta("NOT_SERVING while the inference thread shows no sign of life for this long")
    )

    # Shutdown and restarts.
    grace_s: float = dataclasses.field(
        default=30.0, metadata=_meta("on SIGTERM/SIGINT, seconds in-flight calls get to finish")
    )
    snapshot_path: str = dataclasses.field(
        default="", metadata=_meta("file for session snapshots: written on drain, restored at start ('' = off)")
    )
    snapshot_interval_s: float = dataclasses.field(
        default=60.0, metadata=_meta("with snapshot_path, also snapshot this often (0: only on drain)")
    )

    # Many replicas, one session space: sessions' state in Redis, shared by every replica.
    state_store: str = dataclasses.field(
        default="",
        metadata=_meta(
            "shared session store: redis://[:password@]host:port/db, rediss:// (TLS), redis+cluster:// or"
            " rediss+cluster:// (Redis Cluster); ?prefix=name keeps deployments apart ('' = off)"
        ),
    )
    durability: str = dataclasses.field(
        default="",
        metadata=_meta(
            "with state_store: sync (an answer leaves only once the state it came from is committed) or async"
            " (commit every commit_interval_ms and at drain; a crash may lose the last interval) (default: sync)"
        ),
    )
    commit_interval_ms: float = dataclasses.field(
        default=200.0, metadata=_meta("durability async: how often changed sessions are committed")
    )
    state_store_timeout_ms: float = dataclasses.field(
        default=1000.0, metadata=_meta("longest wait for the session store before it counts as unreachable")
    )

    # Security. Tokens are secrets: never printed.
    tls_cert: str = dataclasses.field(default="", metadata=_meta("PEM server certificate chain (enables TLS)"))
    tls_key: str = dataclasses.field(default="", metadata=_meta("PEM private key of tls_cert"))
    tls_client_ca: str = dataclasses.field(
        default="", metadata=_meta("PEM CA bundle: require client certificates signed by it (mutual TLS)")
    )
    # None: not set. Set to anything, they ask for auth: one that yields no token is a start-up
    # error, never a server that silently accepts everyone.
    auth_tokens: str | None = dataclasses.field(
        default=None, metadata=_meta("comma-separated bearer tokens accepted in `authorization` (enables auth)")
    )
    auth_tokens_file: str | None = dataclasses.field(
        default=None, metadata=_meta("file of bearer tokens, one per line, # comments (enables auth)")
    )

    reflection: bool = dataclasses.field(default=True, metadata=_meta("serve gRPC server reflection"))
    log_level: str = dataclasses.field(default="INFO", metadata=_meta("DEBUG, INFO, WARNING or ERROR"))

    def __post_init__(self) -> None:
        positive = (
            "max_batch_size",
            "max_batch_tokens",
            "prefill_chunk",
            "torch_threads",
            "max_sessions",
            "max_tokens_per_request",
            "max_generate_tokens",
            "max_message_bytes",
            "max_streams",
            "max_answer_bytes",
            "stream_window",
            "stream_window_bytes",
            "max_connections",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        # NaN passes every comparison below (nan < 0 is False): refuse it, and infinities, by name.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be a port number 0-65535, got {getattr(self, name)}")
        if self.frontends < 0:
            raise ValueError(f"frontends must be >= 0, got {self.frontends}")
        if self.onednn_cache_capacity < 0:
            raise ValueError(f"onednn_cache_capacity must be >= 0, got {self.onednn_cache_capacity}")
        for name in ("max_delay_ms", "grace_s", "snapshot_interval_s", "max_connection_idle_s", "max_connection_age_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("idle_ttl_s", "engine_stall_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.state_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"state_dtype must be float32, bfloat16 or float16, got {self.state_dtype!r}")
        if self.session_policy not in ("evict", "reject"):
            raise ValueError(f"session_policy must be 'evict' or 'reject', got {self.session_policy!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if not Path(self.checkpoint).is_file():
            raise ValueError(f"checkpoint {self.checkpoint} does not exist or is not a file")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise ValueError(f"{name} {value} does not exist or is not a file")
        if self.auth_tokens_file is not None and not Path(self.auth_tokens_file).is_file():
            raise ValueError(f"auth_tokens_file {self.auth_tokens_file!r} does not exist or is not a file")
        if self.auth_tokens is not None and not self.bearer_tokens():
            raise ValueError("auth_tokens is set but holds no token: give tokens, or unset it to run without auth")
        if self.auth_tokens_file is not None and not self.bearer_tokens():
            raise ValueError(
                f"auth_tokens_file {self.auth_tokens_file} holds no token (only blank lines or # comments):"
                " add tokens, or unset it to run without auth"
            )
        if self.snapshot_path:
            snapshot = Path(self.snapshot_path)
            if snapshot.is_dir():
                raise ValueError(f"snapshot_path {self.snapshot_path} is a directory; give a file path")
            if snapshot.exists() and snapshot.resolve() == Path(self.checkpoint).resolve():
                raise ValueError(f"snapshot_path {self.snapshot_path} is the checkpoint: snapshots would overwrite it")

        self._check_state_store()

    def _check_state_store(self) -> None:
        if self.durability not in ("", "off", "async", "sync"):
            raise ValueError(f"durability must be sync, async or off, got {self.durability!r}")
        for name in ("commit_interval_ms", "state_store_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.state_store:
            if self.durability in ("async", "sync"):
                raise ValueError(f"durability {self.durability} needs state_store (the Redis to commit sessions to)")
            return
        if self.durability == "off":
            raise ValueError("state_store is set but durability is off: sessions would never reach the store")
        if self.snapshot_path:
            raise ValueError(
                "snapshot_path and state_store are both set: with a state store, sessions live in the store"
                " (a local snapshot would restore stale copies next to it); unset one"
            )
        parts = urlsplit(self.state_store)
        if parts.scheme not in STORE_SCHEMES:
            raise ValueError(
                f"state_store {redacted_url(self.state_store)!r}: the scheme must be one of {', '.join(STORE_SCHEMES)}"
            )
        if not parts.hostname:
            raise ValueError(f"state_store {redacted_url(self.state_store)!r} names no host")
        if "ssl_cert_reqs=none" in parts.query.lower().replace("'", ""):
            raise ValueError(
                "state_store turns TLS certificate checks off (ssl_cert_reqs=none); give ssl_ca_certs=<file> instead"
            )

    @property
    def durability_mode(self) -> str:
        """off, async or sync: what the server does, defaults applied."""
        if not self.state_store:
            return "off"
        return self.durability or "sync"

    def bearer_tokens(self) -> frozenset[str]:
        """Tokens from auth_tokens (comma-separated) and auth_tokens_file (one per line, # comments)."""
        found = {t.strip() for t in (self.auth_tokens or "").split(",") if t.strip()}
        if self.auth_tokens_file:
            for line in Path(self.auth_tokens_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.add(line)
        return frozenset(found)

    @property
    def auth_enabled(self) -> bool:
        return self.auth_tokens is not None or self.auth_tokens_file is not None

    def describe(self) -> str:
        """One line per setting, for the start-up log; secrets are shown only as set or not."""
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "state_store":
                lines.append(f"  {f.name} = {redacted_url(value)!r}")
            elif f.name in SECRETS:
                value = "<none>" if value is None else f"<{len([t for t in value.split(',') if t.strip()])} token(s)>"
                lines.append(f"  {f.name} = {value}")
            else:
                lines.append(f"  {f.name} = {value!r}")
        return "\n".join(lines)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Flags override SEQPREDICT_* variables, which override the defaults."""
        environ = os.environ if environ is None else environ
        parser = build_parser()
        args = parser.parse_args(argv)
        values: dict[str, Any] = {}
        for f in fields(cls):
            flag_value = getattr(args, f.name)
            if flag_value is not None:
                values[f.name] = flag_value
            elif ENV_PREFIX + f.name.upper() in environ:
                raw = environ[ENV_PREFIX + f.name.upper()]
                try:
                    values[f.name] = _convert(f, raw)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {_type_name(f)}") from None
        return cls(**values)


def _kind(f: dataclasses.Field) -> str:
    """The field's base type name: "int", "float", "bool" or "str" (optional strings are strings)."""
    return str(f.type).removesuffix(" | None")


def _type_name(f: dataclasses.Field) -> str:
    return {"int": "integer", "float": "number", "bool": "boolean (true/false)"}.get(_kind(f), "string")


def _convert(f: dataclasses.Field, raw: str) -> Any:
    kind = _kind(f)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpredict-server",
        description="Serve a stateful sequence model over gRPC. Every flag can also be set as "
        "SEQPREDICT_<NAME> (e.g. SEQPREDICT_MAX_SESSIONS=1000); flags win.",
    )
    parser.add_argument("--version", action="version", version=version_line("seqpredict-server", "seqpredict"))
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else "the shipped checkpoint"
        default = "unset" if default is None else default
        help_text = f"{f.metadata.get('help', '')} (default: {default}; env {ENV_PREFIX}{f.name.upper()})"
        if _kind(f) == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(_kind(f), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
    return parser
