"""The RPC guard: one wrapper around every handler for admission, RPC metrics and bugs.

It records the grpc-ecosystem series — started, handled{grpc_code}, handling seconds,
messages received and sent — which py-grpc-prometheus (the Python port of
go-grpc-prometheus) offers only for the synchronous server; it applies the admission
policy (tokens, draining, concurrent calls, message size); and it turns an unexpected
exception into INTERNAL with the traceback logged, instead of grpc's opaque UNKNOWN.
All of it in a single layer, because every layer costs on every streamed message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from seqpredict.server.admission import UNUSABLE, Admission, Malformed, Oversized
from seqpredict.server.errors import code_name
from seqpredict.server.handlers import inner_behavior, rebuild
from seqpredict.server.metrics import Metrics

log = logging.getLogger(__name__)

_KINDS = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class _RpcSeries:
    """The children of every RPC-level series for one method, resolved once."""

    def __init__(self, metrics: Metrics, service: str, method: str, kind: str) -> None:
        labels = (service, method, kind)
        self.started = metrics.grpc_started.labels(*labels)
        self.seconds = metrics.grpc_handling_seconds.labels(*labels)
        self.received = metrics.grpc_msg_received.labels(*labels)
        self.sent = metrics.grpc_msg_sent.labels(*labels)
        self.calls_active = metrics.calls_active
        self._handled = metrics.grpc_handled
        self._labels = labels

    def handled(self, code: str, started: float) -> None:
        self._handled.labels(*self._labels, code).inc()
        self.seconds.observe(time.perf_counter() - started)


def _final_code(context: aio.ServicerContext, exc: BaseException | None) -> str:
    code = context.code()  # set when the call was aborted with a status, by us or by grpc
    if isinstance(code, grpc.StatusCode):
        return code_name(code.value[0])
    if isinstance(code, int):
        return code_name(code)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # Closed by grpc while waiting: the client cancelled, or the deadline passed.
        remaining = context.time_remaining()
        return "DeadlineExceeded" if remaining is not None and remaining <= 0 else "Canceled"
    return "Unknown" if exc is not None else "OK"


class _Refused(Exception):
    """A request message the call cannot use (oversized or malformed). Raised, not aborted on
    the spot: a streamed message is read in a task of its own while the handler's task may be
    sending an answer, and gRPC refuses a status sent alongside a message (TOO_MANY_OPERATIONS).
    `_Accounted` turns it into the status in the handler's task, after the earlier answers."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Accounted:
    """One call from start to end: started/handled/seconds, its admission slot (health calls take
    none), and a bug turned into INTERNAL with the traceback logged (never grpc's opaque UNKNOWN)."""

    __slots__ = ("_admission", "_context", "_counted", "_handler", "_series", "_started")

    def __init__(
        self, series: _RpcSeries, admission: Admission, context: aio.ServicerContext, handler: Any, counted: bool
    ) -> None:
        self._series, self._admission, self._context, self._handler = series, admission, context, handler
        self._counted = counted

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()
        self._series.started.inc()
        self._admission.active += self._counted
        if self._counted:
            self._series.calls_active.inc()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # CancelledError / GeneratorExit: grpc ended the call (cancel, deadline); AbortError: a status was set.
        try:
            if isinstance(exc, _Refused):
                await self._context.abort(exc.code, exc.details)
            if isinstance(exc, Exception) and not isinstance(exc, aio.AbortError):
                log.error("unexpected error in %s", self._handler, exc_info=(kind, exc, tb))
                await self._context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            self._admission.active -= self._counted
            if self._counted:
                self._series.calls_active.dec()
            self._series.handled(_final_code(self._context, exc), self._started)


class _CountingContext:
    """The call's context, counting what a handler that writes (rather than yields) sends —
    grpc's own health Watch does."""

    __slots__ = ("_context", "_sent")

    def __init__(self, context: aio.ServicerContext, sent: Any) -> None:
        self._context, self._sent = context, sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class RpcGuard(aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, admission: Admission) -> None:
        self._metrics = metrics
        self._admission = admission
        self._series: dict[str, _RpcSeries] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return handler
        series = self._series.get(details.method)
        if series is None:
            service, _, method = details.method.lstrip("/").rpartition("/")
            kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
            series = self._series[details.method] = _RpcSeries(self._metrics, service, method, kind)
        refusal = self._admission.refusal(details)
        if refusal is not None:
            self._metrics.rejected.labels(refusal[2]).inc()
        return self._guarded(handler, series, refusal, self._admission.counted(details))

    def _guarded(
        self,
        handler: grpc.RpcMethodHandler,
        series: _RpcSeries,
        refusal: tuple[grpc.StatusCode, str, str] | None,
        takes_slot: bool,
    ) -> grpc.RpcMethodHandler:
        inner, admission, metrics = inner_behavior(handler), self._admission, self._metrics

        def refused(message: Oversized | Malformed) -> _Refused:
            if type(message) is Malformed:
                return _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request message is not valid: {message.reason}")
            metrics.rejected.labels("message_size").inc()
            limit = admission.max_message_bytes
            return _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"message of {message.size} bytes is over the limit of {limit}"
            )

        async def counted(messages: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            async for message in messages:
                series.received.inc()
                if type(message) in UNUSABLE:
                    raise refused(message)
                yield message

        async def admit(request: Any, context: aio.ServicerContext) -> Any:
            if refusal is not None:
                await context.abort(refusal[0], refusal[1])
            if handler.request_streaming:
                return counted(request, context)
            series.received.inc()
            if type(request) in UNUSABLE:
                raise refused(request)
            return request

        if handler.response_streaming and inspect.isasyncgenfunction(inner):

            async def behavior(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                async with _Accounted(series, admission, context, handler, takes_slot):
                    async for response in inner(await admit(request, context), context):
                        series.sent.inc()
                        yield response

        elif handler.response_streaming:  # a coroutine that sends with context.write (grpc's health Watch)

            async def behavior(request: Any, context: aio.ServicerContext) -> None:  # type: ignore[misc]
                async with _Accounted(series, admission, context, handler, takes_slot):
                    await inner(await admit(request, context), _CountingContext(context, series.sent))

        else:

            async def behavior(request: Any, context: aio.ServicerContext) -> Any:  # type: ignore[misc]
                async with _Accounted(series, admission, context, handler, takes_slot):
                    response = await inner(await admit(request, context), context)
                    series.sent.inc()
                    return response

        return rebuild(handler, behavior, admission.size_limited(handler.request_deserializer))
