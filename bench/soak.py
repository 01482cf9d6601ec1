"""`make soak`: a long mixed load against a server with low limits; fails on one wrong answer or on RSS growth.

The server runs as a child process with every limit set low (500 sessions, 5 s idle TTL, 256
tokens per request, 8 queued per session), so eviction by capacity and by TTL, queue refusals
and size refusals all happen all the time. Against it, for --duration seconds (default 10 min):

- tracked sessions: a few sessions whose whole token history the soak keeps; every answer
  (Predict top-k, all_steps, Generate token probabilities) is compared with
  tests/reference.py within 1e-5. They pause past the TTL now and then, and they are evicted
  by capacity; a loss must be *signalled* (FAILED_PRECONDITION on expected_position, or
  `created` on a request without it) and then the history starts again;
- load: pipelined Predict streams over 1,600 session ids (more than the 500 allowed), with
  position bookkeeping per id; Generate with every sampling option, cancelled or past its
  deadline now and then; churn of new sessions that are created, read and ended;
- bad requests of every kind, each expected to get its documented code, and floods of one
  session that must be refused in-band, each request answered once and in order.

Every call's outcome is tallied; RSS is sampled every few seconds. The report goes to
bench/soak/ (report.md, report.json, rss.png). Exit status 1 if a single correct request was
answered wrongly, a bad one got the wrong code, or RSS keeps growing (see soak_report.py).

    .venv/bin/python bench/soak.py --duration 120
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/: the same reference and server process the test suite uses

import grpc  # noqa: E402
import soak_report  # noqa: E402
import torch  # noqa: E402
from grpc import aio  # noqa: E402
from tqdm import tqdm  # noqa: E402

from seqpredict.models import CharRNN, Vocabulary, load_checkpoint  # noqa: E402
from seqpredict.server.config import default_checkpoint  # noqa: E402
from seqpredict.v1 import seqpredict_pb2 as pb  # noqa: E402
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc  # noqa: E402
from tests.bystanders import PASSAGE, Metrics  # noqa: E402
from tests.reference import TOLERANCE, assert_top_matches, reference_probabilities  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

MAX_SESSIONS, IDLE_TTL_S, MAX_TOKENS, QUEUE_LIMIT, MAX_GENERATE, MAX_MESSAGE = 500, 5, 256, 8, 256, 65536
SERVER_FLAGS = (
    *("--max-sessions", str(MAX_SESSIONS), "--idle-ttl-s", str(IDLE_TTL_S)),
    *("--max-tokens-per-request", str(MAX_TOKENS), "--session-queue-limit", str(QUEUE_LIMIT)),
    *("--max-generate-tokens", str(MAX_GENERATE), "--max-message-bytes", str(MAX_MESSAGE)),
    *("--grace-s", "10"),
)
TRACKED, LOAD_STREAMS, GENERATORS = 6, 4, 2
# Load alternates every PHASE_S seconds: wide phases spread over 4 x 400 ids (more than the 500
# sessions allowed: eviction by capacity), narrow ones over 4 x 50 (the pool has room, so what the
# wide phase left behind idles out: eviction by TTL).
PHASE_S, LOAD_IDS, NARROW_IDS, GENERATE_IDS = 20.0, 400, 50, 50
# A tracked session is ended and started afresh past this many tokens: it bounds the reference's cost.
MAX_TRACKED_HISTORY = 600
OK, INVALID, FAILED_PRECONDITION = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
)
EXHAUSTED, NOT_FOUND = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND
CODE = {c.value[0]: c for c in grpc.StatusCode}


@dataclass
class Tallies:
    """Everything the soak counts; `wrong` is the verdict: correct requests answered wrongly."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (call kind, status name)
    checked: int = 0  # answers compared with the reference
    losses: Counter[str] = field(default_factory=Counter)  # how tracked sessions learned they were lost
    wrong_count: int = 0
    wrong: list[str] = field(default_factory=list)  # the first few, for the report

    def outcome(self, kind: str, code: grpc.StatusCode) -> None:
        self.outcomes[(kind, code.name)] += 1

    def wrong_answer(self, what: str) -> None:
        self.wrong_count += 1
        if len(self.wrong) < 50:
            self.wrong.append(what)


@dataclass
class Soak:
    stub: pb_grpc.SequencePredictorStub
    channel: aio.Channel
    model: CharRNN
    vocab: Vocabulary
    tallies: Tallies
    stop: asyncio.Event
    started: float = field(default_factory=time.monotonic)

    def wide(self) -> bool:
        """Whether load is in a wide phase (see PHASE_S)."""
        return int((time.monotonic() - self.started) // PHASE_S) % 2 == 0

    def chunk(self, rng: random.Random, longest: int = 64) -> list[int]:
        """1 token a third of the time (the fused step), else a prefill; text from PASSAGE or random ids."""
        n = 1 if rng.random() < 0.33 else rng.randint(2, longest)
        if rng.random() < 0.5:
            start = rng.randrange(len(PASSAGE))
            return self.vocab.encode((PASSAGE * 2)[start : start + n])
        return [rng.randrange(len(self.vocab)) for _ in range(n)]

    async def reference(self, tokens: list[int]) -> torch.Tensor:
        return await asyncio.to_thread(reference_probabilities, self.model, tokens)


# -- tracked sessions: every answer checked ----------------------------------------------------------------


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
        code = CODE[answer.error.code] if answer.HasField("error") else OK
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
        reference = await self.soak.reference(self.history)
        self.check(answer.next, reference[len(self.history)], where)
        first = len(base)
        for k, step in enumerate(answer.steps):
            self.check(step.top, reference[first + k + 1], f"{where} step {k}")
        if end:
            self.history, self.exists = [], False

    def check(self, top: list[pb.TokenProbability], row: torch.Tensor, where: str) -> None:
        self.t.checked += 1
        try:
            assert_top_matches(top, row, where)
        except AssertionError as exc:
            self.t.wrong_answer(str(exc))

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
        reference = await self.soak.reference(self.history)
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


# -- untracked load: bookkeeping checked, values not ------------------------------------------------------------


async def load_stream(soak: Soak, w: int) -> None:
    """Pipelined requests (16 in flight) over 400 ids per stream; positions checked per id."""
    rng, t = random.Random(w), soak.tallies
    ids = [f"load-{w}-{i}" for i in range(LOAD_IDS)]
    positions: dict[str, int | None] = dict.fromkeys(ids)  # None: we hold no session under that id
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
            code = CODE[answer.error.code] if answer.HasField("error") else OK
            t.outcome("predict", code)
            sid = request.session_id
            if answer.request_id != request.request_id:
                t.wrong_answer(f"{sid}: answer {answer.request_id} for request {request.request_id}")
            elif code == EXHAUSTED and "queued" in answer.error.message:
                pass  # the per-session queue limit: refused in-band, nothing applied
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
        t.outcome("predict", OK if not answers[0].HasField("error") else CODE[answers[0].error.code])
        for kind, call in (("get_session", soak.stub.GetSession), ("end_session", soak.stub.EndSession)):
            message = pb.GetSessionRequest if kind == "get_session" else pb.EndSessionRequest
            try:
                info = await call(message(session_id=sid), timeout=60)
                t.outcome(kind, OK)
                if info.position != 6:
                    t.wrong_answer(f"{sid}: {kind} position {info.position}, not 6")
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


# -- requests that must be refused ---------------------------------------------------------------------------


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
            answer = await call.read()
            code = CODE[answer.error.code] if answer.HasField("error") else OK
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
            code = CODE[answer.error.code] if answer.HasField("error") else OK
            t.outcome("flood", code)
            if code == OK:
                position += len(request.tokens)
                if answer.position != position:
                    t.wrong_answer(f"{sid}: flood position {answer.position}, expected {position}")
            elif code != EXHAUSTED:
                t.wrong_answer(f"{sid}: flood {code.name} {answer.error.message}")
        await asyncio.sleep(rng.uniform(2, 6))


# -- the run -------------------------------------------------------------------------------------------------


async def sample(server: ServerProcess, soak: Soak, duration: float, every: float) -> list[dict]:
    """RSS and a few gauges every `every` seconds, with a progress bar."""
    samples, start = [], time.monotonic()
    with tqdm(total=round(duration), unit="s", desc="soak", dynamic_ncols=True) as bar:
        while not soak.stop.is_set():
            elapsed = time.monotonic() - start
            m = await asyncio.to_thread(Metrics, server.metrics_url)
            samples.append(
                {
                    "t": elapsed,
                    "rss_bytes": server.rss_bytes(),
                    "sessions": m.value("seqpredict_sessions_active"),
                    "streams": m.value("seqpredict_streams_active"),
                }
            )
            t = soak.tallies
            bar.set_postfix(
                calls=sum(t.outcomes.values()),
                checked=t.checked,
                wrong=t.wrong_count,
                rss=f"{samples[-1]['rss_bytes'] / 2**20:.0f}MB",
                sessions=int(samples[-1]["sessions"]),
            )
            bar.update(min(round(elapsed), round(duration)) - bar.n)
            if elapsed >= duration:
                soak.stop.set()
                break
            await asyncio.sleep(every)
    return samples


async def run(server: ServerProcess, duration: float, every: float) -> tuple[Tallies, list[dict]]:
    torch.set_num_threads(1)  # the reference runs beside the server on a shared machine
    checkpoint = load_checkpoint(default_checkpoint())
    tallies = Tallies()
    async with aio.insecure_channel(server.address) as channel:
        soak = Soak(
            pb_grpc.SequencePredictorStub(channel),
            channel,
            checkpoint.build_model(),
            checkpoint.vocab,
            tallies,
            asyncio.Event(),
        )
        workers = [
            *(Tracked(soak, n).run() for n in range(TRACKED)),
            *(load_stream(soak, w) for w in range(LOAD_STREAMS)),
            *(generator(soak, w) for w in range(GENERATORS)),
            churn(soak),
            bad_requests(soak),
            floods(soak),
        ]
        tasks = [asyncio.create_task(w) for w in workers]
        samples = await sample(server, soak, duration, every)
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                tallies.wrong_answer(f"a worker failed: {task.exception()!r}")
    return tallies, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=soak_report.MAX_RSS_SLOPE_MB_PER_MIN,
        help="MB/min: RSS trend over the second half above this fails the run (see soak_report.py)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak", help="report directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(args.out / "server.log", *SERVER_FLAGS)
    started = time.time()
    try:
        tallies, samples = asyncio.run(run(server, args.duration, args.sample_every))
        final = Metrics(server.metrics_url)
    finally:
        server.signal()
        exit_code = server.wait(60)
    verdict = soak_report.write(
        args.out,
        soak_report.Run(
            started=started,
            duration=args.duration,
            flags=SERVER_FLAGS,
            tallies=tallies,
            samples=samples,
            metrics=final,
            server_exit=exit_code,
            max_rss_slope=args.max_rss_slope,
        ),
    )
    print(verdict.summary)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
