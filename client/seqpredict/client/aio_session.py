"""`AsyncSession`: the asyncio twin of `Session`, one server-side session over grpc.aio.

Made by `AsyncClient.session`; the bookkeeping it shares with `Session` is in `handle.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import grpc
from grpc import aio

from seqpredict.client.channel import routed
from seqpredict.client.errors import (
    NotFound,
    PositionMismatch,
    SeqpredictError,
    from_rpc_error,
)
from seqpredict.client.generation import AsyncGeneration
from seqpredict.client.handle import SessionHandle
from seqpredict.client.requests import (
    FeedInput,
    FeedRequest,
    GenerateOptions,
    Tokens,
    as_feed,
    generate_request,
    only,
    predict_request,
)
from seqpredict.client.retrying import CUT_OFF, RETRY_DELAYS_S, applied_before, may_resend
from seqpredict.client.session_ops import end_request, get_request
from seqpredict.client.types import ExportedSession, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb

if TYPE_CHECKING:
    from seqpredict.client.aio import AsyncClient

log = logging.getLogger(__name__)


class AsyncSession(SessionHandle):
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
        super().__init__(session_id, strict=strict, position=position, incarnation=incarnation)
        self.client = client
        self._metadata = routed(client._metadata, session_id)  # every call of it carries its routing key

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
        """See `Session.feed` (resends included)."""
        feed = FeedRequest(tokens_or_text, top_k, all_steps, reset, end, expected_position, expected_incarnation, score)
        await self._sync_position()
        guard = self._tracker.expected(expected_position, expected_incarnation, reset)
        req = predict_request(self.session_id, feed, guard)
        delays = RETRY_DELAYS_S if may_resend(feed, guard) else ()
        for attempt in range(len(delays) + 1):
            try:
                return self._result(await self._predict_one(req), feed)
            except CUT_OFF as exc:  # the call ended without its answer: its outcome is unknown
                if attempt == len(delays):
                    raise
                log.info("session %s: %s; sending the feed again", self.session_id, exc.message)
                await asyncio.sleep(delays[attempt])
            except PositionMismatch as exc:
                if attempt == 0 or not applied_before(exc, feed, guard):
                    raise
                position, incarnation = self._lost_answer(feed, exc)
                return await self.feed(
                    (), top_k=feed.top_k, expected_position=position, expected_incarnation=incarnation
                )
        raise AssertionError("unreachable")

    async def _predict_one(self, req: pb.PredictRequest) -> pb.PredictResponse:
        call = self.client._stub.Predict(iter([req]), timeout=self.client.timeout, metadata=self._metadata)
        try:
            return only([resp async for resp in call])
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.session_id) from exc

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

        call = self.client._stub.Predict(requests(), timeout=timeout, metadata=self._metadata)
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
            return self.client._stub.Generate(req, timeout=timeout, metadata=self._metadata)

        return AsyncGeneration(self.session_id, self._tracker, opts.end, start, self._after_cancel)

    async def generate_text(self, max_tokens: int, **options: Any) -> str:
        """The whole generated text of `generate(max_tokens, **options)`."""
        return "".join([token.text async for token in self.generate(max_tokens, **options)])

    async def info(self) -> SessionInfo:
        """The session's bookkeeping; NotFound when it does not exist."""
        msg = await self.client._unary(self.client._stub.GetSession, get_request(self.session_id), self.session_id)
        return self._seen(SessionInfo.from_pb(msg))

    async def refresh(self) -> int:
        """Re-read the position from the server (0 when the session does not exist) and return it."""
        try:
            return (await self.info()).position
        except NotFound:
            return self._gone()

    async def fork(self, target: str, *, replace: bool = False) -> AsyncSession:
        """See `Session.fork`."""
        await self._sync_position()
        position, incarnation = self._state_guard()
        info = await self.client.fork_session(
            self.session_id, target, replace=replace, expected_position=position, expected_incarnation=incarnation
        )
        return AsyncSession(
            self.client, target, strict=self.strict, position=info.position, incarnation=info.incarnation
        )

    async def export(self) -> ExportedSession:
        """See `Session.export`."""
        await self._sync_position()
        position, incarnation = self._state_guard()
        return self._exported(
            await self.client.export_session(
                self.session_id, expected_position=position, expected_incarnation=incarnation
            )
        )

    async def end(self) -> int:
        """Release the session on the server and return its final position; NotFound when it does not exist."""
        request = end_request(self.session_id)
        return self._ended(await self.client._unary(self.client._stub.EndSession, request, self.session_id))

    # -- internals ------------------------------------------------------------------------------
    async def _sync_position(self) -> None:
        if self._tracker.needs_refresh:
            await self.refresh()

    async def _after_cancel(self) -> None:
        """See `Session._after_cancel`: GetSession answers after the cancelled generation stopped."""
        self._tracker.lost_track()
        try:
            await self.refresh()
        except SeqpredictError as exc:
            log.warning("session %s: position unknown after cancelling a generation: %s", self.session_id, exc)
