"""The grpc-ecosystem RPC metrics for grpc.aio, from an interceptor of our own.

py-grpc-prometheus (the Python port of go-grpc-prometheus) only wraps the synchronous
server, so this records the same series — started, handled{grpc_code}, handling seconds,
messages received and sent — around every asyncio handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from seqpredict.server.errors import code_name
from seqpredict.server.handlers import inner_behavior, rebuild
from seqpredict.server.metrics import Metrics

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
    if isinstance(exc, asyncio.CancelledError):
        return "Canceled"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code_name(code.value[0])
    if isinstance(code, int):
        return code_name(code)
    return "Unknown" if exc is not None else "OK"


class MetricsInterceptor(aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._series: dict[str, _RpcSeries] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        series = self._series.get(details.method)
        if series is None:
            service, _, method = details.method.lstrip("/").rpartition("/")
            series = self._series[details.method] = _RpcSeries(self._metrics, service, method, kind)
        return _wrap(handler, series)


def _wrap(handler: grpc.RpcMethodHandler, series: _RpcSeries) -> grpc.RpcMethodHandler:
    inner = inner_behavior(handler)
    if handler.request_streaming:

        def count_requests(request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async def counted() -> AsyncIterator[Any]:
                async for message in request_iterator:
                    series.received.inc()
                    yield message

            return counted()
    else:

        def count_requests(request: Any) -> Any:
            series.received.inc()
            return request

    if handler.response_streaming:

        async def streaming(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            series.started.inc()
            error: BaseException | None = None
            try:
                async for response in inner(count_requests(request), context):
                    series.sent.inc()
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                series.handled(_final_code(context, error), started)

        behavior = streaming
    else:

        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            series.started.inc()
            error: BaseException | None = None
            try:
                response = await inner(count_requests(request), context)
                series.sent.inc()
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                series.handled(_final_code(context, error), started)

        behavior = unary

    return rebuild(handler, behavior)
