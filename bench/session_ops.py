"""What a session operation costs beside a Predict step: ForkSession, ExportSession, ImportSession.

Against a running server (the benchmark's `ours`), in a process of its own: N sessions are
given a history of H tokens, then each round times, for every session in turn and one call
at a time, a single-token Predict (on one open stream), GetSession, ForkSession (onto a
fork-i, replaced every round), ExportSession (and the blob's size) and ImportSession (of
that blob under import-i, forced over the previous round's). Interleaving the operations
session by session lets background load on the shared machine hit them all alike.

Then the same operations in-process (bench/session_ops_engine.py): the engine's share of
each — SessionOps on a pool, no RPC — beside one in-process model step, and the frontend's
share of export/import, the blob's encoding and checking.

    .venv/bin/python bench/session_ops.py --target 127.0.0.1:50051 --sessions 16 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from grpc import aio
from latency import LatencyHistogram

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

OPERATIONS = ("predict", "get", "fork", "export", "import")
# Exported blobs are ~4 kB for the shipped model; far larger models need more than gRPC's 4 MiB default.
MAX_MESSAGE = 64 * 1024 * 1024


class Timed:
    """One histogram per operation; errors counted by operation, never raised."""

    def __init__(self) -> None:
        self.hists = {op: LatencyHistogram() for op in OPERATIONS}
        self.errors: dict[str, int] = {}

    async def time(self, op: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            result = await call(*args)
        except aio.AioRpcError as exc:
            key = f"{op}: {exc.code().name}"
            self.errors[key] = self.errors.get(key, 0) + 1
            return None
        self.hists[op].record(time.perf_counter() - t0)
        return result


async def over_rpc(target: str, sessions: int, rounds: int, history: int, seed: int | None) -> dict[str, Any]:
    rng = random.Random(seed)
    prefix = f"so{os.getpid()}-{secrets.token_hex(3)}"
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    timed, blob_bytes = Timed(), []
    async with aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.SequencePredictorStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60, wait_for_ready=True)
        vocab = info.architecture.vocab_size
        stream = stub.Predict()

        async def predict(sid: str, tokens: list[int]) -> pb.PredictResponse:
            await stream.write(pb.PredictRequest(session_id=sid, tokens=tokens))
            answer = await stream.read()
            if answer.HasField("error"):
                raise RuntimeError(f"Predict for {sid} failed: {answer.error.message}")
            return answer

        ids = [f"{prefix}-{i}" for i in range(sessions)]
        for sid in ids:  # the history, one message per session
            await predict(sid, [rng.randrange(vocab) for _ in range(history)])
        for _ in range(rounds):
            for i, sid in enumerate(ids):
                await timed.time("predict", predict, sid, [rng.randrange(vocab)])
                await timed.time("get", stub.GetSession, pb.GetSessionRequest(session_id=sid))
                target = f"{prefix}-fork-{i}"
                fork = pb.ForkSessionRequest(source_session_id=sid, target_session_id=target, replace=True)
                await timed.time("fork", stub.ForkSession, fork)
                exported = await timed.time("export", stub.ExportSession, pb.ExportSessionRequest(session_id=sid))
                if exported is None:
                    continue
                blob_bytes.append(len(exported.blob))
                again = pb.ImportSessionRequest(session_id=f"{prefix}-import-{i}", blob=exported.blob, force=True)
                await timed.time("import", stub.ImportSession, again)
        await stream.done_writing()
        await stream.code()
        for sid in (*ids, *(f"{prefix}-{k}-{i}" for k in ("fork", "import") for i in range(sessions))):
            with contextlib.suppress(aio.AioRpcError):  # a fork or import that failed above: counted there
                await stub.EndSession(pb.EndSessionRequest(session_id=sid))
    return {
        "target": target,
        "sessions": sessions,
        "rounds": rounds,
        "history_tokens": history,
        "operations": {op: h.summary_us() for op, h in timed.hists.items()},
        "blob_bytes": max(blob_bytes) if blob_bytes else None,
        "errors": timed.errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="HOST:PORT of our server")
    p.add_argument("--sessions", type=int, default=64, help="sessions timed (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="times each operation runs per session (default: %(default)s)")
    p.add_argument("--history", type=int, default=512, help="tokens each session has consumed (default: %(default)s)")
    p.add_argument("--step-duration", type=float, default=2.0, help="seconds of the in-process step figure")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-engine", action="store_true", help="only the RPC figures (no torch in this process)")
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "rpc": asyncio.run(over_rpc(args.target, args.sessions, args.rounds, args.history, args.seed))
    }
    if not args.no_engine:
        import session_ops_engine  # torch: loaded only for this part

        result["engine"] = session_ops_engine.measure(args.sessions, args.rounds, args.history, args.step_duration)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
