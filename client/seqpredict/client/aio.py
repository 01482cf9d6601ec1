"""The asyncio client (grpc.aio): `AsyncClient` and `AsyncSession` mirror `Client` and `Session`.

    async with AsyncClient("127.0.0.1:50051") as client:
        chat = client.session("alice", strict=True)
        print((await chat.feed("To be, or not to be")).top.text)
        async with chat.generate(40, seed=1) as tokens:
            async for token in tokens:
                print(token.text, end="")

Create the client inside the event loop that uses it: a grpc.aio channel belongs to one loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, Literal, overload

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.client.channel import DEFAULT_TARGET, ChannelConfig
from seqpredict.client.errors import NotFound, SeqpredictError, from_rpc_error
from seqpredict.client.generation import AsyncGeneration
from seqpredict.client.requests import (
    FeedInput,
    FeedRequest,
    GenerateOptions,
    Tokens,
    answer,
    answers,
    as_feed,
    export_request,
    fork_request,
    generate_request,
    many_request,
    only,
    predict_request,
)
from seqpredict.client.tracking import PositionTracker
from seqpredict.client.types import ExportedSession, ModelInfo, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


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
        req = pb.ImportSessionRequest(session_id=session_id or "", blob=blob, force=force)
        return SessionInfo.from_pb(await self._unary(self._stub.ImportSession, req, session_id))

    async def list_sessions(self, prefix: str = "", *, page_size: int = 0) -> AsyncIterator[SessionInfo]:
        """See `Client.list_sessions`."""
        token = ""
        while True:
            req = pb.ListSessionsRequest(prefix=prefix, page_size=page_size, page_token=token)
            page = await self._unary(self._stub.ListSessions, req)
            for s in page.sessions:
                yield SessionInfo.from_pb(s)
            token = page.next_page_token
            if not token:
                return

    async def _unary(self, method: Any, request: Any, session_id: str | None = None) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id) from exc


class AsyncSession:
    """One named session on the server; `position` follows every answer (None while unknown)."""

    def __init__(
        self,
        client: AsyncClient,
        session_id: str,
        *,
        strict: bool = False,
        position: int | None = None,
        incarnation: int | None = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self._tracker = PositionTracker(strict, position, incarnation)

    @property
    def strict(self) -> bool:
        return self._tracker.strict

    @property
    def position(self) -> int | None:
        """Tokens the session has consumed, as of the last answer; 0 after it was ended."""
        return self._tracker.position

    @position.setter
    def position(self, value: int | None) -> None:
        self._tracker.position = value

    @property
    def incarnation(self) -> int | None:
        """Which history of the session the client is on (0: it does not exist); None while unknown."""
        return self._tracker.incarnation

    @incarnation.setter
    def incarnation(self, value: int | None) -> None:
        self._tracker.incarnation = value

    def __repr__(self) -> str:
        return f"AsyncSession({self.session_id!r}, position={self.position}, strict={self.strict})"

    async def feed(
        self,
        tokens_or_text: Tokens = (),
        *,
        top_k: int | None = None,
        all_steps: bool = False,
        reset: bool = False,
        end: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
        score: bool = False,
    ) -> Prediction:
        """See `Session.feed`."""
        feed = FeedRequest(tokens_or_text, top_k, all_steps, reset, end, expected_position, expected_incarnation, score)
        await self._sync_position()
        req = predict_request(
            self.session_id, feed, self._tracker.expected(expected_position, expected_incarnation, reset)
        )
        call = self.client._stub.Predict(iter([req]), timeout=self.client.timeout, metadata=self.client._metadata)
        try:
            responses = [resp async for resp in call]
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.session_id) from exc
        outcome = self._outcome(only(responses), feed)
        if isinstance(outcome, SeqpredictError):
            raise outcome
        return outcome

    @overload
    def stream(
        self,
        inputs: Iterable[FeedInput] | AsyncIterable[FeedInput],
        *,
        timeout: float | None = ...,
        return_errors: Literal[False] = ...,
    ) -> AsyncIterator[Prediction]: ...

    @overload
    def stream(
        self,
        inputs: Iterable[FeedInput] | AsyncIterable[FeedInput],
        *,
        timeout: float | None = ...,
        return_errors: Literal[True],
    ) -> AsyncIterator[Prediction | SeqpredictError]: ...

    async def stream(
        self,
        inputs: Iterable[FeedInput] | AsyncIterable[FeedInput],
        *,
        timeout: float | None = None,
        return_errors: bool = False,
    ) -> AsyncIterator[Prediction | SeqpredictError]:
        """See `Session.stream`; `inputs` may also be an async iterable."""
        await self._sync_position()
        plan = self._tracker.planner()
        sent: deque[FeedRequest] = deque()
        failure: list[BaseException] = []

        def request(i: int, item: FeedInput) -> pb.PredictRequest:
            feed = as_feed(item)
            req = predict_request(self.session_id, feed, plan(feed), request_id=i)
            sent.append(feed)
            return req

        async def requests() -> AsyncIterator[pb.PredictRequest]:
            try:
                if isinstance(inputs, AsyncIterable):
                    i = 0
                    async for item in inputs:
                        yield request(i, item)
                        i += 1
                else:
                    for i, item in enumerate(inputs):
                        yield request(i, item)
            except Exception as exc:  # grpc would only log it: hand it to the reading side instead
                failure.append(exc)
                raise

        call = self.client._stub.Predict(requests(), timeout=timeout, metadata=self.client._metadata)
        finished = False
        try:
            async for resp in call:
                outcome = self._outcome(resp, sent.popleft())
                if isinstance(outcome, SeqpredictError) and not return_errors:
                    raise outcome
                yield outcome
            finished = True
        except grpc.RpcError as exc:
            finished = True
            if failure:
                raise failure[0] from exc
            raise from_rpc_error(exc, self.session_id) from exc
        finally:
            if not finished:
                call.cancel()

    def generate(
        self,
        max_tokens: int,
        *,
        prompt: Tokens | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        reset: bool = False,
        end: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
        timeout: float | None = None,
    ) -> AsyncGeneration:
        """See `Session.generate`. Iterate with `async for`; leave early with `aclose()` or `async with`."""
        opts = GenerateOptions(
            max_tokens,
            prompt,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            reset,
            end,
            expected_position,
            expected_incarnation,
        )

        async def start() -> aio.UnaryStreamCall:
            await self._sync_position()
            guard = self._tracker.expected(opts.expected_position, opts.expected_incarnation, opts.reset)
            req = generate_request(self.session_id, opts, guard)
            return self.client._stub.Generate(req, timeout=timeout, metadata=self.client._metadata)

        return AsyncGeneration(self.session_id, self._tracker, opts.end, start, self._after_cancel)

    async def generate_text(self, max_tokens: int, **options: Any) -> str:
        """The whole generated text of `generate(max_tokens, **options)`."""
        return "".join([token.text async for token in self.generate(max_tokens, **options)])

    async def info(self) -> SessionInfo:
        """The session's bookkeeping; NotFound when it does not exist."""
        request = pb.GetSessionRequest(session_id=self.session_id)
        info = SessionInfo.from_pb(await self.client._unary(self.client._stub.GetSession, request, self.session_id))
        self._tracker.observe(info.position, info.incarnation, ended=False)
        return info

    async def refresh(self) -> int:
        """Re-read the position from the server (0 when the session does not exist) and return it."""
        try:
            return (await self.info()).position
        except NotFound:
            self._tracker.observe(0, 0, ended=True)
            return 0

    async def fork(self, target: str, *, replace: bool = False) -> AsyncSession:
        """See `Session.fork`."""
        await self._sync_position()
        guard = self._tracker.expected(None, None, reset=False)
        info = await self.client.fork_session(
            self.session_id, target, replace=replace, expected_position=guard[0], expected_incarnation=guard[1]
        )
        return AsyncSession(
            self.client, target, strict=self.strict, position=info.position, incarnation=info.incarnation
        )

    async def export(self) -> ExportedSession:
        """See `Session.export`."""
        await self._sync_position()
        position, incarnation = self._tracker.expected(None, None, reset=False)
        exported = await self.client.export_session(
            self.session_id, expected_position=position, expected_incarnation=incarnation
        )
        self._tracker.observe(exported.info.position, exported.info.incarnation, ended=False)
        return exported

    async def end(self) -> int:
        """Release the session on the server and return its final position; NotFound when it does not exist."""
        request = pb.EndSessionRequest(session_id=self.session_id)
        msg = await self.client._unary(self.client._stub.EndSession, request, self.session_id)
        self._tracker.observe(msg.position, msg.incarnation, ended=True)
        return msg.position

    # -- internals ------------------------------------------------------------------------------
    async def _sync_position(self) -> None:
        if self._tracker.needs_refresh:
            await self.refresh()

    def _outcome(self, resp: pb.PredictResponse, feed: FeedRequest) -> Prediction | SeqpredictError:
        outcome = answer(resp, feed)
        if isinstance(outcome, Prediction):
            self._tracker.observe(outcome.position, outcome.incarnation, outcome.ended)
        return outcome

    async def _after_cancel(self) -> None:
        """See `Session._after_cancel`: GetSession answers after the cancelled generation stopped."""
        self._tracker.lost_track()
        try:
            await self.refresh()
        except SeqpredictError as exc:
            log.warning("session %s: position unknown after cancelling a generation: %s", self.session_id, exc)
