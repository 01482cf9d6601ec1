"""What the client hands back: frozen dataclasses of our own, so protobuf stops at the boundary.

Every type has a `from_pb` constructor; nothing outside this module and `requests.py`
touches generated protobuf classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from seqpredict.v1 import seqpredict_pb2 as pb

_FINISH_REASONS = {pb.FINISH_REASON_MAX_TOKENS: "max_tokens", pb.FINISH_REASON_STOP: "stop"}


@dataclass(frozen=True, slots=True)
class TokenProbability:
    """One candidate next token."""

    id: int
    text: str
    probability: float
    log_probability: float

    @classmethod
    def from_pb(cls, msg: pb.TokenProbability) -> TokenProbability:
        return cls(msg.id, msg.text, msg.probability, msg.log_probability)


TopK = tuple[TokenProbability, ...]


def _top(messages: Any) -> TopK:
    return tuple(TokenProbability.from_pb(m) for m in messages)


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer to one feed: the session's position and its most probable next tokens."""

    session_id: str
    position: int
    # True when this request created the session: a client that expected state learns it was lost.
    created: bool
    next: TopK
    # With all_steps: the top-k after every input token (the last equals `next`); otherwise None.
    steps: tuple[TopK, ...] | None
    ended: bool
    request_id: int
    # Which history of the session this is: changes when it is reset or created again.
    incarnation: int = 0
    # With score=True: each input token's log-probability under the state before it, and their sum.
    token_log_probs: tuple[float, ...] | None = None
    log_prob_sum: float | None = None

    @property
    def perplexity(self) -> float | None:
        """exp(-mean log-probability) of the scored input (None without score or input)."""
        if not self.token_log_probs or self.log_prob_sum is None:
            return None
        return math.exp(-self.log_prob_sum / len(self.token_log_probs))

    @property
    def top(self) -> TokenProbability:
        """The most probable next token."""
        return self.next[0]

    @classmethod
    def from_pb(cls, msg: pb.PredictResponse, *, all_steps: bool = False, score: bool = False) -> Prediction:
        # `steps` is empty both without all_steps and for an empty input: the request tells them apart.
        steps = tuple(_top(step.top) for step in msg.steps) if all_steps else None
        scores = tuple(msg.token_log_probs) if score else None
        return cls(
            msg.session_id,
            msg.position,
            msg.created,
            _top(msg.next),
            steps,
            msg.ended,
            msg.request_id,
            msg.incarnation,
            scores,
            msg.log_prob_sum if score else None,
        )


@dataclass(frozen=True, slots=True)
class GeneratedToken:
    """One sampled token; the last one of a generation says why it finished."""

    token: int
    text: str
    # The session's position after this token was fed.
    position: int
    created: bool
    finish_reason: str | None  # None while more tokens follow, then "max_tokens" or "stop"
    stop: str | None  # the stop string that matched, with finish_reason "stop"
    # Probability under the model before temperature and filtering.
    probability: float
    incarnation: int = 0
    log_probability: float = 0.0  # natural log of `probability`

    @classmethod
    def from_pb(cls, msg: pb.GenerateResponse) -> GeneratedToken:
        return cls(
            token=msg.token,
            text=msg.text,
            position=msg.position,
            created=msg.created,
            finish_reason=_FINISH_REASONS.get(msg.finish_reason),
            stop=msg.stop or None,
            probability=msg.probability,
            incarnation=msg.incarnation,
            log_probability=msg.log_probability,
        )


@dataclass(frozen=True, slots=True)
class ExportedSession:
    """A session's whole state: `blob` is opaque bytes to keep and give back to `import_session`
    (on this server or another serving the same model); `info` is the session as exported."""

    blob: bytes
    info: SessionInfo

    @classmethod
    def from_pb(cls, msg: pb.ExportSessionResponse) -> ExportedSession:
        return cls(msg.blob, SessionInfo.from_pb(msg.session))


def _datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session's bookkeeping on the server; times are timezone-aware (UTC)."""

    session_id: str
    position: int
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    incarnation: int = 0

    @classmethod
    def from_pb(cls, msg: pb.SessionInfo) -> SessionInfo:
        return cls(
            msg.session_id,
            msg.position,
            _datetime(msg.created_at),
            _datetime(msg.last_used_at),
            _datetime(msg.expires_at),
            msg.incarnation,
        )


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Limits the server enforces, so a client can split its work before it is refused."""

    max_tokens_per_request: int
    max_generate_tokens: int
    max_sessions: int
    idle_ttl_seconds: float
    max_message_bytes: int
    max_answer_bytes: int = 0
    stream_window_requests: int = 0
    stream_window_bytes: int = 0

    @classmethod
    def from_pb(cls, msg: pb.ServerLimits) -> ServerLimits:
        return cls(
            msg.max_tokens_per_request,
            msg.max_generate_tokens,
            msg.max_sessions,
            msg.idle_ttl_seconds,
            msg.max_message_bytes,
            msg.max_answer_bytes,
            msg.stream_window_requests,
            msg.stream_window_bytes,
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The loaded model: enough to know exactly which weights answer and how to talk to them."""

    name: str
    fingerprint: str  # sha256 of the checkpoint file
    cell: str  # "lstm" or "gru"
    vocab_size: int
    embed_dim: int
    hidden_size: int
    num_layers: int
    state_names: tuple[str, ...]
    vocabulary: tuple[str, ...]  # token id i is vocabulary[i]
    training_record: dict[str, Any]
    state_bytes_per_session: int
    limits: ServerLimits

    @classmethod
    def from_pb(cls, msg: pb.ModelInfo) -> ModelInfo:
        arch = msg.architecture
        record = json.loads(msg.training_record_json) if msg.training_record_json else {}
        return cls(
            name=msg.name,
            fingerprint=msg.fingerprint,
            cell=arch.cell,
            vocab_size=arch.vocab_size,
            embed_dim=arch.embed_dim,
            hidden_size=arch.hidden_size,
            num_layers=arch.num_layers,
            state_names=tuple(arch.state_names),
            vocabulary=tuple(msg.vocabulary),
            training_record=record,
            state_bytes_per_session=msg.state_bytes_per_session,
            limits=ServerLimits.from_pb(msg.limits),
        )
