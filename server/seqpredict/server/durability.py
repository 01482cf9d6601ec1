"""Sessions shared through the state store: what a replica loads before a batch and commits after it.

Runs on the engine's thread, around every batch (`Scheduler.step`):

- prepare: the batch's sessions this replica does not hold are loaded in one round trip and
  held as copies of the stored version — keeping the stored incarnation when the store is
  known to hold everything acknowledged (sync mode, or a copy committed at a drain), and as a
  new incarnation otherwise, so a client that sends its expected incarnation is told that its
  last acknowledged tokens may be lost instead of silently continuing from an older state.
- settle, in sync mode: before any answer of the batch leaves, the sessions it changed are
  committed and the ones it only read are checked, in one pipelined round trip of
  compare-and-sets. A refused session was stale here (another replica moved it on): its
  copy is dropped, its answers withheld, and its requests run again on the stored state in
  the next batch — or fail with ABORTED when part of them was already answered. So every
  answer sent was computed from the session's latest committed state.
- in async mode answers never wait: changed sessions are committed every `interval`, before
  an eviction, and at the drain.

When the store cannot be reached, sync fails requests with UNAVAILABLE (nothing is
acknowledged that is not committed) and health turns NOT_SERVING; async keeps serving the
sessions it holds, commits them when the store is back, and reports itself degraded. A
monitor thread pings the store to notice both; each outage is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from seqpredict.server.engine import Delivery, Run
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import Job
from seqpredict.server.metrics import Metrics
from seqpredict.server.ops import SessionOps
from seqpredict.server.session_state import SessionRecord, SessionState
from seqpredict.server.store import Commit, RedisStore, StoreUnavailable, Version

log = logging.getLogger(__name__)

MODES = ("off", "async", "sync")
PING_DOWN_S = 0.5  # how soon a replica notices the store is back
PING_UP_S = 2.0  # how soon an idle replica notices it is gone


def unavailable(what: str = "") -> RequestFailed:
    return RequestFailed(
        Code.UNAVAILABLE, f"the session store is unreachable{what}; nothing was computed, retry", limit="state_store"
    )


class Durability:
    def __init__(self, store: RedisStore, mode: str, interval_s: float, ops: SessionOps, metrics: Metrics) -> None:
        assert mode in ("async", "sync")
        self.store = store
        self.sync = mode == "sync"
        self.interval_s = interval_s
        self.ops = ops
        self.pool = ops.pool
        self.metrics = metrics
        self.up = True
        self._down_since = 0.0
        self.dirty: set[str] = set()  # async: changed since their last commit
        self.deletes: dict[str, Version] = {}  # async: ended, with the stored version they had
        self.evicted: dict[str, Commit] = {}  # async: evicted before their changes were committed
        self.next_flush = time.monotonic() + interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="seqpredict-store-monitor", daemon=True)
        self.pool.on_evict = self._evicting
        ops.directory = self.list_records

    def start(self) -> None:
        try:
            self.store.ping()
            log.info("session store %s reachable; durability %s", self.store.url, "sync" if self.sync else "async")
        except StoreUnavailable as exc:
            self._went_down(exc)
        self.metrics.state_store_up.set(1 if self.up else 0)
        self._monitor.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.store.close()

    # -- before a batch -------------------------------------------------------------------------------------
    def prepare(self, batch: list[Run], out: list[Delivery]) -> None:
        """Load the batch's sessions held elsewhere; fail the runs that cannot be served now."""
        pool, ops = self.pool, self.ops
        if self.sync and not self.up:
            for run in batch:
                self._fail_run(run, out, unavailable())
            return
        missing: dict[str, None] = {}
        for run in batch:
            for sid in _run_sessions(run):
                slot = pool.slot(sid)
                if slot is None:
                    missing[sid] = None
                else:
                    ops.pinned.add(slot)  # a session loaded below must not evict one of this batch
        if not missing:
            return
        started = time.perf_counter()
        try:
            found = self.store.load_many(missing)
        except StoreUnavailable as exc:
            self._went_down(exc)
            for run in batch:
                if self.sync or any(sid in missing for sid in _run_sessions(run)):
                    self._fail_run(run, out, unavailable(" and this replica does not hold the session"))
            return
        self.metrics.store_seconds.labels("load").observe(time.perf_counter() - started)
        self.metrics.store_sessions.labels("loaded").inc(len(found))
        failed: dict[str, RequestFailed] = {}
        for sid, stored in found.items():
            keep = self.sync or stored.clean
            state = SessionState(stored.position, stored.incarnation, stored.dtype, stored.state)
            incarnation = stored.incarnation if keep else pool.new_incarnation()
            try:
                ops.install(sid, state, (stored.incarnation, stored.position), incarnation, stored.created_at)
            except RequestFailed as exc:  # the session limit, with eviction off; or a corrupt entry
                failed[sid] = exc
            if not keep:
                self.dirty.add(sid)
        for run in batch:
            error = next((failed[sid] for sid in _run_sessions(run) if sid in failed), None)
            if error is not None:
                self._fail_run(run, out, error)

    # -- after a batch --------------------------------------------------------------------------------------
    def settle(self, batch: list[Run], out: list[Delivery]) -> None:
        """Sync: commit and check before the answers leave. Async: remember what to commit."""
        ops = self.ops
        if not self.sync:
            held = [sid for sid in ops.touched if sid in self.pool]
            self.dirty.update(held)
            for sid, version in ops.ended.items():
                self.deletes[sid] = version
                self.dirty.discard(sid)
            if self.evicted:  # their only copy is the one kept for the commit: commit now
                self.flush()
            return
        commits, checks = self._changes(batch, out)
        if not commits and not checks and not ops.ended:
            return
        started = time.perf_counter()
        try:
            refused = self.store.settle(commits, checks, ops.ended)
        except StoreUnavailable as exc:
            self._went_down(exc)
            self._redo(batch, out, set(_batch_sessions(batch)), unavailable(), retry=False)
            return
        self.metrics.store_seconds.labels("commit").observe(time.perf_counter() - started)
        self._committed([c for c in commits if c.session_id not in refused])
        if refused:
            self.metrics.store_conflicts.inc(len(refused))
            log.info("%d session(s) were moved on by another replica: running their requests again", len(refused))
            self._redo(batch, out, set(refused), _moved(), retry=True)
        for job, _ in out:
            job.released += 1

    def _changes(self, batch: list[Run], out: list[Delivery]) -> tuple[list[Commit], dict[str, Version]]:
        """The batch's sessions to commit (changed, and at a request boundary or answering) and to check."""
        pool, ops = self.pool, self.ops
        answering = {sid for job, _ in out for sid in _job_sessions(job)}
        commits: list[Commit] = []
        checks: dict[str, Version] = {}
        for sid in _batch_sessions(batch):
            slot = pool.slot(sid)
            if slot is None or sid in ops.ended:
                continue
            if sid in ops.touched:
                if slot not in ops.busy or sid in answering:  # mid-request, unanswered: not a state to keep
                    commits.append(self._commit_of(sid, slot))
            elif (base := pool.base(slot)) != (0, 0):
                checks[sid] = base
        return commits, checks

    def _redo(
        self, batch: list[Run], out: list[Delivery], sessions: set[str], error: RequestFailed, retry: bool
    ) -> None:
        """Withhold the answers of `sessions`' jobs in this batch, drop their copies here, and run the
        jobs again on the stored state (`retry`, when nothing of a job was answered yet) or fail them."""
        affected: set[int] = set()
        redo: list[Job] = []
        for run in batch:
            hit = False
            for job, _ in run.entries:
                hit = hit or any(sid in sessions for sid in _job_sessions(job))
                if hit:  # and every later job of the run: they ran on what the hit one left
                    affected.add(id(job))
                    redo.append(job)
        out[:] = [(job, payload) for job, payload in out if id(job) not in affected]
        for sid in sessions | {sid for job in redo for sid in _job_sessions(job)}:
            self._drop(sid)
        for job in redo:
            if retry and job.released == 0 and job.rewind():
                continue
            job.done = True
            if not retry:
                failure = error
            elif job.released:
                failure = _moved(" after part of this request was answered")
            else:
                failure = _moved(f" each of the {job.rewinds + 1} times this request ran")
            out.append((job, failure))
            self.metrics.count_failure(job.kind, failure)

    def _committed(self, commits: list[Commit]) -> None:
        pool = self.pool
        for c in commits:
            slot = pool.slot(c.session_id)
            if slot is not None:
                pool.set_base(slot, c.incarnation, c.position)
        self.metrics.store_sessions.labels("committed").inc(len(commits))

    # -- async ------------------------------------------------------------------------------------------------
    def flush(self, final: bool = False) -> int:
        """Commit what changed (at the drain: every session held, marked clean) → sessions left uncommitted."""
        self.next_flush = time.monotonic() + self.interval_s
        pool, ops = self.pool, self.ops
        if final:
            held = [sid for sid, slot in pool.items() if slot not in ops.busy]
            candidates = held if not self.sync else []
        else:
            candidates = [sid for sid in self.dirty if (slot := pool.slot(sid)) is not None and slot not in ops.busy]
        if not candidates and not self.evicted and not self.deletes:
            return 0
        if not self.up and not final:
            return len(self.dirty) + len(self.evicted)
        commits = list(self.evicted.values())
        commits += [self._commit_of(sid, slot, final) for sid in candidates if (slot := pool.slot(sid)) is not None]
        started = time.perf_counter()
        try:
            refused = self.store.settle(commits, {}, self.deletes)
        except StoreUnavailable as exc:
            self._went_down(exc)
            return len(self.dirty) + len(self.evicted)
        self.metrics.store_seconds.labels("commit").observe(time.perf_counter() - started)
        self.evicted.clear()
        self.deletes.clear()
        self._committed([c for c in commits if c.session_id not in refused])
        self.dirty.difference_update(c.session_id for c in commits)
        if refused:
            self.metrics.store_conflicts.inc(len(refused))
            log.warning(
                "%d session(s) were moved on by another replica before this one committed them; its copies dropped",
                len(refused),
            )
            for sid in refused:
                if (slot := pool.slot(sid)) is not None and slot not in ops.busy:
                    self._drop(sid)
        return len(self.dirty)

    def due(self, now: float) -> bool:
        return not self.sync and now >= self.next_flush

    def _evicting(self, session_id: str, slot: int, reason: str) -> None:
        """The pool is about to drop a session: keep its uncommitted changes for the next commit."""
        if reason == "capacity" and session_id in self.dirty:
            self.evicted[session_id] = self._commit_of(session_id, slot)
            self.dirty.discard(session_id)

    # -- ListSessions -----------------------------------------------------------------------------------------
    def list_records(self, prefix: str, after: str, limit: int) -> list[SessionRecord]:
        """Sessions in the store (not held here), in name order: what ListSessions adds to the held ones."""
        if not self.up:
            raise unavailable()
        try:
            ids = self.store.list_ids(prefix, after, limit)
            stored = self.store.records(ids)
            self.store.forget([sid for sid in ids if sid not in stored])  # expired by the idle TTL
        except StoreUnavailable as exc:
            self._went_down(exc)
            raise unavailable() from None
        ttl = self.pool.idle_ttl
        return [
            SessionRecord(sid, s.position, s.incarnation, s.created_at, s.last_used_at, s.last_used_at + ttl)
            for sid, s in stored.items()
        ]

    # -- helpers ----------------------------------------------------------------------------------------------
    def _commit_of(self, session_id: str, slot: int, clean: bool = False) -> Commit:
        pool = self.pool
        state = self.ops.state_of(slot)
        record = pool.record(session_id)
        assert record is not None
        return Commit(
            session_id,
            pool.base(slot),
            state.incarnation,
            state.position,
            state.dtype,
            state.data,
            record.created_at,
            record.last_used_at,
            clean,
        )

    def _drop(self, session_id: str) -> None:
        slot = self.pool.slot(session_id)
        if slot is not None:
            self.ops.busy.discard(slot)
            self.pool.release(session_id, "stale")
        self.dirty.discard(session_id)

    def _fail_run(self, run: Run, out: list[Delivery], error: RequestFailed) -> None:
        """Fail every job of the run; a session left in the middle of a request is dropped here."""
        if any(job.started for job, _ in run.entries):
            self._drop(run.session_id)
        for job, _ in run.entries:
            if not job.done:
                job.done = True
                out.append((job, error))
                self.metrics.count_failure(job.kind, error)
        run.entries = []

    def _went_down(self, exc: StoreUnavailable) -> None:
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            self.metrics.state_store_up.set(0)
            consequence = (
                "requests fail with UNAVAILABLE until it is back"
                if self.sync
                else "serving the sessions held here; their changes are committed when it is back"
            )
            log.error("session store unreachable (%s): %s", exc, consequence)
            self._wake.set()

    def _watch(self) -> None:
        """Ping the store: notice it is back (or, while idle, that it is gone)."""
        while not self._stop.is_set():
            self._wake.wait(PING_DOWN_S if not self.up else PING_UP_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.store.ping()
            except StoreUnavailable as exc:
                self._went_down(exc)
                continue
            if not self.up:
                log.warning("session store reachable again after %.1fs", time.monotonic() - self._down_since)
                self.up = True
                self.metrics.state_store_up.set(1)


def _moved(when: str = "") -> RequestFailed:
    return RequestFailed(
        Code.ABORTED, f"the session was moved on by another replica{when}; its state here was stale, retry"
    )


def _job_sessions(job: Job) -> Iterator[str]:
    """The sessions a job reads or writes: its own, and a fork's target."""
    if job.session_id:
        yield job.session_id
    target = getattr(job, "target", "")
    if target:
        yield target


def _run_sessions(run: Run) -> Iterator[str]:
    for job, _ in run.entries:
        yield from _job_sessions(job)


def _batch_sessions(batch: list[Run]) -> list[str]:
    return list(dict.fromkeys(sid for run in batch for sid in _run_sessions(run)))
