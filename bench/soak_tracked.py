"""Tracked sessions: a few sessions whose whole history the soak keeps, so every answer is checked.

Each answer (Predict top-k and all_steps, Generate token probabilities) is compared with the
model fed the same history alone. The sessions pause past the idle TTL now and then and are
evicted by capacity under the load; a loss must be *signalled* (FAILED_PRECONDITION on
expected_position, `created` on a request without it, NOT_FOUND on EndSession) and then the
history starts again. A loss served silently from the wrong state shows up as a wrong answer.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
from grpc import aio
from soak_check import OK, code_of
from soak_context import IDLE_TTL_S, Soak

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import TOLERANCE

FAILED_PRECONDITION, NOT_FOUND = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND
# A tracked session is ended and started afresh past this many tokens: it bounds the reference's cost.
MAX_TRACKED_HISTORY = 600


class Tracked:
    """One session whose whole history the soak keeps, so each answer can be checked exactly."""

    def __init__(self, soak: Soak, n: int) -> None:
        self.soak, self.t, self.rng = soak, soak.tallies, random.Random(1000 + n)
        self.sid = f"tracked-{n}-{uuid.uuid4().hex[:6]}"
        self.history: list[int] = []
        self.exists = False  # whether the server should hold the session

    def lost(self, how: str) -> None:
        self.t.losses[how] += 1
        self.history, self.exists = [], False

    async def run(self) -> None:
        call = self.soak.stub.Predict()
        while not self.soak.stop.is_set():
            r = self.rng.random()
            if r < 0.01:
                await asyncio.sleep(IDLE_TTL_S + 1.5)  # idle past the TTL: the next request must learn of it
            elif r < 0.08:
                await self.generate()
            elif r < 0.10 or len(self.history) > MAX_TRACKED_HISTORY:
                await self.end()
            else:
                await self.feed(call)
        await call.done_writing()

    async def feed(self, call: aio.StreamStreamCall) -> None:
        rng, chunk = self.rng, self.soak.chunk(self.rng)
        use_expected, reset, end = rng.random() < 0.9, rng.random() < 0.03, rng.random() < 0.02
        request = pb.PredictRequest(
            session_id=self.sid, tokens=chunk, top_k=5, reset=reset, end=end, all_steps=rng.random() < 0.1
        )
        if use_expected:
            request.expected_position = len(self.history)
        await call.write(request)
        answer = await call.read()
        code = code_of(answer)
        self.t.outcome("predict", code)
        where = f"{self.sid} at {len(self.history)}"
        if code == FAILED_PRECONDITION and use_expected:
            if answer.position != 0:  # we are its only writer: a live session cannot have moved
                self.t.wrong_answer(f"{where}: FAILED_PRECONDITION at position {answer.position}")
            self.lost("failed_precondition")
            return
        if code != OK:
            self.t.wrong_answer(f"{where}: {code.name} {answer.error.message}")
            return
        if answer.created and self.exists and not use_expected:
            self.lost("created")
        elif answer.created != (not self.exists):
            self.t.wrong_answer(f"{where}: created={answer.created} but exists={self.exists}")
        base = [] if reset or not self.exists or answer.created else self.history
        self.history, self.exists = base + chunk, True
        if answer.position != len(self.history) or answer.ended != end:
            self.t.wrong_answer(f"{where}: position {answer.position} ended {answer.ended}")
        reference = await self.soak.check.reference(self.history)
        self.soak.check.top(answer.next, reference[len(self.history)], where)
        first = len(base)
        for k, step in enumerate(answer.steps):
            self.soak.check.top(step.top, reference[first + k + 1], f"{where} step {k}")
        if end:
            self.history, self.exists = [], False

    async def generate(self) -> None:
        rng = self.rng
        prompt = self.soak.chunk(rng, 32) if rng.random() < 0.5 else []
        request = pb.GenerateRequest(
            session_id=self.sid,
            prompt_tokens=prompt,
            max_tokens=rng.randint(1, 32),
            seed=rng.randrange(2**63),
            temperature=rng.choice([0.0, 0.7, 1.0, 1.5]),
            top_p=rng.choice([0.5, 0.9, 1.0]),
            expected_position=len(self.history),
        )
        where = f"{self.sid} generate at {len(self.history)}"
        try:
            answers = [a async for a in self.soak.stub.Generate(request, timeout=120)]
        except aio.AioRpcError as exc:
            self.t.outcome("generate", exc.code())
            actual = dict(exc.trailing_metadata() or ()).get("seqpredict-position", "0")
            if exc.code() == FAILED_PRECONDITION and actual == "0":  # evicted before or during the call: signalled
                self.lost("failed_precondition")
            else:
                self.t.wrong_answer(f"{where}: {exc.code().name} {exc.details()}")
            return
        self.t.outcome("generate", OK)
        start = len(self.history) + len(prompt)
        if answers and answers[0].created != (not self.exists):
            self.t.wrong_answer(f"{where}: created={answers[0].created}, exists={self.exists}")
        self.history = self.history + prompt + [a.token for a in answers]
        self.exists = True
        reference = await self.soak.check.reference(self.history)
        self.t.checked += 1
        if len(answers) != request.max_tokens or [a.position for a in answers] != list(
            range(start + 1, start + len(answers) + 1)
        ):
            self.t.wrong_answer(f"{where}: {len(answers)} tokens at {[a.position for a in answers][:5]}…")
        for k, a in enumerate(answers):
            expected = reference[start + k][a.token].item()
            if abs(a.probability - expected) > TOLERANCE:
                self.t.wrong_answer(
                    f"{where}: token {k} (id {a.token}) probability {a.probability:.7f}, reference {expected:.7f}"
                    f" (prompt {len(prompt)}, temperature {request.temperature}, top_p {request.top_p:.2f},"
                    f" history {self.history[: start + k + 1]})"
                )

    async def end(self) -> None:
        try:
            ended = await self.soak.stub.EndSession(pb.EndSessionRequest(session_id=self.sid), timeout=60)
        except aio.AioRpcError as exc:
            self.t.outcome("end_session", exc.code())
            if exc.code() != NOT_FOUND:
                self.t.wrong_answer(f"{self.sid}: EndSession {exc.code().name}")
            elif self.exists:
                self.lost("not_found")
            self.history, self.exists = [], False
            return
        self.t.outcome("end_session", OK)
        if not self.exists or ended.position != len(self.history):
            self.t.wrong_answer(f"{self.sid}: EndSession at {ended.position}, expected {len(self.history)}")
        self.history, self.exists = [], False
