"""A running Generate call, sync and asyncio: an iterator of tokens that cancels the call when left early.

Cancelling matters twice over: the server stops spending steps on tokens nobody reads, and
since it may have fed a few tokens more than arrived, the session's position is re-read.

A generation knows its session only through shared pieces — the session's tracker and two
callables, one that starts the call and one that re-reads the position after a cancel — so
this module depends on neither client half, and they do not depend on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc import aio

from seqpredict.client.errors import from_rpc_error
from seqpredict.client.tracking import PositionTracker
from seqpredict.client.types import GeneratedToken


class _Tokens:
    """What both kinds share: reading a token into the tracker, and a cancel when dropped half-read."""

    def __init__(self, session_id: str, tracker: PositionTracker, ends_session: bool) -> None:
        self.session_id = session_id
        self._tracker = tracker
        self._ends_session = ends_session
        self._call: Any = None  # the grpc call, once started
        self._finished = False

    def _token(self, resp: Any) -> GeneratedToken:
        token = GeneratedToken.from_pb(resp)
        self._finished = token.finish_reason is not None
        self._tracker.observe(token.position, token.incarnation, ended=self._finished and self._ends_session)
        return token

    def _failed(self, exc: grpc.RpcError) -> Exception:
        self._finished = True
        return from_rpc_error(exc, self.session_id)

    def __del__(self) -> None:
        if self._call is not None and not self._finished:
            self._tracker.lost_track()
            # Suppressed: at interpreter exit the channel or loop may be gone, and the call with it.
            with contextlib.suppress(Exception):
                self._call.cancel()


class Generation(_Tokens, Iterator[GeneratedToken]):
    """A running Generate call: an iterator of tokens that cancels the call when closed early.

    A generation dropped half-read without `close()` (a bare `break`) is cancelled when it is
    garbage collected; `position` is then unknown (None) until the next answer, and a strict
    session re-reads it before its next request.
    """

    def __init__(
        self,
        session_id: str,
        tracker: PositionTracker,
        ends_session: bool,
        start: Callable[[], Any],
        after_cancel: Callable[[], None],
    ) -> None:
        super().__init__(session_id, tracker, ends_session)
        self._start = start
        self._after_cancel = after_cancel

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> GeneratedToken:
        if self._finished:
            raise StopIteration
        if self._call is None:
            self._call = self._start()
        try:
            resp = next(self._call)
        except StopIteration:
            self._finished = True
            raise
        except grpc.RpcError as exc:
            raise self._failed(exc) from exc
        return self._token(resp)

    def close(self) -> None:
        """Stop early: cancel the call and learn where the server stopped."""
        if self._call is None or self._finished:
            self._finished = True
            return
        self._finished = True
        self._call.cancel()
        self._after_cancel()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGeneration(_Tokens, AsyncIterator[GeneratedToken]):
    """A running Generate call, started on the first `__anext__`.

    Async generators are only closed when the event loop gets round to it, so this is a class:
    `aclose()` (or leaving `async with`) cancels the call and re-reads the session's position;
    a generation dropped half-read (a bare `break`) is cancelled when it is garbage collected,
    and a strict session then re-reads its position before its next request.
    """

    def __init__(
        self,
        session_id: str,
        tracker: PositionTracker,
        ends_session: bool,
        start: Callable[[], Awaitable[aio.UnaryStreamCall]],
        after_cancel: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(session_id, tracker, ends_session)
        self._start = start
        self._after_cancel = after_cancel

    def __aiter__(self) -> AsyncGeneration:
        return self

    async def __anext__(self) -> GeneratedToken:
        if self._finished:
            raise StopAsyncIteration
        if self._call is None:
            self._call = await self._start()
        try:
            resp = await self._call.read()
        except grpc.RpcError as exc:
            raise self._failed(exc) from exc
        if resp is aio.EOF:
            self._finished = True
            raise StopAsyncIteration
        return self._token(resp)

    async def aclose(self) -> None:
        """Stop early: cancel the call and learn where the server stopped."""
        if self._call is None or self._finished:
            self._finished = True
            return
        self._finished = True
        self._call.cancel()
        await self._after_cancel()

    async def __aenter__(self) -> AsyncGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
