"""When and where snapshots are written: restored at start, periodically, once more at a drain.

The file at the snapshot path is the users' data or someone else's, so the rules are strict:
- at start, a snapshot of this model is restored; a snapshot of ours that cannot be used
  (another model, another version, damaged inside) is moved aside, never deleted; a file
  that is not a snapshot of ours stops the server (StartupError) — we never replace it;
- temporaries of writes a crash interrupted are removed;
- a write never replaces a file that appeared at the path after our last write;
- a periodic failure is logged once per streak of failures, and counted every time; a
  failure of the final snapshot is returned, so the process exits non-zero.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from seqpredict.server.errors import StartupError
from seqpredict.server.metrics import Metrics
from seqpredict.server.sessions import SessionPool
from seqpredict.server.snapshot import NotASnapshot, Snapshot, SnapshotError, capture, read, restore, stale_temporaries
from seqpredict.server.snapshot import write as write_file

log = logging.getLogger(__name__)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Snapshotter:
    """Periodic captures run on the inference thread (it owns the pool); files are written by a
    background thread so serving pauses only for the copy. A write still in progress makes the
    next period skip rather than queue up."""

    def __init__(self, path: str, interval: float, pool: SessionPool, fingerprint: str, metrics: Metrics) -> None:
        self.path, self.interval, self.pool = Path(path), interval, pool
        self.fingerprint, self.metrics = fingerprint, metrics
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqpredict-snapshot")
        self._pending: Future[bool] | None = None
        self._next = time.monotonic() + interval if interval > 0 else math.inf
        self._ours: tuple[int, int] | None = None  # the file at `path` we restored or last wrote
        self._failures = 0  # consecutive failed writes

    # -- start-up --------------------------------------------------------------------------------------
    def restore_at_start(self, state_shapes: list[tuple[int, int]]) -> int:
        """Clean up, then restore if a snapshot of this model exists; raises StartupError for a foreign file."""
        for stale in stale_temporaries(self.path):
            stale.unlink(missing_ok=True)
            log.warning("removed %s, left by a snapshot write that was interrupted", stale)
        if not self.path.exists():
            log.info("no snapshot at %s: starting with no sessions", self.path)
            return 0
        try:
            snap = read(self.path, self.fingerprint, state_shapes)
        except NotASnapshot as exc:
            raise StartupError(
                f"snapshot_path: {exc}; it would be overwritten: move it away or choose another path"
            ) from None
        except SnapshotError as exc:
            aside = self.path.with_name(f"{self.path.name}.rejected-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(self.path, aside)
            log.error("%s; moved it to %s and starting with no sessions", exc, aside)
            return 0
        count = restore(self.pool, snap)
        self._ours = _identity(self.path)
        kept = "kept" if snap.clean else "new (the snapshot was not taken at a drain)"
        log.info("restored %d session(s) from %s; incarnations %s", count, self.path, kept)
        return count

    # -- periodic, on the inference thread -----------------------------------------------------------------
    def maybe_periodic(self) -> None:
        if time.monotonic() < self._next or (self._pending is not None and not self._pending.done()):
            return
        self._next = time.monotonic() + self.interval
        started = time.perf_counter()
        snap = capture(self.pool, self.fingerprint)
        self._pending = self._writer.submit(self._write, snap, started)

    # -- the drain, after the inference thread stopped ---------------------------------------------------
    def final(self) -> bool:
        """Wait for a periodic write, then write once more; False (logged, counted) when it failed."""
        if self._pending is not None:
            self._pending.result()
        ok = self._write(capture(self.pool, self.fingerprint, clean=True), time.perf_counter(), final=True)
        self._writer.shutdown()
        return ok

    def _write(self, snap: Snapshot, started: float, final: bool = False) -> bool:
        try:
            if _identity(self.path) not in (None, self._ours):
                raise SnapshotError(f"{self.path} was replaced by a file we did not write; not overwriting it")
            write_file(snap, self.path)
        except Exception as exc:
            self.metrics.snapshot_failures.inc()
            self._failures += 1
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if final:
                log.error("final snapshot to %s FAILED, %d session(s) not saved: %s", self.path, len(snap), reason)
            elif self._failures == 1:
                log.error(
                    "snapshot to %s failed: %s (retrying every %.0fs; logged again when it succeeds)",
                    self.path,
                    reason,
                    self.interval,
                )
            return False
        self._ours = _identity(self.path)
        if self._failures:
            log.info("snapshot to %s succeeded again after %d failure(s)", self.path, self._failures)
            self._failures = 0
        seconds = time.perf_counter() - started
        self.metrics.snapshot_seconds.observe(seconds)
        self.metrics.snapshot_sessions.set(len(snap))
        log.info("snapshot of %d session(s) written to %s in %.2fs", len(snap), self.path, seconds)
        return True
