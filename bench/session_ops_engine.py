"""The in-process cost of fork, export and import per session: the engine's share, with no RPC.

The engine runs these through SessionOps on its pool (seqpredict/server/ops.py), one job at
a time between batches; the frontend encodes an export into a SessionBlob and checks a blob
before import (session_blob.py). Both are timed here on a pool of the shipped model's shape,
beside one in-process model step at batch 1 (bench/inprocess.py's step), so the RPC figures
of bench/session_ops.py can be read as engine + frontend + transport.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch
from inprocess import single_token
from latency import LatencyHistogram

from seqpredict.models import FusedStepper, load_checkpoint
from seqpredict.server.config import default_checkpoint
from seqpredict.server.metrics import Metrics
from seqpredict.server.model_card import model_card
from seqpredict.server.ops import SessionOps
from seqpredict.server.service import build_model_info
from seqpredict.server.session_blob import BlobCodec
from seqpredict.server.sessions import SessionPool
from seqpredict.v1 import seqpredict_pb2 as pb

ENGINE_OPS = ("fork", "export", "import")
FRONTEND_OPS = ("blob encode", "blob decode")


def _pool_with_sessions(checkpoint: Any, sessions: int, history: int) -> tuple[SessionPool, list[str]]:
    """A pool holding `sessions` sessions at position `history` with random (finite) state."""
    cfg = checkpoint.config
    pool = SessionPool(
        num_states=len(cfg.state_names),
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        max_sessions=3 * sessions,  # the sources, their forks and their imports
        idle_ttl=1e9,
    )
    gen = torch.Generator().manual_seed(1234)
    ids = [f"ops-{i}" for i in range(sessions)]
    for sid in ids:
        slot, _ = pool.acquire(sid)
        state = [torch.randn(pool.state_shape, generator=gen) for _ in range(pool.num_states)]  # each (L, H)
        pool.write_state(slot, state, history, pool.new_incarnation())
    return pool, ids


def measure(sessions: int, rounds: int, history: int, step_duration: float) -> dict[str, Any]:
    torch.set_num_threads(1)  # as the server's default
    checkpoint = load_checkpoint(default_checkpoint())
    pool, ids = _pool_with_sessions(checkpoint, sessions, history)
    ops = SessionOps(pool, Metrics())
    card = model_card(checkpoint, "float32", pool.state_bytes_per_session)
    codec = BlobCodec(card, build_model_info(card, pb.ServerLimits()).architecture)
    hists = {op: LatencyHistogram() for op in (*ENGINE_OPS, *FRONTEND_OPS)}

    def timed(op: str, call: Callable[..., Any], *args: Any) -> Any:
        ops.begin_batch(time.monotonic())  # as the engine does before every batch
        t0 = time.perf_counter()
        out = call(*args)
        hists[op].record(time.perf_counter() - t0)
        return out

    blob_bytes = 0
    for _ in range(rounds):
        for i, sid in enumerate(ids):
            timed("fork", ops.fork, sid, f"fork-{i}", None, None, True)
            state = timed("export", ops.export, sid, None, None)
            blob = timed("blob encode", codec.encode, sid, state)
            blob_bytes = max(blob_bytes, len(blob))
            _, decoded = timed("blob decode", codec.decode, blob)
            timed("import", ops.import_, f"import-{i}", decoded, True)
    model = checkpoint.build_model()
    with torch.inference_mode():
        step = single_token(model, FusedStepper(model), 1, step_duration, random.Random(1234))
    return {
        "sessions": sessions,
        "rounds": rounds,
        "history_tokens": history,
        "state_bytes": pool.state_bytes_per_session,
        "blob_bytes": blob_bytes,
        "operations": {op: h.summary_us() for op, h in hists.items()},
        "step": {
            "p50_us": round(step["step_ms"]["p50"] * 1e3, 1),
            "mean_us": round(step["step_ms"]["mean"] * 1e3, 1),
            "count": step["steps"],
        },
    }
