"""Tracked sessions: a few sessions whose whole history the soak keeps, so every answer is checked.

Each answer (Predict top-k and all_steps, Generate token probabilities) is compared with the
model fed the same history alone. The sessions pause past the idle TTL now and then and are
evicted by capacity under the load; a loss must be *signalled* (FAILED_PRECONDITION on
expected_position, `created` on a request without it, NOT_FOUND on EndSession or GetSession)
and then the history starts again. A loss served silently from the wrong state shows up as a
wrong answer.

Incarnations are checked alongside: a session keeps its incarnation until it is reset or
created again, and then gets one it never had; every answer, GetSession and EndSession must
name the current one; a FAILED_PRECONDITION must carry the actual position and incarnation
(0 and 0 for a session that is gone: each tracked session is its only writer). After every
loss, once the session exists again, a request fenced by the incarnation it had *before* the
loss, at the position it has *now*, must be refused with the new actual values: position alone
would let it through (the fencing the incarnation exists for).
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

FAILED_PRECONDITION, NOT_FOUND = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND
# A tracked session is ended and started afresh past this many tokens: it bounds the reference's cost.
MAX_TRACKED_HISTORY = 600
FENCED = "tracked/stale incarnation fenced"  # the event counted for each stale writer refused as it must be


class Tracked:
    """One session whose whole history the soak keeps, so each answer can be checked exactly."""

    def __init__(self, soak: Soak, n: int) -> None:
        self.soak, self.t, self.rng = soak, soak.tallies, random.Random(1000 + n)
        self.sid = f"tracked-{n}-{uuid.uuid4().hex[:6]}"
        self.history: list[int] = []
        self.exists = False  # whether the server should hold the session
        self.incarnation = 0  # the session's current one; 0 while it should not exist
        self.seen: set[int] = set()  # every incarnation it has had: a new one must not be among them
        self.stale: int | None = None  # the incarnation it had before its last loss, until fenced
        self.call: aio.StreamStreamCall | None = None

    def lost(self, how: str) -> None:
        self.t.losses[how] += 1
        self.stale = self.incarnation
        self.history, self.exists, self.incarnation = [], False, 0

    def gone(self) -> None:
        """Ended by us: no loss, nothing to fence."""
        self.history, self.exists, self.incarnation = [], False, 0

    def note_incarnation(self, where: str, got: int, new: bool) -> None:
        """Check an answer's incarnation: a new one when the session was (re)created or reset, else the same."""
        if new and (got == 0 or got in self.seen):
            self.t.wrong_answer(f"{where}: incarnation {got} after a creation or reset is not a new one")
        elif not new and got != self.incarnation:
            self.t.wrong_answer(f"{where}: incarnation {got}, the session has {self.incarnation}")
        self.seen.add(got)
        self.incarnation = got

    def failed_precondition(self, where: str, position: int, incarnation: int) -> None:
        """We are the session's only writer: a FAILED_PRECONDITION can only mean it is gone (0, 0)."""
        if self.exists and (position, incarnation) == (0, 0):
            self.lost("failed_precondition")
        else:
            self.t.wrong_answer(
                f"{where}: FAILED_PRECONDITION at position {position}, incarnation {incarnation}"
                f" (expected the session {'gone: 0, 0' if self.exists else 'not to exist, and no refusal'})"
            )

    async def run(self) -> None:
        self.call = self.soak.stub.Predict()
        while not self.soak.stop.is_set():
            r = self.rng.random()
            if r < 0.01:
                await asyncio.sleep(IDLE_TTL_S + 1.5)  # idle past the TTL: the next request must learn of it
            elif r < 0.08:
                await self.generate()
            elif r < 0.10 or len(self.history) > MAX_TRACKED_HISTORY:
                await self.end()
            elif r < 0.12:
                await self.inspect()
            else:
                await self.feed()
        await self.call.done_writing()

    async def ask(self, request: pb.PredictRequest) -> pb.PredictResponse:
        assert self.call is not None
        await self.call.write(request)
        return await self.call.read()

    async def feed(self) -> None:
        rng, chunk = self.rng, self.soak.chunk(self.rng)
        use_expected, reset, end = rng.random() < 0.9, rng.random() < 0.03, rng.random() < 0.02
        request = pb.PredictRequest(
            session_id=self.sid, tokens=chunk, top_k=5, reset=reset, end=end, all_steps=rng.random() < 0.1
        )
        if use_expected:
            request.expected_position = len(self.history)
            if rng.random() < 0.7:
                request.expected_incarnation = self.incarnation  # 0: "must not exist" when we hold none
        answer = await self.ask(request)
        code = code_of(answer)
        self.t.outcome("predict", code)
        where = f"{self.sid} at {len(self.history)}"
        if code == FAILED_PRECONDITION and use_expected:
            self.failed_precondition(where, answer.position, answer.incarnation)
            return
        if code != OK:
            self.t.wrong_answer(f"{where}: {code.name} {answer.error.message}")
            return
        if answer.created and self.exists and not use_expected:
            self.lost("created")
        elif answer.created != (not self.exists):
            self.t.wrong_answer(f"{where}: created={answer.created} but exists={self.exists}")
        self.note_incarnation(where, answer.incarnation, answer.created or reset)
        base = [] if reset or not self.exists or answer.created else self.history
        self.history, self.exists = base + chunk, True
        if answer.position != len(self.history) or answer.ended != end:
            self.t.wrong_answer(f"{where}: position {answer.position} ended {answer.ended}")
        history = await self.soak.check.history(self.history)
        await self.soak.check.top(history, len(self.history), answer.next, where)
        if request.all_steps != bool(answer.steps) or len(answer.steps) not in (0, len(chunk)):
            self.t.wrong_answer(
                f"{where}: {len(answer.steps)} steps for {len(chunk)} tokens, all_steps={request.all_steps}"
            )
        first = len(base)
        positions = [first + k + 1 for k in range(len(answer.steps))]
        await self.soak.check.tops(history, positions, [step.top for step in answer.steps], f"{where} steps")
        if end:
            self.gone()
        elif answer.created and self.stale:
            await self.fence_stale()

    async def fence_stale(self) -> None:
        """A writer that still believes in the incarnation from before the loss, at the position the new
        incarnation happens to have: refused with the actual values, nothing computed."""
        position, stale = len(self.history), self.stale
        request = pb.PredictRequest(
            session_id=self.sid,
            tokens=self.soak.chunk(self.rng),
            expected_position=position,
            expected_incarnation=stale,
        )
        answer = await self.ask(request)
        code = code_of(answer)
        self.t.outcome("predict_stale_incarnation", code)
        actual = (answer.position, answer.incarnation)
        if code == FAILED_PRECONDITION and actual == (position, self.incarnation):
            self.t.event(FENCED)
            self.stale = None
        elif code == FAILED_PRECONDITION and actual == (0, 0):
            self.lost("failed_precondition")  # lost again in between: those are the actual values too
        else:
            self.t.wrong_answer(
                f"{self.sid}: a request expecting incarnation {stale} (before the loss) at position {position}"
                f" got {code.name} with position {actual[0]}, incarnation {actual[1]}; the session has"
                f" incarnation {self.incarnation}"
            )
            if code == OK:  # applied after all: keep the history true to the server's
                self.history = self.history + list(request.tokens)
                self.stale = None

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
        if rng.random() < 0.7:
            request.expected_incarnation = self.incarnation
        where = f"{self.sid} generate at {len(self.history)}"
        try:
            answers = [a async for a in self.soak.stub.Generate(request, timeout=120)]
        except aio.AioRpcError as exc:
            self.t.outcome("generate", exc.code())
            if exc.code() == FAILED_PRECONDITION:
                actual = dict(exc.trailing_metadata() or ())
                position = int(actual.get("seqpredict-position", -1))
                incarnation = int(actual.get("seqpredict-incarnation", -1))
                self.failed_precondition(where, position, incarnation)
            else:
                self.t.wrong_answer(f"{where}: {exc.code().name} {exc.details()}")
            return
        self.t.outcome("generate", OK)
        start = len(self.history) + len(prompt)
        if answers:
            created = answers[0].created
            if created != (not self.exists):
                self.t.wrong_answer(f"{where}: created={created}, exists={self.exists}")
            self.note_incarnation(where, answers[0].incarnation, created)
            if any(a.incarnation != self.incarnation for a in answers):
                self.t.wrong_answer(f"{where}: the incarnation changed during one Generate")
        self.history = self.history + prompt + [a.token for a in answers]
        self.exists = True
        history = await self.soak.check.history(self.history)
        if len(answers) != request.max_tokens or [a.position for a in answers] != list(
            range(start + 1, start + len(answers) + 1)
        ):
            self.t.wrong_answer(f"{where}: {len(answers)} tokens at {[a.position for a in answers][:5]}…")
        for k, a in enumerate(answers):
            await self.soak.check.probability(
                history,
                start + k,
                a.token,
                a.probability,
                f"{where} token {k} (prompt {len(prompt)}, temperature {request.temperature}, top_p"
                f" {request.top_p:.2f}, history {self.history[: start + k + 1]})",
            )
        if answers and answers[0].created and self.stale:
            await self.fence_stale()

    async def inspect(self) -> None:
        """GetSession (which does not touch the session) names our position and incarnation, or NOT_FOUND."""
        try:
            info = await self.soak.stub.GetSession(pb.GetSessionRequest(session_id=self.sid), timeout=60)
        except aio.AioRpcError as exc:
            self.t.outcome("get_session", exc.code())
            if exc.code() != NOT_FOUND:
                self.t.wrong_answer(f"{self.sid}: GetSession {exc.code().name}")
            elif self.exists:
                self.lost("not_found")
            return
        self.t.outcome("get_session", OK)
        if not self.exists or (info.position, info.incarnation) != (len(self.history), self.incarnation):
            self.t.wrong_answer(
                f"{self.sid}: GetSession at {info.position}, incarnation {info.incarnation}; expected"
                + (f" {len(self.history)}, {self.incarnation}" if self.exists else " NOT_FOUND")
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
            return
        self.t.outcome("end_session", OK)
        if not self.exists or (ended.position, ended.incarnation) != (len(self.history), self.incarnation):
            self.t.wrong_answer(
                f"{self.sid}: EndSession at {ended.position}, incarnation {ended.incarnation};"
                f" expected {len(self.history)}, {self.incarnation}"
            )
        self.gone()
