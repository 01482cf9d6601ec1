"""The load generator: C concurrent sessions against a SequencePredictor, in a process of its own.

Like Triton's perf_analyzer in sequence mode, every session keeps exactly one request in
flight (send, await the answer, send the next), so throughput and latency are those of C
closed-loop users. It runs in its own process because on a 2-core box the client costs about
as much CPU per message as the server: sharing the server's interpreter would hide that.
One grpc.aio event loop drives every session.

Modes:
  pingpong     one bidi Predict stream per session, one random token per message
  prefill      the same with --chunk tokens per message
  generate     C concurrent Generate calls of --max-tokens tokens, restarted as they finish
  multiplexed  --per-message sessions per PredictMany message (C=256, 64 → 4 streams)
  pipeline     one session per C on its own Predict stream, --pipeline-requests single-token requests
               written ahead as fast as gRPC takes them while the answers are read; then a fresh session

Only what completes inside the measured window (after --warmup) counts towards rates and
percentiles; `tokens_total` counts the whole run, so a caller can divide server CPU by it.
`window_monotonic` is the measured window on CLOCK_MONOTONIC (time.monotonic() in any process
of the machine), so a caller sampling CPU from /proc can take exactly the window's share;
`window_cpu_s` is this process's own CPU over it.
Errors are counted by gRPC code over the whole run. With --duration 0 it runs until SIGTERM,
which also ends a timed run early (the JSON then covers what was measured): that makes it a
long-running load source for docker-compose as well as a benchmark step.

    .venv/bin/python bench/loadgen.py --target 127.0.0.1:50051 --mode pingpong --sessions 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import signal
import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from latency import LatencyHistogram

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

MODES = ("pingpong", "prefill", "generate", "multiplexed", "pipeline")
# The echo server's (and the shipped model's) vocabulary size, if GetModelInfo does not say.
FALLBACK_VOCAB = 82
# What `latency_ms` measures, by mode (message_round_trip otherwise).
LATENCY_KINDS = {"generate": "inter_token_gap", "pipeline": "offered_to_answered"}
# After a stream fails, wait this long before a new one: a restarting server is not hammered.
RETRY_S = 0.5
# The routing key issue 13's proxy hashes on (seqpredict.server.routing.ROUTING_HEADER).
SESSION_HEADER = "x-session-id"
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


@dataclass
class Tally:
    """What a run measured. Only answers completing inside [warm_end, end) count towards rates."""

    warm_end: float
    end: float
    tokens: int = 0
    messages: int = 0
    tokens_total: int = 0
    messages_total: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    first_token: LatencyHistogram = field(default_factory=LatencyHistogram)
    errors: Counter[str] = field(default_factory=Counter)
    pipeline_seconds: list[float] = field(default_factory=list)  # whole pipelines inside the window

    def pipelined(self, started: float, finished: float) -> None:
        """A pipeline answered in full; only those wholly inside the window count."""
        if self.warm_end <= started and finished < self.end:
            self.pipeline_seconds.append(finished - started)

    def answered(self, now: float, seconds: float | None, tokens: int, first_token: bool = False) -> None:
        self.tokens_total += tokens
        self.messages_total += 1
        if self.warm_end <= now < self.end:
            self.tokens += tokens
            self.messages += 1
            if seconds is not None:
                (self.first_token if first_token else self.latency).record(seconds)


class LoadGen:
    def __init__(self, args: argparse.Namespace, stubs: list[pb_grpc.SequencePredictorStub], vocab: int) -> None:
        self.args = args
        self.stubs = stubs
        self.vocab = vocab
        self.rng = random.Random(args.seed)
        self.prefix = f"lg{os.getpid()}-{secrets.token_hex(4)}"  # unique per run: no state shared between runs
        self.stopping = False
        start = time.perf_counter()
        end = start + args.warmup + args.duration if args.duration > 0 else math.inf
        self.started = start
        self.tally = Tally(start + args.warmup, end)

    def _sid(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def _stub(self, i: int) -> pb_grpc.SequencePredictorStub:
        return self.stubs[i % len(self.stubs)]

    def _routing(self, sid: str) -> tuple[tuple[str, str], ...] | None:
        """With --session-header, the x-session-id metadata a proxy routes a session's call by."""
        return ((SESSION_HEADER, sid),) if self.args.session_header else None

    def _failed(self, exc: aio.AioRpcError) -> bool:
        """Count a stream failure unless we caused it by stopping; True when the session should go on."""
        if self.stopping:
            return False
        self.tally.errors[exc.code().name] += 1
        return True

    # -- the session loops -------------------------------------------------------------------------------
    async def pingpong(self, i: int, chunk: int) -> None:
        """One session on its own Predict stream: `chunk` tokens per message, one message in flight."""
        sid, stub, rng, vocab, tally = self._sid(i), self._stub(i), self.rng, self.vocab, self.tally
        population = range(vocab)
        request_id = 0
        while not self.stopping:
            call = stub.Predict(metadata=self._routing(sid))
            try:
                while not self.stopping:
                    request_id += 1
                    tokens = [rng.randrange(vocab)] if chunk == 1 else rng.choices(population, k=chunk)
                    sent = time.perf_counter()
                    await call.write(pb.PredictRequest(session_id=sid, tokens=tokens, request_id=request_id))
                    response = await call.read()
                    now = time.perf_counter()
                    if response is aio.EOF:
                        raise RuntimeError("server ended the stream early")
                    if response.HasField("error"):
                        tally.errors[CODE_NAMES.get(response.error.code, str(response.error.code))] += 1
                        continue
                    tally.answered(now, now - sent, chunk)
                await _close(call)
            except aio.AioRpcError as exc:
                if not self._failed(exc):
                    return
                await asyncio.sleep(RETRY_S)
            finally:
                call.cancel()

    async def multiplexed(self, i: int, members: range) -> None:
        """One PredictMany stream carrying one token for each session in `members` per message."""
        sids, stub, rng, vocab, tally = [self._sid(m) for m in members], self._stub(i), self.rng, self.vocab, self.tally
        while not self.stopping:
            call = stub.PredictMany()
            try:
                while not self.stopping:
                    requests = [pb.PredictRequest(session_id=s, tokens=[rng.randrange(vocab)]) for s in sids]
                    sent = time.perf_counter()
                    await call.write(pb.PredictManyRequest(requests=requests))
                    response = await call.read()
                    now = time.perf_counter()
                    if response is aio.EOF:
                        raise RuntimeError("server ended the stream early")
                    bad = [r.error.code for r in response.responses if r.HasField("error")]
                    for code in bad:
                        tally.errors[CODE_NAMES.get(code, str(code))] += 1
                    tally.answered(now, now - sent, len(response.responses) - len(bad))
                await _close(call)
            except aio.AioRpcError as exc:
                if not self._failed(exc):
                    return
                await asyncio.sleep(RETRY_S)
            finally:
                call.cancel()

    async def generate(self, i: int, max_tokens: int) -> None:
        """Back-to-back Generate calls on one session; latency is the gap between consecutive tokens."""
        sid, stub, rng, tally = self._sid(i), self._stub(i), self.rng, self.tally
        while not self.stopping:
            sent = time.perf_counter()
            request = pb.GenerateRequest(session_id=sid, max_tokens=max_tokens, seed=rng.getrandbits(63))
            call = stub.Generate(request, metadata=self._routing(sid))
            last: float | None = None
            try:
                async for _ in call:
                    now = time.perf_counter()
                    tally.answered(now, now - (sent if last is None else last), 1, first_token=last is None)
                    last = now
                    if self.stopping:
                        break
            except aio.AioRpcError as exc:
                if not self._failed(exc):
                    return
                await asyncio.sleep(RETRY_S)
            finally:
                call.cancel()

    async def pipeline(self, i: int, requests: int) -> None:
        """Sessions one after another on fresh Predict streams: `requests` single tokens each, written
        ahead while the answers are read, the last one ending the session. Flow control, not the client,
        bounds what is in flight. Latency runs from the moment a request is offered to gRPC (so time
        spent held back by the server's window counts) to its answer."""
        stub, tally = self._stub(i), self.tally
        k = 0
        while not self.stopping:
            sid, k = f"{self._sid(i)}-{k}", k + 1
            call = stub.Predict(metadata=self._routing(sid))
            offered: deque[float] = deque()  # when each request not yet answered was offered
            started = time.perf_counter()
            try:
                writer = asyncio.create_task(self._write_pipeline(call, sid, requests, offered))
                answered = 0
                while (response := await call.read()) is not aio.EOF:
                    now = time.perf_counter()
                    sent = offered.popleft()
                    if response.HasField("error"):
                        tally.errors[CODE_NAMES.get(response.error.code, str(response.error.code))] += 1
                        continue
                    answered += 1
                    tally.answered(now, now - sent, 1)
                await writer
                if answered == requests:
                    tally.pipelined(started, time.perf_counter())
            except aio.AioRpcError as exc:
                if not self._failed(exc):
                    return
                await asyncio.sleep(RETRY_S)
            finally:
                call.cancel()

    async def _write_pipeline(self, call: Any, sid: str, requests: int, offered: deque[float]) -> None:
        rng, vocab = self.rng, self.vocab
        for j in range(requests):
            if self.stopping:
                break
            offered.append(time.perf_counter())
            request = pb.PredictRequest(
                session_id=sid, tokens=[rng.randrange(vocab)], request_id=j, end=j == requests - 1
            )
            await call.write(request)
        await call.done_writing()

    def sessions(self) -> list[asyncio.Task[None]]:
        a = self.args
        if a.mode == "multiplexed":
            groups = [range(s, min(s + a.per_message, a.sessions)) for s in range(0, a.sessions, a.per_message)]
            coros = [self.multiplexed(k, g) for k, g in enumerate(groups)]
        elif a.mode == "generate":
            coros = [self.generate(i, a.max_tokens) for i in range(a.sessions)]
        elif a.mode == "pipeline":
            coros = [self.pipeline(i, a.pipeline_requests) for i in range(a.sessions)]
        else:
            chunk = a.chunk if a.mode == "prefill" else 1
            coros = [self.pingpong(i, chunk) for i in range(a.sessions)]
        return [asyncio.create_task(c) for c in coros]

    # -- the run ---------------------------------------------------------------------------------------------
    async def run(self, interrupted: asyncio.Event) -> dict[str, Any]:
        cpu0 = time.process_time()
        tasks = self.sessions()
        # Our own CPU over the window, read from inside: sampled from outside, the last reading before
        # this process exits may fall before the window's end.
        window_cpu0: list[float] = []
        delay = max(self.tally.warm_end - time.perf_counter(), 0.0)
        asyncio.get_running_loop().call_later(delay, lambda: window_cpu0.append(time.process_time()))
        await self._wait(interrupted)
        stopped = time.perf_counter()
        window_cpu = time.process_time() - window_cpu0[0] if window_cpu0 else None
        self.stopping = True
        done, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                traceback.print_exception(exc, file=sys.stderr)
                self.tally.errors[f"CLIENT_{type(exc).__name__}"] += 1
        window = max(min(stopped, self.tally.end) - self.tally.warm_end, 0.0)
        result = self.result(window, time.process_time() - cpu0)
        to_monotonic = time.monotonic() - time.perf_counter()
        start = self.tally.warm_end + to_monotonic
        result["window_monotonic"] = [round(start, 4), round(start + window, 4)]
        result["window_cpu_s"] = round(window_cpu, 4) if window_cpu is not None else None
        return result

    async def _wait(self, interrupted: asyncio.Event) -> None:
        """Sleep until the window ends (or SIGTERM), printing a progress line every --progress seconds."""
        a, t = self.args, self.tally
        last_time, last_tokens = time.perf_counter(), 0
        while True:
            remaining = t.end - time.perf_counter()
            if remaining <= 0 or interrupted.is_set():
                return
            step = min(remaining, a.progress) if a.progress > 0 and not a.json else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), timeout=min(step, 3600))
            if a.progress > 0 and not a.json:
                now = time.perf_counter()
                phase = "warm-up" if now < t.warm_end else "measuring"
                rate = (t.tokens_total - last_tokens) / max(now - last_time, 1e-9)
                errors = sum(t.errors.values())
                p50 = t.latency.percentile(50) * 1e3 if t.latency.count else math.nan
                print(
                    f"[loadgen] {a.mode} C={a.sessions} {now - self.started:6.1f}s {phase}: {rate:8.0f} tokens/s, "
                    f"p50 {p50:.3f} ms, errors {errors}",
                    file=sys.stderr,
                    flush=True,
                )
                last_time, last_tokens = now, t.tokens_total

    def result(self, window: float, client_cpu: float) -> dict[str, Any]:
        a, t = self.args, self.tally
        streams = math.ceil(a.sessions / a.per_message) if a.mode == "multiplexed" else a.sessions
        out: dict[str, Any] = {
            "mode": a.mode,
            "target": a.target,
            "sessions": a.sessions,
            "streams": streams,
            "channels": a.channels,
            "chunk": a.chunk if a.mode == "prefill" else 1,
            "per_message": a.per_message if a.mode == "multiplexed" else 1,
            "max_tokens": a.max_tokens if a.mode == "generate" else None,
            "pipeline_requests": a.pipeline_requests if a.mode == "pipeline" else None,
            "vocab_size": self.vocab,
            "warmup_s": a.warmup,
            "duration_s": round(window, 3),
            "tokens": t.tokens,
            "messages": t.messages,
            "tokens_per_s": round(t.tokens / window, 1) if window else 0.0,
            "messages_per_s": round(t.messages / window, 1) if window else 0.0,
            "latency_kind": LATENCY_KINDS.get(a.mode, "message_round_trip"),
            "latency_ms": t.latency.summary_ms(),
            "tokens_total": t.tokens_total,
            "messages_total": t.messages_total,
            "errors": dict(t.errors),
            "error_count": sum(t.errors.values()),
            "client_cpu_s": round(client_cpu, 3),
            "session_prefix": self.prefix,
            "session_header": a.session_header,
        }
        if a.mode == "generate":
            out["first_token_ms"] = t.first_token.summary_ms()
        if a.mode == "pipeline":
            seconds = sorted(t.pipeline_seconds)
            out["pipelines_in_window"] = len(seconds)
            out["pipeline_seconds_p50"] = round(seconds[len(seconds) // 2], 3) if seconds else None
        return out


async def _close(call: Any) -> None:
    """Half-close so the server ends the stream with OK rather than seeing a cancellation."""
    try:
        await call.done_writing()
        await asyncio.wait_for(call.code(), timeout=2.0)
    except (aio.AioRpcError, TimeoutError, asyncio.InvalidStateError):
        pass


async def model_vocab(stub: pb_grpc.SequencePredictorStub, timeout: float) -> int:
    """Token ids are drawn below the model's vocabulary size; waits for the server to come up."""
    try:
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout, wait_for_ready=True)
    except aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return FALLBACK_VOCAB
        raise
    return info.architecture.vocab_size or FALLBACK_VOCAB


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    # Separate connections only when asked: channels with equal arguments share one subchannel.
    options = [("grpc.use_local_subchannel_pool", 1)] if args.channels > 1 else []
    channels = [aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        stubs = [pb_grpc.SequencePredictorStub(c) for c in channels]
        vocab = await model_vocab(stubs[0], args.connect_timeout)
        return await LoadGen(args, stubs, vocab).run(interrupted)
    finally:
        for channel in channels:
            await channel.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the server (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="pingpong")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions C (default: %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds after warm-up; 0: until SIGTERM")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=1024, help="prefill: tokens per message (default: %(default)s)")
    p.add_argument(
        "--per-message", type=int, default=64, help="multiplexed: sessions per message (default: %(default)s)"
    )
    p.add_argument("--max-tokens", type=int, default=128, help="generate: tokens per call (default: %(default)s)")
    p.add_argument(
        "--pipeline-requests", type=int, default=10_000, help="pipeline: requests per session (default: %(default)s)"
    )
    p.add_argument("--channels", type=int, default=1, help="gRPC connections to spread streams over (default: 1)")
    p.add_argument(
        "--session-header",
        action="store_true",
        help="send each single-session call's session id as x-session-id metadata, which a proxy hashes on "
        "(pingpong, prefill, generate, pipeline)",
    )
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server to answer")
    p.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines on stderr; 0: none")
    p.add_argument("--seed", type=int, default=None, help="seed for the random tokens (default: random)")
    p.add_argument("--json", action="store_true", help="print only the JSON result (one line), no progress")
    args = p.parse_args(argv)
    for name in ("sessions", "chunk", "per_message", "max_tokens", "pipeline_requests", "channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration < 0 or args.warmup < 0:
        p.error("--duration and --warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(amain(args))
    except aio.AioRpcError as exc:
        print(f"loadgen: cannot reach {args.target}: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        lat = result["latency_ms"]
        print(
            f"[loadgen] {result['mode']} C={result['sessions']}: {result['tokens_per_s']:.0f} tokens/s, "
            f"{result['messages_per_s']:.0f} msg/s, p50/p90/p99 {lat['p50']}/{lat['p90']}/{lat['p99']} ms, "
            f"errors {result['errors'] or 0}",
            file=sys.stderr,
        )
        print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
