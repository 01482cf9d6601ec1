"""Who may start an RPC: bearer tokens, the concurrent-RPC limit, the message-size limit, and
refusal while draining.

Health checks are always admitted — orchestrators probe without credentials, and a probe
must see NOT_SERVING during a drain rather than a refusal. Every refusal is counted by
reason in `seqpredict_rejected_total`.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from grpc import aio

from seqpredict.server.handlers import inner_behavior, rebuild
from seqpredict.server.metrics import Metrics

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# gRPC's own receive limit, as a multiple of ours: it stops absurd sizes before any allocation.
HARD_LIMIT_FACTOR = 4


def load_tokens(tokens: str, tokens_file: str) -> frozenset[str]:
    """Tokens from a comma-separated string and/or a file of one token per line (# comments)."""
    found = {t.strip() for t in tokens.split(",") if t.strip()}
    if tokens_file:
        for line in Path(tokens_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.add(line)
    return frozenset(found)


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that ends the call with `code` before reading anything."""

    async def refuse(request: object, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: object, context: aio.ServicerContext) -> AsyncIterator[object]:
        await context.abort(code, message)
        yield  # never reached; makes this an async generator like the handler it replaces

    return rebuild(handler, refuse_stream if handler.response_streaming else refuse)


class AdmissionInterceptor(aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, tokens: frozenset[str], max_rpcs: int, max_message_bytes: int) -> None:
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._tokens = tuple(t.encode() for t in tokens)
        self._max_rpcs = max_rpcs
        self.active = 0
        self.draining = False

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if not self._tokens:
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                offered = value[len("Bearer ") :].strip().encode()
                # Constant-time comparison against every token: no timing hint about which prefix matched.
                return any([hmac.compare_digest(offered, t) for t in self._tokens])
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        rejected = self._metrics.rejected
        if not self._authorized(details):
            rejected.labels("unauthenticated").inc()
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if self.draining:
            rejected.labels("draining").inc()
            return _refusal(handler, grpc.StatusCode.UNAVAILABLE, "the server is draining; retry on another replica")
        if self.active >= self._max_rpcs:
            rejected.labels("streams").inc()
            return _refusal(
                handler, grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many concurrent calls (limit {self._max_rpcs})"
            )
        return self._counted(handler)

    def _counted(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Count the call in `active` while it runs and refuse any message over the size limit."""
        interceptor, inner = self, inner_behavior(handler)

        async def checked(messages: AsyncIterator[object], context: aio.ServicerContext) -> AsyncIterator[object]:
            async for message in messages:
                yield await interceptor._check_size(message, context)

        async def admit(request: object, context: aio.ServicerContext) -> object:
            if handler.request_streaming:
                return checked(request, context)  # type: ignore[arg-type]
            return await interceptor._check_size(request, context)

        if handler.response_streaming:

            async def streaming(request: object, context: aio.ServicerContext) -> AsyncIterator[object]:
                interceptor.active += 1
                try:
                    async for response in inner(await admit(request, context), context):
                        yield response
                finally:
                    interceptor.active -= 1

            behavior = streaming
        else:

            async def unary(request: object, context: aio.ServicerContext) -> object:
                interceptor.active += 1
                try:
                    return await inner(await admit(request, context), context)
                finally:
                    interceptor.active -= 1

            behavior = unary
        return rebuild(handler, behavior, _size_limited(handler.request_deserializer, self._max_message_bytes))

    async def _check_size(self, message: object, context: aio.ServicerContext) -> object:
        if isinstance(message, Oversized):
            self._metrics.rejected.labels("message_size").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {message.size} bytes is over the limit of {self._max_message_bytes}",
            )
        return message


class Oversized:
    """Stands in for a request message that was too large to parse."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _size_limited(deserialize: Callable[[bytes], object] | None, limit: int) -> Callable[[bytes], object]:
    # gRPC itself refuses anything over HARD_LIMIT_FACTOR × limit before reading it (uncounted);
    # between the two, we refuse here — counted — without parsing the bytes.
    def check(data: bytes) -> object:
        if len(data) > limit:
            return Oversized(len(data))
        return deserialize(data) if deserialize is not None else data

    return check
