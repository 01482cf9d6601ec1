"""A client that never reads: Predict streams written as fast as gRPC takes requests, never read, abandoned.

Every request asks for the largest answer a request may have here (256 tokens, all_steps,
top_k = the vocabulary: about 0.4 MB of answer for 0.3 kB of request), so the server's
stream window (8 requests, 1 MiB of answers) is full after a handful of them. The server
then stops reading the stream, its HTTP/2 receive window fills, and the client's writes stop
being taken: it is held back, never refused. Every 5–15 s the client cancels the stream (the
server drops its queued requests; started ones finish) and opens another on the same
connection, its own: a separate client, not a stream beside the others'.

Nothing it sends is ever answered to it, so it cannot produce a wrong answer; what it must
not do is cost the server memory without bound (the RSS verdict) or slow the rest of the load
down to a stall (the liveness verdict), and every other driver's answers must stay right. It
runs in phases — off for OFF_S seconds, then on for ON_S — and the sampler records whether it
holds a stream, so the report puts the rest of the load's rate beside it with and without this
client, in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid

import grpc
from grpc import aio
from soak_context import MAX_TOKENS, Soak

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

ON_S, OFF_S = 40.0, 20.0  # a cycle of 60 s, starting off so that warm-up is not blamed on this client
LIFETIME_S = (5.0, 15.0)  # how long each stream is held before it is abandoned
# A writer whose last write was taken this long before its stream was abandoned had been held back:
# unimpeded, it writes thousands of requests a second.
HELD_BACK_S = 1.0


def phase_on(elapsed: float) -> bool:
    """Whether the never-reading client runs at `elapsed` seconds into the soak."""
    return elapsed % (ON_S + OFF_S) >= OFF_S


async def never_reads(soak: Soak, address: str, seed: int) -> None:
    rng = random.Random(seed)
    async with aio.insecure_channel(address) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        while not soak.stop.is_set():
            elapsed = time.monotonic() - soak.started
            cycle_left = (ON_S + OFF_S) - elapsed % (ON_S + OFF_S)
            if not phase_on(elapsed) or cycle_left < LIFETIME_S[0]:  # off, or too little of the phase left
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(soak.stop.wait(), cycle_left - ON_S if cycle_left > ON_S else cycle_left)
                continue
            await hold_one_stream(soak, stub, rng, min(rng.uniform(*LIFETIME_S), cycle_left))


async def hold_one_stream(soak: Soak, stub: pb_grpc.SequencePredictorStub, rng: random.Random, lifetime: float) -> None:
    """Write to one stream without reading for `lifetime` seconds, then cancel it."""
    t, V = soak.tallies, len(soak.vocab)
    sid = f"unread-{uuid.uuid4().hex[:10]}"
    payloads = [[rng.randrange(V) for _ in range(MAX_TOKENS)] for _ in range(8)]
    call = stub.Predict()
    taken, last_taken = 0, time.monotonic()

    async def write() -> None:
        nonlocal taken, last_taken
        while True:
            request = pb.PredictRequest(
                session_id=sid, tokens=payloads[taken % 8], all_steps=True, top_k=V, request_id=taken
            )
            await call.write(request)
            taken, last_taken = taken + 1, time.monotonic()

    t.event("never_read/streams opened")
    soak.never_read_open = True
    writer = asyncio.create_task(write())
    stopped = asyncio.create_task(soak.stop.wait())
    await asyncio.wait({writer, stopped}, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    held_back = time.monotonic() - last_taken >= HELD_BACK_S
    ended_by_server = writer.done()
    call.cancel()
    writer.cancel()
    (outcome,) = await asyncio.gather(writer, return_exceptions=True)
    soak.never_read_open = False
    if ended_by_server and not soak.stop.is_set():
        code = outcome.code() if isinstance(outcome, aio.AioRpcError) else None
        t.outcome("never_read", code or grpc.StatusCode.UNKNOWN)
        t.wrong_answer(f"{sid}: a stream that is never read was ended by the server: {outcome!r}")
    else:
        t.outcome("never_read", grpc.StatusCode.CANCELLED)  # by us: the client abandons it
    t.event("never_read/requests taken", taken)
    t.event("never_read/streams held back when abandoned" if held_back else "never_read/streams not held back")
    t.record("never_read/requests taken per stream", taken)
