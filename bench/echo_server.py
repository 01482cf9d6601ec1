"""The echo ceiling: our gRPC service with the same messages and no model behind it.

Whatever our server does per message, it cannot beat a bare grpc.aio servicer that answers
each PredictRequest with a canned PredictResponse of the same shape (session id, a position
counter per session, five TokenProbability entries). Measured under the same load, this is
the per-message ceiling that the targets of issue 4 compare against. The server options
mirror seqpredict.server.app.create_server so the transport is configured identically; there
is deliberately no interceptor, no validation and no scheduler.

    .venv/bin/python bench/echo_server.py --port 0     # first stdout line: {"port": N}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import string
import sys
from collections.abc import AsyncIterator

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SequencePredictor"].full_name
# The shipped checkpoint's vocabulary size; the load generator draws token ids below it.
VOCAB_SIZE = 82
VOCABULARY = (string.printable * 2)[:VOCAB_SIZE]
STATE_BYTES = 2 * 2 * 256 * 4  # what the default model's (h, c) would cost, so ModelInfo looks alike
# Mirrors the options of seqpredict.server.transport.grpc_options with default settings — keep them in
# sync: gRPC's own receive limit is 4× our 4 MiB message limit (admission.HARD_LIMIT_FACTOR), sends up
# to 64 MiB, no automatic growth of stream windows (bdp_probe 0), and no maximum_concurrent_rpcs (ours
# limits concurrency in its admission interceptor, which the echo omits).
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    ("grpc.max_allowed_incoming_connections", 1024),
    ("grpc.server_handshake_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_connection_idle_ms", 300_000),
]


def _canned_top() -> list[pb.TokenProbability]:
    probabilities = (0.4, 0.2, 0.1, 0.05, 0.025)
    return [
        pb.TokenProbability(id=i, text=VOCABULARY[i], probability=p, log_probability=math.log(p))
        for i, p in enumerate(probabilities)
    ]


class EchoService(pb_grpc.SequencePredictorServicer):
    """Answers like our service would, from a per-session position counter instead of a model."""

    def __init__(self) -> None:
        self._top = _canned_top()
        self._positions: dict[str, int] = {}

    def _answer(self, req: pb.PredictRequest) -> pb.PredictResponse:
        # A fresh message per request, as ours builds one: the cost of building it is part of the ceiling.
        before = self._positions.get(req.session_id)
        position = (before or 0) + len(req.tokens) + len(req.text)
        self._positions[req.session_id] = position
        return pb.PredictResponse(
            session_id=req.session_id,
            position=position,
            created=before is None,
            next=self._top,
            request_id=req.request_id,
        )

    async def Predict(
        self, request_iterator: AsyncIterator[pb.PredictRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.PredictResponse]:
        async for req in request_iterator:
            yield self._answer(req)

    async def PredictMany(
        self, request_iterator: AsyncIterator[pb.PredictManyRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.PredictManyResponse]:
        async for message in request_iterator:
            yield pb.PredictManyResponse(responses=[self._answer(req) for req in message.requests])

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        before = self._positions.get(request.session_id)
        position = (before or 0) + len(request.prompt_tokens) + len(request.prompt_text)
        for i in range(max(request.max_tokens, 1)):
            position += 1
            self._positions[request.session_id] = position
            last = i + 1 >= request.max_tokens
            yield pb.GenerateResponse(
                token=0,
                text=VOCABULARY[0],
                position=position,
                created=i == 0 and before is None,
                finish_reason=pb.FINISH_REASON_MAX_TOKENS if last else pb.FINISH_REASON_UNSPECIFIED,
                probability=0.4,
            )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: aio.ServicerContext) -> pb.ModelInfo:
        return pb.ModelInfo(
            name="echo",
            architecture=pb.Architecture(cell="echo", vocab_size=VOCAB_SIZE),
            vocabulary=list(VOCABULARY),
            state_bytes_per_session=STATE_BYTES,
        )


async def serve(host: str, port: int) -> None:
    server = aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_SequencePredictorServicer_to_server(EchoService(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # The first stdout line is the contract with whoever started us (port 0 picks a free port).
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"echo_server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
