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
        return self._guarded(handler, series, refusal)

    def _guarded(
        self,
        handler: grpc.RpcMethodHandler,
        series: _RpcSeries,
        refusal: tuple[grpc.StatusCode, str, str] | None,
    ) -> grpc.RpcMethodHandler:
        inner, admission, metrics = inner_behavior(handler), self._admission, self._metrics

        async def oversized(message: Oversized, context: aio.ServicerContext) -> None:
            metrics.rejected.labels("message_size").inc()
            limit = admission.max_message_bytes
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"message of {message.size} bytes is over the limit of {limit}"
            )

        async def unusable(message: Oversized | Malformed, context: aio.ServicerContext) -> None:
            if type(message) is Malformed:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request message is not valid: {message.reason}")
            await oversized(message, context)  # type: ignore[arg-type]

        async def counted(messages: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            async for message in messages:
                series.received.inc()
                if type(message) in UNUSABLE:
                    await unusable(message, context)
                yield message

        async def admit(request: Any, context: aio.ServicerContext) -> Any:
            if refusal is not None:
                await context.abort(refusal[0], refusal[1])
            if handler.request_streaming:
                return counted(request, context)
            series.received.inc()
            if type(request) in UNUSABLE:
                await unusable(request, context)
            return request

        async def report_bug(context: aio.ServicerContext, exc: Exception) -> None:
            log.exception("unexpected error in %s", handler)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

        if handler.response_streaming:

            async def behavior(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                started, error = time.perf_counter(), None
                series.started.inc()
                admission.active += 1
                try:
                    async for response in inner(await admit(request, context), context):
                        series.sent.inc()
                        yield response
                except (asyncio.CancelledError, GeneratorExit, aio.AbortError) as exc:
                    # GeneratorExit: grpc closed us while we waited at `yield` (cancel or deadline).
                    error = exc
                    raise
                except Exception as exc:
                    error = exc
                    await report_bug(context, exc)
                finally:
                    admission.active -= 1
                    series.handled(_final_code(context, error), started)

        else:

            async def behavior(request: Any, context: aio.ServicerContext) -> Any:  # type: ignore[misc]
                started, error = time.perf_counter(), None
                series.started.inc()
                admission.active += 1
                try:
                    response = await inner(await admit(request, context), context)
                    series.sent.inc()
                    return response
                except (asyncio.CancelledError, aio.AbortError) as exc:
                    error = exc
                    raise
                except Exception as exc:
                    error = exc
                    await report_bug(context, exc)
                finally:
                    admission.active -= 1
                    series.handled(_final_code(context, error), started)

        return rebuild(handler, behavior, admission.size_limited(handler.request_deserializer))
