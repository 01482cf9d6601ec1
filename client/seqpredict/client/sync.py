"""The blocking client: `Client` owns one channel and makes the calls that are not one session's.

    with Client("127.0.0.1:50051") as client:
        chat = client.session("alice", strict=True)
        print(chat.feed("To be, or not to be").top.text)
        print(chat.generate_text(40, seed=1))

`Session` (in `seqpredict.client.sync_session`) wraps one server-side session. `AsyncClient` in
`seqpredict.client.aio` has the same surface for asyncio; this half never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.client.channel import DEFAULT_TARGET, ChannelConfig, routed
from seqpredict.client.errors import SeqpredictError, from_rpc_error
from seqpredict.client.requests import FeedInput, answers, many_request, only
from seqpredict.client.session_ops import SessionPages, export_request, fork_request, import_request
from seqpredict.client.sync_session import Session
from seqpredict.client.types import ExportedSession, ModelInfo, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

__all__ = ["Client", "Session"]


class Client:
    """A connection to a seqpredict server; thread-safe, cheap to share, close it when done."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.config = ChannelConfig(
            target, timeout, token, root_certificates, private_key, certificate_chain, tuple(options or ())
        )
        opts = self.config.channel_options()
        if self.config.secure:
            self._channel = grpc.secure_channel(target, self.config.credentials(), opts)
        else:
            self._channel = grpc.insecure_channel(target, opts)
        self._stub = pb_grpc.SequencePredictorStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = self.config.metadata()

    @property
    def target(self) -> str:
        return self.config.target

    @property
    def timeout(self) -> float | None:
        """Deadline of every unary call, in seconds."""
        return self.config.timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(
        self, session_id: str, *, strict: bool = False, position: int | None = None, incarnation: int | None = None
    ) -> Session:
        """A handle on a server-side session (created by its first feed; no call is made here).

        `strict`: every feed and generate carries the tracked position and incarnation as
        expected_position / expected_incarnation, so lost state (eviction, restart, reset, another
        writer) raises PositionMismatch instead of silently continuing on other state.
        `position` (and `incarnation`): where the session is known to be, e.g. 0 for one that
        must be new; unknown positions are fetched from the server first.
        """
        return Session(self, session_id, strict=strict, position=position, incarnation=incarnation)

    def model_info(self) -> ModelInfo:
        """The served model: name, sha256 fingerprint, architecture, vocabulary, training record, limits."""
        return ModelInfo.from_pb(self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest()))

    def health(self, service: str = "") -> str:
        """The serving status of `service` ("" is the whole server): "SERVING", "NOT_SERVING", ..."""
        resp = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def predict_many(self, requests: Iterable[tuple[str, FeedInput]]) -> list[Prediction | SeqpredictError]:
        """Feed many sessions in one message (a gateway's batch), answers in the same order.

        `requests` are (session_id, input) pairs, the input a str, token ids or a FeedRequest.
        A failed request comes back as its exception object in its place rather than raised:
        the other requests were applied, and raising would hide their results.
        """
        message, feeds = many_request(requests)
        call = self._stub.PredictMany(iter([message]), timeout=self.timeout, metadata=self._metadata)
        try:
            reply = only(list(call))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return answers(reply, feeds)

    def fork_session(
        self,
        source: str,
        target: str,
        *,
        replace: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
    ) -> SessionInfo:
        """Copy `source` (state and position, after all its earlier requests) to `target`, as a new
        incarnation; the source is unchanged. AlreadyExists when the target exists, unless `replace`;
        NotFound without a source; PositionMismatch when the guard differs; Aborted when the target
        to replace is in the middle of a request."""
        req = fork_request(source, target, replace, (expected_position, expected_incarnation))
        return SessionInfo.from_pb(self._unary(self._stub.ForkSession, req, source))

    def export_session(
        self, session_id: str, *, expected_position: int | None = None, expected_incarnation: int | None = None
    ) -> ExportedSession:
        """The session's whole state as a self-describing blob; the session is unchanged."""
        req = export_request(session_id, (expected_position, expected_incarnation))
        return ExportedSession.from_pb(self._unary(self._stub.ExportSession, req, session_id))

    def import_session(self, blob: bytes, session_id: str | None = None, *, force: bool = False) -> SessionInfo:
        """Install an exported state (under `session_id`, or the name it was exported under), with the
        position and incarnation it had. Over an existing session only when it is exactly that state,
        unless `force`: PositionMismatch when it moved on or is another history of it, or when the blob
        is another model's; InvalidArgument for a damaged blob."""
        req = import_request(blob, session_id, force)
        return SessionInfo.from_pb(self._unary(self._stub.ImportSession, req, session_id))

    def list_sessions(self, prefix: str = "", *, page_size: int = 0) -> Iterator[SessionInfo]:
        """Every session whose id starts with `prefix`, in name order, fetched a page at a time
        (`page_size` 1-1000; 0: the server's default, 100) as the iterator is read."""
        pages = SessionPages(prefix, page_size)
        while not pages.done:
            yield from pages.read(self._unary(self._stub.ListSessions, pages.request()))

    def _unary(self, method: Any, request: Any, session_id: str | None = None) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=routed(self._metadata, session_id))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id) from exc
