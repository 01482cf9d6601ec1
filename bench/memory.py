"""What an idle session costs: N sessions resident in our server, RSS per session vs raw state bytes.

Issue 4's target is 1,000,000 idle sessions of the default model at ≤ 1.3× their raw state
bytes (state + a small fixed overhead, not a dict of tensors per session). The server runs as
a child process with --max-sessions ≥ 1,000,000; sessions are created quickly through
PredictMany (1000 sessions per message, one token each, top_k=1 to keep the answers small,
a few streams in flight), and the server's VmRSS is read from /proc before and after — of
every process of it (supervisor, engine, frontends), so whatever a session costs any of them
counts. The peak is the sum of each process's own peak (VmHWM): an upper bound.

    .venv/bin/python bench/memory.py --sessions 20000     # 1,000,000 by default
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpc import aio
from procs import ServerProcess, proc_status_bytes, start_ours, wait_serving
from proctree import descendants

from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

TARGET_RATIO = 1.3


async def create_sessions(address: str, total: int, per_message: int, streams: int) -> tuple[int, dict[str, int]]:
    """Create sessions m-0 … m-(total-1); returns (sessions created, errors by code)."""
    errors: dict[str, int] = {}
    created = 0
    next_start = 0

    async def worker(stub: pb_grpc.SequencePredictorStub) -> None:
        nonlocal created, next_start
        call = stub.PredictMany()
        while next_start < total:
            start, next_start = next_start, min(next_start + per_message, total)
            requests = [pb.PredictRequest(session_id=f"m-{i}", tokens=[0], top_k=1) for i in range(start, next_start)]
            await call.write(pb.PredictManyRequest(requests=requests))
            response = await call.read()
            for r in response.responses:
                if r.HasField("error"):
                    errors[str(r.error.code)] = errors.get(str(r.error.code), 0) + 1
                elif r.created:
                    created += 1
        await call.done_writing()
        await call.code()

    async with aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as ch:
        stub = pb_grpc.SequencePredictorStub(ch)
        await asyncio.gather(*(worker(stub) for _ in range(streams)))
    return created, errors


async def state_bytes(address: str) -> int:
    async with aio.insecure_channel(address) as ch:
        info = await pb_grpc.SequencePredictorStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    return info.state_bytes_per_session


def peak_bytes(root: int) -> int:
    """The sum of every process's peak RSS in the tree (their peaks need not coincide: an upper bound)."""
    total = 0
    for stat in descendants(root):
        with contextlib.suppress(OSError, KeyError):  # gone since the tree was read
            total += proc_status_bytes(stat.pid, "VmHWM")
    return total


def measure(server: ServerProcess, sessions: int, per_message: int, streams: int, settle: float) -> dict[str, Any]:
    raw = asyncio.run(state_bytes(server.address))
    time.sleep(settle)
    before = server.rss_bytes()
    t0 = time.perf_counter()
    created, errors = asyncio.run(create_sessions(server.address, sessions, per_message, streams))
    elapsed = time.perf_counter() - t0
    time.sleep(settle)  # let housekeeping run and transient buffers be freed
    after = server.rss_bytes()
    active = server.metrics().get("seqpredict_sessions_active")
    per_session = (after - before) / max(created, 1)
    return {
        "sessions": sessions,
        "created": created,
        "sessions_active": active,
        "errors": errors,
        "create_seconds": round(elapsed, 2),
        "sessions_per_s": round(created / elapsed, 1) if elapsed else None,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_peak_bytes": peak_bytes(server.pid),
        "bytes_per_session": round(per_session, 1),
        "state_bytes_per_session": raw,
        "ratio": round(per_session / raw, 4) if raw else None,
        "target_ratio": TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=1_000_000, help="idle sessions to create (default: %(default)s)")
    p.add_argument("--per-message", type=int, default=1000, help="sessions created per PredictMany message")
    p.add_argument("--streams", type=int, default=4, help="PredictMany streams in flight (default: %(default)s)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS reading")
    p.add_argument("--log-dir", type=Path, default=None, help="where the server's log goes (default: a temp dir)")
    args = p.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="seqpredict-memory-"))
    max_sessions = max(args.sessions, 1_000_000)
    server = start_ours("memory-server", log_dir, ["--max-sessions", str(max_sessions), "--log-level", "WARNING"])
    try:
        wait_serving(server)
        result = measure(server, args.sessions, args.per_message, args.streams, args.settle)
    finally:
        server.stop()
    result["max_sessions"] = max_sessions
    print(
        f"[memory] {result['created']} sessions: {result['bytes_per_session']:.0f} B/session vs "
        f"{result['state_bytes_per_session']} B of state = {result['ratio']}x (target ≤ {TARGET_RATIO})",
        file=sys.stderr,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
