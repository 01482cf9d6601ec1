"""A running Generate call, sync and asyncio: an iterator of tokens that cancels the call when left early.

Cancelling matters twice over: the server stops spending steps on tokens nobody reads, and
since it may have fed a few tokens more than arrived, the session's position is re-read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from seqpredict.client.errors import from_rpc_error
from seqpredict.client.requests import GenerateOptions, generate_request
from seqpredict.client.types import GeneratedToken

if TYPE_CHECKING:
    from seqpredict.client.aio import AsyncSession
    from seqpredict.client.sync import Session


class Generation(Iterator[GeneratedToken]):
    """A running Generate call: an iterator of tokens that cancels the call when closed early.

    A generation dropped half-read without `close()` (a bare `break`) is cancelled when it is
    garbage collected; `position` is then unknown (None) until the next answer, and a strict
    session re-reads it before its next request.
    """

    def __init__(self, session: Session, opts: GenerateOptions, timeout: float | None) -> None:
        self._session = session
        self._opts = opts
        self._timeout = timeout
        self._call: Any = None  # the grpc response iterator, once started
        self._finished = False

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> GeneratedToken:
        if self._finished:
            raise StopIteration
        call = self._call if self._call is not None else self._start()
        try:
            resp = next(call)
        except StopIteration:
            self._finished = True
            raise
        except grpc.RpcError as exc:
            self._finished = True
            raise from_rpc_error(exc, self._session.session_id) from exc
        token = GeneratedToken.from_pb(resp)
        self._finished = token.finish_reason is not None
        self._session._tracker.observe(token.position, token.incarnation, ended=self._finished and self._opts.end)
        return token

    def _start(self) -> Any:
        session, opts = self._session, self._opts
        session._sync_position()
        req = generate_request(
            session.session_id,
            opts,
            session._tracker.expected(opts.expected_position, opts.expected_incarnation, opts.reset),
        )
        client = session.client
        self._call = client._stub.Generate(req, timeout=self._timeout, metadata=client._metadata)
        return self._call

    def close(self) -> None:
        """Stop early: cancel the call and learn where the server stopped."""
        if self._call is None or self._finished:
            self._finished = True
            return
        self._finished = True
        self._call.cancel()
        self._session._after_cancel()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._call is not None and not self._finished:
            self._session._tracker.lost_track()
            # Suppressed: at interpreter exit the channel or loop may be gone, and the call with it.
            with contextlib.suppress(Exception):
                self._call.cancel()


class AsyncGeneration(AsyncIterator[GeneratedToken]):
    """A running Generate call, started on the first `__anext__`.

    Async generators are only closed when the event loop gets round to it, so this is a class:
    `aclose()` (or leaving `async with`) cancels the call and re-reads the session's position;
    a generation dropped half-read (a bare `break`) is cancelled when it is garbage collected,
    and a strict session then re-reads its position before its next request.
    """

    def __init__(self, session: AsyncSession, opts: GenerateOptions, timeout: float | None) -> None:
        self._session = session
        self._opts = opts
        self._timeout = timeout
        self._call: aio.UnaryStreamCall | None = None
        self._finished = False

    def __aiter__(self) -> AsyncGeneration:
        return self

    async def __anext__(self) -> GeneratedToken:
        if self._finished:
            raise StopAsyncIteration
        call = self._call if self._call is not None else await self._start()
        try:
            resp = await call.read()
        except grpc.RpcError as exc:
            self._finished = True
            raise from_rpc_error(exc, self._session.session_id) from exc
        if resp is aio.EOF:
            self._finished = True
            raise StopAsyncIteration
        token = GeneratedToken.from_pb(resp)
        self._finished = token.finish_reason is not None
        self._session._tracker.observe(token.position, token.incarnation, ended=self._finished and self._opts.end)
        return token

    async def _start(self) -> aio.UnaryStreamCall:
        session, opts = self._session, self._opts
        await session._sync_position()
        req = generate_request(
            session.session_id,
            opts,
            session._tracker.expected(opts.expected_position, opts.expected_incarnation, opts.reset),
        )
        client = session.client
        self._call = client._stub.Generate(req, timeout=self._timeout, metadata=client._metadata)
        return self._call

    async def aclose(self) -> None:
        """Stop early: cancel the call and learn where the server stopped."""
        if self._call is None or self._finished:
            self._finished = True
            return
        self._finished = True
        self._call.cancel()
        await self._session._after_cancel()

    async def __aenter__(self) -> AsyncGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._call is not None and not self._finished:
            self._session._tracker.lost_track()
            # Suppressed: at interpreter exit the channel or loop may be gone, and the call with it.
            with contextlib.suppress(Exception):
                self._call.cancel()
