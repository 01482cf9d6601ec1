"""One session pipelined on one stream: floods of maximal requests, and 10,000 single tokens.

A client may write a session's requests as fast as gRPC takes them and read the answers as
they come. The server holds at most a window of them per stream (--stream-window) and stops
reading the stream while it is full, so such a client is slowed down and never refused: every
request must be applied once, in order, and answered — no refusal, no hole. Each request
carries its exact expected_position (and, once the first answer has named it, the session's
incarnation), so a request skipped, applied twice or applied to a lost session cannot pass
unnoticed; and every answer is compared with the reference model fed the whole pipeline alone.

Two shapes run side by side, each with a fresh session every time: floods (40 requests of the
256-token maximum, every few seconds) and the hardening issue's 10,000 single-token requests,
back to back. The one legitimate way for a pipeline to stop early is a *signalled* loss: the
session evicted under the soak's low session limit, which FAILED_PRECONDITION at position 0,
incarnation 0 reports; it is counted, and the pipeline starts again with a new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass

import grpc
from grpc import aio
from soak_check import OK, code_of
from soak_context import MAX_TOKENS, Soak

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import PASSAGE

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
# A pipeline that has not finished in this long has hung: its deadline ends it with a wrong answer.
DEADLINE_S = 600.0
TOP_K = 5


@dataclass(frozen=True)
class Shape:
    kind: str  # the name its outcomes are counted under
    requests: int
    tokens_each: int
    pause_s: tuple[float, float]  # between two pipelines, uniformly drawn


FLOOD = Shape("flood", 40, MAX_TOKENS, (2.0, 6.0))
PIPELINE = Shape("pipeline", 10_000, 1, (0.5, 2.0))


async def pipelines(soak: Soak, shape: Shape, seed: int) -> None:
    """Pipelines of `shape`, one after the other, until the run ends."""
    rng = random.Random(seed)
    while not soak.stop.is_set():
        await Pipelined(soak, shape, rng).run()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), rng.uniform(*shape.pause_s))


class Pipelined:
    """One session's requests written ahead on one stream while its answers are read and checked."""

    def __init__(self, soak: Soak, shape: Shape, rng: random.Random) -> None:
        self.soak, self.shape, self.t = soak, shape, soak.tallies
        self.sid = f"{shape.kind}-{uuid.uuid4().hex[:10]}"
        total, V = shape.requests * shape.tokens_each, len(soak.vocab)
        if rng.random() < 0.5:  # random ids, or Shakespeare (the model's confident regime)
            tokens = [rng.randrange(V) for _ in range(total)]
        else:
            text = PASSAGE * (total // len(PASSAGE) + 2)
            start = rng.randrange(len(PASSAGE))
            tokens = soak.vocab.encode(text[start : start + total])
        n = shape.tokens_each
        self.chunks = [tokens[i * n : (i + 1) * n] for i in range(shape.requests)]
        self.tokens = tokens
        self.written = 0
        self.incarnation = 0  # the session's, from the first answer on
        self.lost = False  # evicted, and the server said so
        self.tops: list = []  # the `next` of each applied answer, checked against the reference at the end
        self.applied: list[int] = []  # and the index of its request

    async def run(self) -> None:
        kind, t = self.shape.kind, self.t
        reference = asyncio.create_task(self.soak.check.history(self.tokens))  # computed while the pipeline runs
        started = time.monotonic()
        call = self.soak.stub.Predict(timeout=DEADLINE_S)
        try:
            await asyncio.gather(self.write(call), self.read(call))
        except aio.AioRpcError as exc:
            t.outcome(kind, exc.code())
            t.wrong_answer(f"{self.sid}: the pipeline's stream failed: {exc.code().name} {exc.details()}")
        finally:
            call.cancel()
        history = await reference
        n = self.shape.tokens_each
        await self.soak.check.tops(history, [(i + 1) * n for i in self.applied], self.tops, f"{self.sid} ({kind})")
        if self.lost:
            t.event(f"{kind}/lost (evicted, signalled)")
        elif self.applied == list(range(self.shape.requests)):
            t.event(f"{kind}/completed")
            t.record(f"{kind}/seconds per completed pipeline", time.monotonic() - started)
        else:
            t.event(f"{kind}/cut short by the end of the run")
        t.event(f"{kind}/answers", len(self.tops))

    async def write(self, call: aio.StreamStreamCall) -> None:
        n, last = self.shape.tokens_each, self.shape.requests - 1
        for i, chunk in enumerate(self.chunks):
            if self.soak.stop.is_set() or self.lost:
                break
            request = pb.PredictRequest(
                session_id=self.sid, tokens=chunk, top_k=TOP_K, request_id=i, expected_position=i * n, end=i == last
            )
            if self.incarnation:
                request.expected_incarnation = self.incarnation
            await call.write(request)
            self.written += 1
        await call.done_writing()

    async def read(self, call: aio.StreamStreamCall) -> None:
        i = 0
        while (answer := await call.read()) is not aio.EOF:
            self.check(i, answer)
            i += 1
        if i != self.written:
            self.t.wrong_answer(f"{self.sid}: the stream ended after {i} answers to {self.written} requests")

    def check(self, i: int, answer: pb.PredictResponse) -> None:
        """Answer i's bookkeeping; its probabilities are checked all together at the end."""
        kind, t, n = self.shape.kind, self.t, self.shape.tokens_each
        code = code_of(answer)
        t.outcome(kind, code)
        where = f"{self.sid} ({kind}) answer {i}"
        if answer.request_id != i:
            t.wrong_answer(f"{where}: answers request {answer.request_id} (a hole or a reordering)")
        elif code == FAILED_PRECONDITION and answer.position == 0 and answer.incarnation == 0:
            self.lost = True  # evicted by capacity: the server says it no longer exists, nothing computed
        elif code != OK:
            t.wrong_answer(f"{where}: refused {code.name} {answer.error.message}")
        elif self.lost:
            t.wrong_answer(f"{where}: applied after the session was reported lost")
        else:
            if answer.position != (i + 1) * n:
                t.wrong_answer(f"{where}: position {answer.position}, expected {(i + 1) * n}")
            if answer.created != (i == 0) or answer.ended != (i == self.shape.requests - 1):
                t.wrong_answer(f"{where}: created={answer.created} ended={answer.ended}")
            if i == 0:
                self.incarnation = answer.incarnation
                if not answer.incarnation:
                    t.wrong_answer(f"{where}: a new session with incarnation 0")
            elif answer.incarnation != self.incarnation:
                t.wrong_answer(f"{where}: incarnation {answer.incarnation}, the session has {self.incarnation}")
            self.tops.append(answer.next)
            self.applied.append(i)
