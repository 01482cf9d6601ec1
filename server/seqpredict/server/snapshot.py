"""Session snapshots: every session's state written atomically, restored only onto the same model.

The inference thread copies the pool (`capture`, fast: one index_select per state tensor);
writing the file (`write`) happens elsewhere so serving is paused only for the copy. The
file is torch.save'd primitives and tensors, read back with weights_only=True, tagged
with the checkpoint's fingerprint: state from other weights would be silently wrong, so
a mismatch — or any damage — means starting clean, never half-loaded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from seqpredict.models.atomic import atomic_torch_save
from seqpredict.server.metrics import Metrics
from seqpredict.server.sessions import SessionPool

log = logging.getLogger(__name__)

FORMAT_TAG = "seqpredict-snapshot"
FORMAT_VERSION = 1


class SnapshotError(Exception):
    """A snapshot that cannot be restored; the message says why in one line."""


@dataclass
class Snapshot:
    fingerprint: str
    session_ids: list[str]  # least recently used first, so restoring keeps the LRU order
    positions: torch.Tensor  # (N,) int64
    created_at: torch.Tensor  # (N,) float64, unix seconds
    last_used_at: torch.Tensor  # (N,) float64
    states: list[torch.Tensor]  # each (num_layers, N, hidden), in the pool's storage dtype

    def __len__(self) -> int:
        return len(self.session_ids)


def capture(pool: SessionPool, fingerprint: str) -> Snapshot:
    """Copy every session out of the pool; call on the thread that owns the pool."""
    ids, slots = [], []
    for sid, slot in pool.items():
        ids.append(sid)
        slots.append(slot)
    index = torch.tensor(slots, dtype=torch.long)
    positions, created, last_used = pool.bookkeeping_arrays(slots)
    return Snapshot(
        fingerprint=fingerprint,
        session_ids=ids,
        positions=torch.from_numpy(positions),
        created_at=torch.from_numpy(created),
        last_used_at=torch.from_numpy(last_used),
        states=pool.export_states(index),
    )


def write(snapshot: Snapshot, path: str | os.PathLike[str]) -> None:
    """All or nothing: a crash while writing leaves the previous snapshot in place."""
    payload = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "fingerprint": snapshot.fingerprint,
        # Session ids cannot contain a newline (validated), so one string holds them all compactly.
        "session_ids": "\n".join(snapshot.session_ids),
        "positions": snapshot.positions,
        "created_at": snapshot.created_at,
        "last_used_at": snapshot.last_used_at,
        "states": snapshot.states,
    }
    atomic_torch_save(payload, path, mode=0o600)  # session state is the users' data: owner only


def read(path: str | os.PathLike[str], fingerprint: str, state_shapes: list[tuple[int, int]]) -> Snapshot:
    """Load and validate a snapshot for the model `fingerprint`; raises SnapshotError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SnapshotError(f"{path}: unreadable snapshot: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise SnapshotError(f"{path}: not a seqpredict snapshot")
    if payload.get("version") != FORMAT_VERSION:
        raise SnapshotError(f"{path}: unsupported snapshot version {payload.get('version')!r}")
    if payload.get("fingerprint") != fingerprint:
        taken_with = str(payload.get("fingerprint"))[:12]
        raise SnapshotError(f"{path}: taken with model {taken_with}, serving {fingerprint[:12]}: not restoring")
    try:
        ids_text = payload["session_ids"]
        ids = ids_text.split("\n") if ids_text else []
        snap = Snapshot(
            fingerprint=fingerprint,
            session_ids=ids,
            positions=payload["positions"],
            created_at=payload["created_at"],
            last_used_at=payload["last_used_at"],
            states=list(payload["states"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"{path}: malformed snapshot: {exc}") from None
    n = len(ids)
    if any(t.shape != (n,) for t in (snap.positions, snap.created_at, snap.last_used_at)):
        raise SnapshotError(f"{path}: bookkeeping arrays do not match {n} sessions")
    if len(snap.states) != len(state_shapes) or any(
        tuple(t.shape) != (layers, n, hidden) for t, (layers, hidden) in zip(snap.states, state_shapes, strict=False)
    ):
        raise SnapshotError(f"{path}: state tensors do not match the model's shape")
    if n and (int(snap.positions.min()) < 0 or not all(t.isfinite().all() for t in snap.states)):
        raise SnapshotError(f"{path}: negative positions or non-finite state values")
    return snap


def restore(pool: SessionPool, snapshot: Snapshot) -> int:
    """Fill an empty pool from `snapshot` (up to its session limit); returns how many sessions."""
    keep = min(len(snapshot), pool.max_sessions)
    skip = len(snapshot) - keep  # the least recently used go first when the limit shrank
    if skip:
        log.warning(
            "snapshot holds %d sessions, max_sessions is %d: dropping the %d least recently used",
            len(snapshot),
            pool.max_sessions,
            skip,
        )
    pool.restore_all(
        snapshot.session_ids[skip:],
        [t[:, skip:] for t in snapshot.states],
        snapshot.positions[skip:].numpy(),
        snapshot.created_at[skip:].numpy(),
        snapshot.last_used_at[skip:].numpy(),
    )
    return keep


class Snapshotter:
    """When to snapshot: periodically from the inference thread, once more at shutdown.

    A periodic capture runs on the inference thread (it owns the pool); the file is written
    by a background thread so serving pauses only for the copy. A write still in progress
    makes the next period skip rather than queue up.
    """

    def __init__(self, path: str, interval: float, pool: SessionPool, fingerprint: str, metrics: Metrics) -> None:
        self.path, self.interval, self.pool = path, interval, pool
        self.fingerprint, self.metrics = fingerprint, metrics
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqpredict-snapshot")
        self._pending: Future[None] | None = None
        self._next = time.monotonic() + interval if interval > 0 else math.inf

    def restore_at_start(self, state_shapes: list[tuple[int, int]]) -> int:
        """Restore if a snapshot of this model exists; anything wrong is logged and we start clean."""
        if not Path(self.path).exists():
            log.info("no snapshot at %s: starting with no sessions", self.path)
            return 0
        try:
            snap = read(self.path, self.fingerprint, state_shapes)
        except SnapshotError as exc:
            log.error("%s; starting with no sessions", exc)
            return 0
        count = restore(self.pool, snap)
        log.info("restored %d session(s) from %s", count, self.path)
        return count

    def maybe_periodic(self) -> None:
        if time.monotonic() < self._next or (self._pending is not None and not self._pending.done()):
            return
        self._next = time.monotonic() + self.interval
        started = time.perf_counter()
        snap = capture(self.pool, self.fingerprint)
        self._pending = self._writer.submit(self._write, snap, started)

    def final(self) -> None:
        """At shutdown, after the inference thread stopped: wait for a periodic write, then write once more."""
        if self._pending is not None:
            self._pending.result()
        self._write(capture(self.pool, self.fingerprint), time.perf_counter())
        self._writer.shutdown()

    def _write(self, snap: Snapshot, started: float) -> None:
        try:
            write(snap, self.path)
        except Exception:
            self.metrics.snapshot_failures.inc()
            log.exception("writing the snapshot to %s failed", self.path)
            return
        seconds = time.perf_counter() - started
        self.metrics.snapshot_seconds.observe(seconds)
        self.metrics.snapshot_sessions.set(len(snap))
        log.info("snapshot of %d session(s) written to %s in %.2fs", len(snap), self.path, seconds)
