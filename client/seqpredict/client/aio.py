"""The asyncio client (grpc.aio): `AsyncClient` mirrors `Client`, `AsyncSession` mirrors `Session`.

    async with AsyncClient("127.0.0.1:50051") as client:
        chat = client.session("alice", strict=True)
        print((await chat.feed("To be, or not to be")).top.text)
        async with chat.generate(40, seed=1) as tokens:
            async for token in tokens:
                print(token.text, end="")

Create the client inside the event loop that uses it: a grpc.aio channel belongs to one loop.
`AsyncSession` is in `seqpredict.client.aio_session`; this half never imports the sync one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.client.aio_session import AsyncSession
from seqpredict.client.channel import DEFAULT_TARGET, ChannelConfig, routed
from seqpredict.client.errors import SeqpredictError, from_rpc_error
from seqpredict.client.requests import FeedInput, answers, many_request, only
from seqpredict.client.session_ops import SessionPages, export_request, fork_request, import_request
from seqpredict.client.types import ExportedSession, ModelInfo, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "AsyncSession"]


class AsyncClient:
    """A grpc.aio connection to a seqpredict server; `await client.close()` (or `async with`) when done."""

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
            self._channel = aio.secure_channel(target, self.config.credentials(), opts)
        else:
            self._channel = aio.insecure_channel(target, opts)
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

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(
        self, session_id: str, *, strict: bool = False, position: int | None = None, incarnation: int | None = None
    ) -> AsyncSession:
        """A handle on a server-side session; see `Client.session` for `strict`, `position` and `incarnation`."""
        return AsyncSession(self, session_id, strict=strict, position=position, incarnation=incarnation)

    async def model_info(self) -> ModelInfo:
        """The served model: name, sha256 fingerprint, architecture, vocabulary, training record, limits."""
        return ModelInfo.from_pb(await self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest()))

    async def health(self, service: str = "") -> str:
        """The serving status of `service` ("" is the whole server): "SERVING", "NOT_SERVING", ..."""
        resp = await self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def predict_many(self, requests: Iterable[tuple[str, FeedInput]]) -> list[Prediction | SeqpredictError]:
        """See `Client.predict_many`: failed requests come back as exception objects in their place."""
        message, feeds = many_request(requests)
        call = self._stub.PredictMany(iter([message]), timeout=self.timeout, metadata=self._metadata)
        try:
            replies = [reply async for reply in call]
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return answers(only(replies), feeds)

    async def fork_session(
        self,
        source: str,
        target: str,
        *,
        replace: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
    ) -> SessionInfo:
        """See `Client.fork_session`."""
        req = fork_request(source, target, replace, (expected_position, expected_incarnation))
        return SessionInfo.from_pb(await self._unary(self._stub.ForkSession, req, source))

    async def export_session(
        self, session_id: str, *, expected_position: int | None = None, expected_incarnation: int | None = None
    ) -> ExportedSession:
        """See `Client.export_session`."""
        req = export_request(session_id, (expected_position, expected_incarnation))
        return ExportedSession.from_pb(await self._unary(self._stub.ExportSession, req, session_id))

    async def import_session(self, blob: bytes, session_id: str | None = None, *, force: bool = False) -> SessionInfo:
        """See `Client.import_session`."""
        req = import_request(blob, session_id, force)
        return SessionInfo.from_pb(await self._unary(self._stub.ImportSession, req, session_id))

    async def list_sessions(self, prefix: str = "", *, page_size: int = 0) -> AsyncIterator[SessionInfo]:
        """See `Client.list_sessions`."""
        pages = SessionPages(prefix, page_size)
        while not pages.done:
            for info in pages.read(await self._unary(self._stub.ListSessions, pages.request())):
                yield info

    async def _unary(self, method: Any, request: Any, session_id: str | None = None) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=routed(self._metadata, session_id))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id) from exc
