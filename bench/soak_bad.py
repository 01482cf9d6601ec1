"""Requests that must be refused, each with its documented code, on and off a long-lived stream.

Bad input is sent all through the run so that refusals happen under load and beside the
tracked sessions: a refusal must hurt nobody but its sender. Among them, a message whose answer
would be larger than its client can receive: refused before any work, nothing applied.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import grpc
from grpc import aio
from soak_check import OK, code_of
from soak_context import MAX_GENERATE, MAX_MESSAGE, MAX_TOKENS, Soak

from seqpredict.v1 import seqpredict_pb2 as pb

INVALID, EXHAUSTED, UNKNOWN = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
)
HUGE = "bad-huge-answer"  # the session the too-large answers are for; it must never come to exist


def bad_predicts(V: int) -> dict[str, pb.PredictRequest]:
    return {
        "bad session id": pb.PredictRequest(session_id="no spaces", text="a"),
        "token out of range": pb.PredictRequest(session_id="bad-target", tokens=[1, V]),
        "negative token": pb.PredictRequest(session_id="bad-target", tokens=[-1]),
        "unknown character": pb.PredictRequest(session_id="bad-target", text="caf\u00e9"),
        "tokens and text": pb.PredictRequest(session_id="bad-target", tokens=[1], text="a"),
        "top_k 0": pb.PredictRequest(session_id="bad-target", text="a", top_k=0),
        "top_k > V": pb.PredictRequest(session_id="bad-target", text="a", top_k=V + 1),
        "too many tokens": pb.PredictRequest(session_id="bad-target", tokens=[0] * (MAX_TOKENS + 1)),
    }


def bad_generates(V: int) -> dict[str, pb.GenerateRequest]:
    return {
        "temperature NaN": pb.GenerateRequest(session_id="bad-target", max_tokens=1, temperature=math.nan),
        "temperature > 100": pb.GenerateRequest(session_id="bad-target", max_tokens=1, temperature=1e9),
        "top_p 0": pb.GenerateRequest(session_id="bad-target", max_tokens=1, top_p=0.0),
        "max_tokens 0": pb.GenerateRequest(session_id="bad-target"),
        "max_tokens over the limit": pb.GenerateRequest(session_id="bad-target", max_tokens=MAX_GENERATE + 1),
        "17 stop strings": pb.GenerateRequest(session_id="bad-target", max_tokens=1, stop=["a"] * 17),
    }


async def answer_too_large(soak: Soak) -> grpc.StatusCode:
    """A 38 kB PredictMany message whose answer could be ~5.7 MB, from a client that declared no receive
    limit (so gRPC's 4 MiB): every request must be refused in-band before any work, so the session never
    comes to exist. → the one code all answers got; OK when the session exists; UNKNOWN when mixed."""
    V = len(soak.vocab)
    message = pb.PredictManyRequest(
        requests=[pb.PredictRequest(session_id=HUGE, tokens=[i % V], all_steps=True, top_k=V) for i in range(2000)]
    )
    (reply,) = [r async for r in soak.stub.PredictMany([message], timeout=60)]
    codes = {code_of(r) for r in reply.responses}
    if await status_of(soak.stub.GetSession(pb.GetSessionRequest(session_id=HUGE), timeout=60)) == OK:
        return OK  # some request was applied
    return codes.pop() if len(codes) == 1 and len(reply.responses) == len(message.requests) else UNKNOWN


async def status_of(call: Any) -> grpc.StatusCode:
    """The status a call ends with, whatever it answered (a unary call or a stream)."""
    try:
        if hasattr(call, "__aiter__"):
            _ = [a async for a in call]
        else:
            await call
    except aio.AioRpcError as exc:
        return exc.code()
    return OK


async def bad_requests(soak: Soak) -> None:
    rng, t, V = random.Random(13), soak.tallies, len(soak.vocab)
    predicts, generates = bad_predicts(V), bad_generates(V)
    call = soak.stub.Predict()
    while not soak.stop.is_set():
        r = rng.random()
        if r < 0.6:
            name = rng.choice(sorted(predicts))
            await call.write(predicts[name])
            code = code_of(await call.read())
            kind, expected = "bad_predict", INVALID
        elif r < 0.9:
            name = rng.choice(sorted(generates))
            kind, expected = "bad_generate", INVALID
            code = await status_of(soak.stub.Generate(generates[name], timeout=60))
        elif r < 0.95:
            name, kind, expected = "oversized message", "bad_message_size", EXHAUSTED
            big = pb.PredictRequest(session_id="big", text="a" * (MAX_MESSAGE + 10))
            code = await status_of(soak.stub.Predict([big], timeout=60))
        elif r < 0.975:
            name, kind, expected = "answer too large to receive", "bad_answer_size", EXHAUSTED
            code = await answer_too_large(soak)
        else:
            name, kind, expected = "unknown RPC", "bad_unknown_rpc", grpc.StatusCode.UNIMPLEMENTED
            code = await status_of(soak.channel.unary_stream("/seqpredict.v1.SequencePredictor/Nope")(b"", timeout=60))
        t.outcome(kind, code)
        if code != expected:
            t.wrong_answer(f"bad request {name!r}: {code.name}, expected {expected.name}")
        await asyncio.sleep(0.01)
    await call.done_writing()
