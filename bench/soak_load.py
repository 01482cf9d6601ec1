"""Untracked load: volume and variety, with every answer's bookkeeping checked but not its values.

Pipelined Predict streams over more session ids than the server may hold, Generate with every
sampling option (cancelled or past its deadline now and then), and churn of sessions that are
created, read and ended. Their job is to keep the pools full and the limits busy around the
tracked sessions; positions, order and codes are still checked on every answer.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
from grpc import aio
from soak_check import OK, code_of
from soak_context import LOAD_IDS, LOAD_STREAMS, NARROW_IDS, Soak

from seqpredict.v1 import seqpredict_pb2 as pb

NOT_FOUND = grpc.StatusCode.NOT_FOUND
GENERATORS, GENERATE_IDS = 2, 50


async def load_stream(soak: Soak, w: int) -> None:
    """Pipelined requests (16 in flight, twice the server's stream window) over 400 ids per stream;
    positions and incarnations checked per id, and none may be refused: flow control slows the stream instead."""
    rng, t = random.Random(w), soak.tallies
    ids = [f"load-{w}-{i}" for i in range(LOAD_IDS)]
    positions: dict[str, int | None] = dict.fromkeys(ids)  # None: we hold no session under that id
    incarnations: dict[str, int] = dict.fromkeys(ids, 0)  # the last one each id's answers named
    in_flight: asyncio.Queue[pb.PredictRequest | None] = asyncio.Queue()
    window = asyncio.Semaphore(16)
    call = soak.stub.Predict()

    async def write() -> None:
        n = 0
        while not soak.stop.is_set():
            await window.acquire()
            reset, end = rng.random() < 0.02, rng.random() < 0.03
            request = pb.PredictRequest(
                session_id=rng.choice(ids if soak.wide() else ids[:NARROW_IDS]),
                tokens=soak.chunk(rng),
                top_k=rng.choice([1, 5, 20]),
                reset=reset,
                end=end,
                request_id=n,
            )
            n += 1
            in_flight.put_nowait(request)
            await call.write(request)
        in_flight.put_nowait(None)
        await call.done_writing()

    async def read() -> None:
        while (request := await in_flight.get()) is not None:
            answer = await call.read()
            window.release()
            code = code_of(answer)
            t.outcome("predict", code)
            sid = request.session_id
            if answer.request_id != request.request_id:
                t.wrong_answer(f"{sid}: answer {answer.request_id} for request {request.request_id}")
            elif code != OK:
                t.wrong_answer(f"{sid}: {code.name} {answer.error.message}")
            else:
                before = positions[sid]
                if not answer.created and before is None:
                    t.wrong_answer(f"{sid}: continued a session this stream never created or had ended")
                base = 0 if answer.created or request.reset or before is None else before
                if answer.position != base + len(request.tokens):
                    t.wrong_answer(f"{sid}: position {answer.position}, expected {base + len(request.tokens)}")
                positions[sid] = None if request.end else answer.position
                fresh = answer.created or request.reset  # a new history: a new incarnation, else the same one
                if not answer.incarnation or (answer.incarnation == incarnations[sid]) == fresh:
                    t.wrong_answer(f"{sid}: incarnation {answer.incarnation} after {incarnations[sid]}, new={fresh}")
                incarnations[sid] = answer.incarnation

    await asyncio.gather(write(), read())


async def generator(soak: Soak, w: int) -> None:
    """Generate with every sampling option; some calls cancelled, some past a short deadline."""
    rng, t, V = random.Random(100 + w), soak.tallies, len(soak.vocab)
    while not soak.stop.is_set():
        fields: dict = {"session_id": f"gen-{w}-{rng.randrange(GENERATE_IDS)}", "max_tokens": rng.randint(1, 64)}
        fields["seed"] = rng.randrange(2**63)
        for name, values in (
            ("temperature", [0.0, 0.5, 1.0, 2.0]),
            ("top_k", [1, 5, V]),
            ("top_p", [0.3, 0.9, 1.0]),
            ("prompt_text", ["ROMEO:\n", "The ", "KING HENRY"]),
            ("reset", [True]),
            ("end", [True]),
        ):
            if rng.random() < 0.4:
                fields[name] = rng.choice(values)
        if rng.random() < 0.2:
            fields["stop"] = ["\n", "."]
        how = rng.choices(["read", "cancel", "deadline"], [0.8, 0.1, 0.1])[0]
        call = soak.stub.Generate(pb.GenerateRequest(**fields), timeout=0.05 if how == "deadline" else 120)
        got, code = [], OK
        try:
            async for answer in call:
                got.append(answer)
                if how == "cancel" and len(got) == 3:
                    call.cancel()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        except aio.AioRpcError as exc:
            code = exc.code()
        if code == OK and call.cancelled():
            code = grpc.StatusCode.CANCELLED
        t.outcome("generate", code)
        expected = {"read": {OK}, "cancel": {OK, grpc.StatusCode.CANCELLED}}.get(
            how, {OK, grpc.StatusCode.DEADLINE_EXCEEDED}
        )
        if code not in expected:
            t.wrong_answer(f"generate {fields['session_id']} ({how}): {code.name}")
        steps = [a.position for a in got]
        if steps != list(range(steps[0], steps[0] + len(steps)) if steps else []) or len(got) > fields["max_tokens"]:
            t.wrong_answer(f"generate {fields['session_id']}: positions {steps[:5]}… for {fields['max_tokens']}")
        if code == OK and how == "read" and (not got or not got[-1].finish_reason):
            t.wrong_answer(f"generate {fields['session_id']}: finished without a finish reason")


async def churn(soak: Soak) -> None:
    """New sessions created, read and ended; reads and ends of load sessions (which may be gone: NOT_FOUND)."""
    rng, t = random.Random(7), soak.tallies
    while not soak.stop.is_set():
        sid = f"churn-{uuid.uuid4().hex[:10]}"
        answers = [a async for a in soak.stub.Predict([pb.PredictRequest(session_id=sid, text="Churn.")])]
        t.outcome("predict", code_of(answers[0]))
        incarnation = answers[0].incarnation
        for kind, call in (("get_session", soak.stub.GetSession), ("end_session", soak.stub.EndSession)):
            message = pb.GetSessionRequest if kind == "get_session" else pb.EndSessionRequest
            try:
                info = await call(message(session_id=sid), timeout=60)
                t.outcome(kind, OK)
                if (info.position, info.incarnation) != (6, incarnation):
                    t.wrong_answer(f"{sid}: {kind} at {info.position}, {info.incarnation}; not 6, {incarnation}")
            except aio.AioRpcError as exc:
                t.outcome(kind, exc.code())  # NOT_FOUND only if evicted by capacity in between
                if exc.code() != NOT_FOUND:
                    t.wrong_answer(f"{sid}: {kind} {exc.code().name}")
        other = f"load-{rng.randrange(LOAD_STREAMS)}-{rng.randrange(LOAD_IDS)}"
        try:
            await soak.stub.GetSession(pb.GetSessionRequest(session_id=other), timeout=60)
            t.outcome("get_session", OK)
        except aio.AioRpcError as exc:
            t.outcome("get_session", exc.code())
            if exc.code() != NOT_FOUND:
                t.wrong_answer(f"{other}: GetSession {exc.code().name}")
        await asyncio.sleep(0.02)
