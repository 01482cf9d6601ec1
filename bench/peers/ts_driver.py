"""Load generator for TorchServe: our ping-pong load shape over its StreamPredictions2, in a process of its own.

The same shape and measuring as bench/loadgen.py's pingpong mode, with its `Tally`: C
closed-loop sessions, each on its own bidi stream (one TorchServe sequence per session, the
sequence_id field naming it), one random token per message and one message in flight; a
warm-up, then a measured window in which only answers completing inside it count; p50/p99
of the message round trip; errors counted by gRPC code (a PredictionResponse carrying a
`status` is an in-band error, like a seqpredict response carrying `error`).

Every answer of the first --verify-sessions sessions is kept with the tokens sent, and after
the run (outside the window, so it costs the measurement nothing) each is compared with the
reference — the session's tokens fed alone through the model (tests/reference.py), top-k
probabilities within 1e-5, and the position TorchServe reports equal to the tokens sent.

Runs with the TorchServe virtualenv's Python, which has seqpredict and the generated
inference_pb2 (bench/peers/torchserve/stubs.py) on its path:

    bench/peers/.venv-torchserve/bin/python bench/peers/ts_driver.py --target 127.0.0.1:7070 --sessions 16
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
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent
sys.path[:0] = [str(PEERS.parent), str(PEERS.parent.parent)]  # bench/ (loadgen), the repo (tests/)

import torch  # noqa: E402
from grpc import aio  # noqa: E402
from loadgen import CODE_NAMES, RETRY_S, Tally  # noqa: E402

from seqpredict.models import load_checkpoint  # noqa: E402
from seqpredict.server.config import default_checkpoint  # noqa: E402
from tests.reference import assert_top_matches, reference_probabilities  # noqa: E402

MODEL_NAME = "seqlstm"
Top = namedtuple("Top", "id probability")  # what assert_top_matches reads from an answer


@dataclass
class Tracked:
    """One verified session: every token sent and every answer, in order."""

    tokens: list[int] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    broken: bool = False  # an error left it unknown whether the server stepped the token


class Driver:
    def __init__(self, args: argparse.Namespace, stub: Any, pb: Any, vocab: int) -> None:
        self.args, self.stub, self.pb, self.vocab = args, stub, pb, vocab
        self.rng = random.Random(args.seed)
        self.prefix = f"ts{os.getpid()}-{secrets.token_hex(4)}"
        self.stopping = False
        self.started = time.perf_counter()
        end = self.started + args.warmup + args.duration
        self.tally = Tally(self.started + args.warmup, end)
        self.tracked = {i: Tracked() for i in range(min(args.verify_sessions, args.sessions))}

    async def session(self, i: int) -> None:
        """One sequence on its own StreamPredictions2 stream, one token per message, one in flight."""
        sid, rng, tally, pb = f"{self.prefix}-{i}", self.rng, self.tally, self.pb
        tracked = self.tracked.get(i)
        while not self.stopping:
            call = self.stub.StreamPredictions2()
            try:
                while not self.stopping:
                    token = rng.randrange(self.vocab)
                    request = pb.PredictionsRequest(
                        model_name=MODEL_NAME, sequence_id=sid, input={"data": str(token).encode()}
                    )
                    sent = time.perf_counter()
                    await call.write(request)
                    response = await call.read()
                    now = time.perf_counter()
                    if response is aio.EOF:
                        raise RuntimeError("server ended the stream early")
                    if response.HasField("status") and response.status.code != 0:
                        tally.errors[CODE_NAMES.get(response.status.code, str(response.status.code))] += 1
                        if tracked is not None:
                            tracked.broken = True
                        continue
                    tally.answered(now, now - sent, 1)
                    if tracked is not None and not tracked.broken:
                        tracked.tokens.append(token)
                        tracked.answers.append(json.loads(response.prediction))
                await _close(call)
            except aio.AioRpcError as exc:
                if self.stopping:
                    return
                tally.errors[exc.code().name] += 1
                if tracked is not None:
                    tracked.broken = True
                await asyncio.sleep(RETRY_S)
            finally:
                call.cancel()

    async def run(self, interrupted: asyncio.Event) -> dict[str, Any]:
        cpu0 = time.process_time()
        tasks = [asyncio.create_task(self.session(i)) for i in range(self.args.sessions)]
        await self._wait(interrupted)
        stopped = time.perf_counter()
        self.stopping = True
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        window = max(min(stopped, self.tally.end) - self.tally.warm_end, 0.0)
        return self.result(window, time.process_time() - cpu0)

    async def _wait(self, interrupted: asyncio.Event) -> None:
        t, a = self.tally, self.args
        while (remaining := t.end - time.perf_counter()) > 0 and not interrupted.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), timeout=min(remaining, a.progress or remaining))
            if a.progress and not a.json:
                p50 = t.latency.percentile(50) * 1e3 if t.latency.count else math.nan
                print(
                    f"[ts-driver] C={a.sessions} {time.perf_counter() - self.started:6.1f}s: "
                    f"{t.tokens_total} answers, p50 {p50:.3f} ms, errors {sum(t.errors.values())}",
                    file=sys.stderr,
                    flush=True,
                )

    def result(self, window: float, client_cpu: float) -> dict[str, Any]:
        """The keys of loadgen's pingpong result, plus what the verification found."""
        a, t = self.args, self.tally
        return {
            "mode": "pingpong",
            "target": a.target,
            "sessions": a.sessions,
            "streams": a.sessions,
            "chunk": 1,
            "vocab_size": self.vocab,
            "warmup_s": a.warmup,
            "duration_s": round(window, 3),
            "tokens": t.tokens,
            "messages": t.messages,
            "tokens_per_s": round(t.tokens / window, 1) if window else 0.0,
            "messages_per_s": round(t.messages / window, 1) if window else 0.0,
            "latency_kind": "message_round_trip",
            "latency_ms": t.latency.summary_ms(),
            "tokens_total": t.tokens_total,
            "messages_total": t.messages_total,
            "errors": dict(t.errors),
            "error_count": sum(t.errors.values()),
            "client_cpu_s": round(client_cpu, 3),
            "session_prefix": self.prefix,
        }


def verify(tracked: dict[int, Tracked], model: torch.nn.Module) -> dict[str, Any]:
    """Compare every kept answer with the reference; the first few mismatches are reported."""
    checked, wrong, broken, examples = 0, 0, 0, []
    for i, session in tracked.items():
        broken += session.broken
        if not session.answers:
            continue
        reference = reference_probabilities(model, session.tokens)  # (n + 1, V)
        for k, answer in enumerate(session.answers, start=1):
            checked += 1
            where = f"session {i} answer {k}"
            try:
                assert answer["position"] == k, f"{where}: position {answer['position']}, sent {k} tokens"
                top = [Top(t, p) for t, p in zip(answer["ids"], answer["probs"], strict=True)]
                assert_top_matches(top, reference[k], where)
            except AssertionError as exc:
                wrong += 1
                if len(examples) < 5:
                    examples.append(str(exc).splitlines()[0][:300])
    return {"sessions": len(tracked), "checked": checked, "wrong": wrong, "broken": broken, "examples": examples}


async def _close(call: Any) -> None:
    """Half-close so TorchServe completes the stream rather than seeing a cancellation."""
    try:
        await call.done_writing()
        await asyncio.wait_for(call.code(), timeout=2.0)
    except (aio.AioRpcError, TimeoutError, asyncio.InvalidStateError):
        pass


async def amain(args: argparse.Namespace, pb: Any, pb_grpc: Any, vocab: int) -> tuple[Driver, dict[str, Any]]:
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, interrupted.set)
    async with aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=args.connect_timeout)
        driver = Driver(args, pb_grpc.InferenceAPIsServiceStub(channel), pb, vocab)
        return driver, await driver.run(interrupted)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:7070", help="TorchServe's gRPC inference address")
    p.add_argument("--stubs", type=Path, required=True, help="directory of the generated inference_pb2*.py")
    p.add_argument("--checkpoint", default=None, help="the checkpoint TorchServe serves (default: the shipped one)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions C (default: %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds after warm-up")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring (default: %(default)s)")
    p.add_argument("--verify-sessions", type=int, default=4, help="sessions whose every answer is checked")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines on stderr; 0: none")
    p.add_argument("--seed", type=int, default=None, help="seed for the random tokens (default: random)")
    p.add_argument("--json", action="store_true", help="print only the JSON result (one line), no progress")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.duration <= 0 or args.warmup < 0:
        p.error("--sessions must be >= 1, --duration > 0 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(args.stubs))
    import inference_pb2
    import inference_pb2_grpc

    torch.set_num_threads(1)  # the reference runs after the window, beside nothing; one thread is plenty
    model = load_checkpoint(args.checkpoint or default_checkpoint()).build_model()
    try:
        driver, outcome = asyncio.run(amain(args, inference_pb2, inference_pb2_grpc, model.config.vocab_size))
    except (aio.AioRpcError, TimeoutError) as exc:
        print(f"ts_driver: cannot reach {args.target}: {exc!r}", file=sys.stderr)
        return 2
    result = {**outcome, "verified": verify(driver.tracked, model)}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
