"""Floods: maximal requests for one session, pipelined on one stream faster than the engine runs them."""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
from soak_check import OK, code_of
from soak_context import MAX_TOKENS, Soak

from seqpredict.v1 import seqpredict_pb2 as pb

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def floods(soak: Soak) -> None:
    """Every few seconds, 40 maximal requests for one session pipelined: refusals in-band, order kept."""
    rng, t = random.Random(21), soak.tallies
    while not soak.stop.is_set():
        sid = f"flood-{uuid.uuid4().hex[:8]}"
        V = len(soak.vocab)
        requests = [
            pb.PredictRequest(session_id=sid, tokens=[rng.randrange(V) for _ in range(MAX_TOKENS)], request_id=i)
            for i in range(40)
        ]
        answers = [a async for a in soak.stub.Predict(requests)]
        position = 0
        if [a.request_id for a in answers] != list(range(40)):
            t.wrong_answer(f"{sid}: flood answered {[a.request_id for a in answers][:10]}…")
        for request, answer in zip(requests, answers, strict=False):
            code = code_of(answer)
            t.outcome("flood", code)
            if code == OK:
                position += len(request.tokens)
                if answer.position != position:
                    t.wrong_answer(f"{sid}: flood position {answer.position}, expected {position}")
            elif code != EXHAUSTED:
                t.wrong_answer(f"{sid}: flood {code.name} {answer.error.message}")
        await asyncio.sleep(rng.uniform(2, 6))
