"""Requests that must be refused, each with its documented code, on and off a long-lived stream.

Bad input is sent all through the run so that refusals happen under load and beside the
tracked sessions: a refusal must hurt nobody but its sender.
"""

from __future__ import annotations

import asyncio
import math
import random

import grpc
from grpc import aio
from soak_check import OK, code_of
from soak_context import MAX_GENERATE, MAX_MESSAGE, MAX_TOKENS, Soak

from seqpredict.v1 import seqpredict_pb2 as pb

INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


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
        else:
            if r < 0.9:
                name = rng.choice(sorted(generates))
                kind, expected, rpc = "bad_generate", INVALID, soak.stub.Generate(generates[name], timeout=60)
            elif r < 0.95:
                name, kind, expected = "oversized message", "bad_message_size", EXHAUSTED
                rpc = soak.stub.Predict([pb.PredictRequest(session_id="big", text="a" * (MAX_MESSAGE + 10))])
            else:
                name, kind, expected = "unknown RPC", "bad_unknown_rpc", grpc.StatusCode.UNIMPLEMENTED
                rpc = soak.channel.unary_stream("/seqpredict.v1.SequencePredictor/Nope")(b"", timeout=60)
            try:
                _ = [a async for a in rpc]
                code = OK
            except aio.AioRpcError as exc:
                code = exc.code()
        t.outcome(kind, code)
        if code != expected:
            t.wrong_answer(f"bad request {name!r}: {code.name}, expected {expected.name}")
        await asyncio.sleep(0.01)
    await call.done_writing()
