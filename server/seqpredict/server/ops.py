"""The session operations a job may perform, on the inference thread, for one batch at a time.

Job kinds call these instead of reaching into the pool, so the rules live in one place:
the guard (expected position and incarnation) is checked before anything changes, a
session in the middle of a request is never evicted or expired, and reading a session
never touches it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.metrics import Metrics
from seqpredict.server.session_state import SessionState
from seqpredict.server.sessions import NO_INCARNATION, SessionPool, SessionRecord

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class SessionOps:
    def __init__(self, pool: SessionPool, metrics: Metrics, vocabulary: tuple[str, ...] = ()) -> None:
        self.pool = pool
        self.metrics = metrics
        self.vocabulary = vocabulary  # token id → text (Generate's stop strings)
        # Slots of sessions whose request spans batches (a long prefill, a generation): never evicted.
        self.busy: set[int] = set()
        # Slots used by the batch being run: not evicted to make room for another of its sessions.
        self.pinned: set[int] = set()
        self.now = 0.0
        # What the batch changed, for the shared store: sessions whose state or version changed, and
        # sessions ended, with the stored version they had.
        self.touched: set[str] = set()
        self.ended: dict[str, tuple[int, int]] = {}
        # With a shared store: the sessions it holds that this replica does not (see `durability`).
        self.directory: Callable[[str, str, int], list[SessionRecord]] | None = None

    def begin_batch(self, now: float) -> None:
        self.pinned = set(self.busy)
        self.now = now
        self.touched = set()
        self.ended = {}

    def open(
        self,
        session_id: str,
        expected_position: int | None,
        expected_incarnation: int | None,
        reset: bool,
        pending: int = 0,
    ) -> tuple[int, bool]:
        """The session's slot for a request that feeds it → (slot, created).

        Checks the guard first (`pending`: tokens that earlier requests of the same run will
        have fed by then), then creates the session if needed, or resets it when asked.
        """
        pool = self.pool
        slot = pool.slot(session_id)
        if expected_position is not None or expected_incarnation is not None:
            if slot is None:
                actual, incarnation = 0, NO_INCARNATION
            else:
                actual, incarnation = pool.position(slot) + pending, pool.incarnation(slot)
            if (expected_position is not None and actual != expected_position) or (
                expected_incarnation is not None and incarnation != expected_incarnation
            ):
                raise mismatch(session_id, actual, incarnation, expected_position, expected_incarnation)
        if slot is not None:
            pool.touch(session_id, slot, self.now)
        slot, created = pool.acquire(session_id, self.pinned, self.now)
        self.pinned.add(slot)
        if created:
            self.metrics.sessions_created.inc()
            self.touched.add(session_id)
        elif reset:
            pool.reset(slot)
            self.touched.add(session_id)
        return slot, created

    def slot_of_started(self, session_id: str) -> int:
        """The slot of a session whose request began in an earlier batch."""
        slot = self.pool.slot(session_id)
        if slot is None:  # cannot happen while it is busy; kept as a clear error rather than a KeyError
            raise RequestFailed(Code.INTERNAL, f"session {session_id!r} disappeared mid-request")
        self.pool.touch(session_id, slot, self.now)
        self.pinned.add(slot)
        return slot

    def record(self, session_id: str) -> SessionRecord:
        """Bookkeeping of an existing session, without touching it; NOT_FOUND otherwise."""
        record = self.pool.record(session_id)
        if record is None:
            raise not_found(session_id)
        return record

    def end(self, session_id: str, reason: str = "end") -> SessionRecord:
        """Release the session; its last bookkeeping, or NOT_FOUND."""
        record = self.record(session_id)
        slot = self.pool.slot(session_id)
        assert slot is not None
        self.busy.discard(slot)
        base = self.pool.base(slot)
        if base != (0, 0):
            self.ended[session_id] = base
        self.touched.discard(session_id)
        self.pool.release(session_id, reason)
        return record

    def install(
        self, session_id: str, state: SessionState, base: tuple[int, int], incarnation: int, created_at: float
    ) -> None:
        """Hold a session taken over from the shared store: its state, as version `base` of the store,
        as `incarnation` (the stored one, or a new one when the store may be behind what clients saw)."""
        tensors = self._tensors(state)
        slot, _ = self.pool.acquire(session_id, self.pinned, self.now)
        self.pinned.add(slot)
        self.pool.write_state(slot, tensors, state.position, incarnation)
        self.pool.set_base(slot, *base)
        self.pool.set_created(slot, created_at)
        if incarnation != base[0]:
            self.touched.add(session_id)  # the new incarnation must reach the store too

    def guarded(self, session_id: str, expected_position: int | None, expected_incarnation: int | None) -> int:
        """The slot of an existing session that passes the guard (NOT_FOUND / FAILED_PRECONDITION otherwise)."""
        slot = self.pool.slot(session_id)
        if slot is None:
            raise not_found(session_id)
        position, incarnation = self.pool.position(slot), self.pool.incarnation(slot)
        if (expected_position is not None and position != expected_position) or (
            expected_incarnation is not None and incarnation != expected_incarnation
        ):
            raise mismatch(session_id, position, incarnation, expected_position, expected_incarnation)
        return slot

    def fork(
        self,
        source: str,
        target: str,
        expected_position: int | None,
        expected_incarnation: int | None,
        replace: bool,
    ) -> SessionRecord:
        """`target` becomes a copy of `source`'s state and position, as a new incarnation; the source is untouched."""
        slot = self.guarded(source, expected_position, expected_incarnation)
        self.pinned.add(slot)
        tensors, position = self.pool.read_state(slot), self.pool.position(slot)
        return self._put(target, tensors, position, self.pool.new_incarnation(), replace)

    def export(self, session_id: str, expected_position: int | None, expected_incarnation: int | None) -> SessionState:
        """A copy of the session's state, as bytes; the session is untouched (not even its last use)."""
        return self.state_of(self.guarded(session_id, expected_position, expected_incarnation))

    def state_of(self, slot: int) -> SessionState:
        """The slot's state as bytes, with its position and incarnation."""
        tensors = self.pool.read_state(slot)
        # C order, little-endian: the bytes of each tensor as it is stored (every platform we run on is little-endian).
        data = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in tensors)
        return SessionState(self.pool.position(slot), self.pool.incarnation(slot), DTYPE_NAMES[tensors[0].dtype], data)

    def import_(self, session_id: str, state: SessionState, force: bool) -> SessionRecord:
        """Install `state` as `session_id`. Over an existing session only when it is exactly the exported
        state (same incarnation and position) or `force`: importing over a session that moved on, or
        over another history of it, would silently throw work away."""
        slot = self.pool.slot(session_id)
        if slot is not None and not force:
            position, incarnation = self.pool.position(slot), self.pool.incarnation(slot)
            if incarnation != state.incarnation:
                raise RequestFailed(
                    Code.FAILED_PRECONDITION,
                    f"session {session_id!r} exists as another history (incarnation {incarnation}, the blob's is"
                    f" {state.incarnation}); nothing imported (set force to replace it)",
                    position,
                    incarnation=incarnation,
                )
            if position != state.position:
                raise RequestFailed(
                    Code.FAILED_PRECONDITION,
                    f"session {session_id!r} moved on since the export (position {position}, exported at"
                    f" {state.position}); nothing imported (set force to replace it)",
                    position,
                    incarnation=incarnation,
                )
        return self._put(session_id, self._tensors(state), state.position, state.incarnation, replace=True)

    def _tensors(self, state: SessionState) -> list[Tensor]:
        """The state tensors of a checked blob's bytes (layout and size were checked by the codec)."""
        flat = torch.frombuffer(bytearray(state.data), dtype=torch.uint8).view(DTYPES[state.dtype])
        tensors = [part.reshape(self.pool.state_shape).clone() for part in flat.chunk(self.pool.num_states)]
        if not all(bool(t.isfinite().all()) for t in tensors):
            raise RequestFailed(Code.INVALID_ARGUMENT, "the blob's state holds values that are not finite")
        return tensors

    def _put(
        self, session_id: str, tensors: list[Tensor], position: int, incarnation: int, replace: bool
    ) -> SessionRecord:
        slot = self.pool.slot(session_id)
        if slot is not None:
            if not replace:
                raise RequestFailed(Code.ALREADY_EXISTS, f"session {session_id!r} already exists (set replace)")
            if slot in self.busy:
                raise RequestFailed(
                    Code.ABORTED, f"session {session_id!r} is in the middle of a request; nothing changed, retry"
                )
            base = self.pool.base(slot)  # the stored version the replacement overwrites
            self.pool.release(session_id, "replaced")
        else:
            base = (0, 0)
        slot, _ = self.pool.acquire(session_id, self.pinned, self.now)
        self.pinned.add(slot)
        self.metrics.sessions_created.inc()
        self.pool.write_state(slot, tensors, position, incarnation)
        self.pool.set_base(slot, *base)
        self.touched.add(session_id)
        return self.record(session_id)

    def list(self, prefix: str, after: str, limit: int) -> tuple[list[SessionRecord], bool]:
        """A page of sessions in name order → (records, whether more follow)."""
        held = [r for sid in self.pool.ids_after(after, prefix, limit + 1) if (r := self.pool.record(sid)) is not None]
        if self.directory is not None:  # and those held by other replicas, from the store
            stored = [r for r in self.directory(prefix, after, limit + 1) if r.session_id not in self.pool]
            held = sorted(held + stored, key=lambda r: r.session_id)[: limit + 1]
        return held[:limit], len(held) > limit


def not_found(session_id: str) -> RequestFailed:
    return RequestFailed(Code.NOT_FOUND, f"session {session_id!r} does not exist")


def mismatch(
    session_id: str,
    actual: int,
    incarnation: int,
    expected_position: int | None,
    expected_incarnation: int | None,
) -> RequestFailed:
    wanted = []
    if expected_position is not None:
        wanted.append(f"position {expected_position}")
    if expected_incarnation is not None:
        wanted.append(f"incarnation {expected_incarnation}")
    state = "does not exist" if incarnation == NO_INCARNATION else f"is at position {actual}, incarnation {incarnation}"
    return RequestFailed(
        Code.FAILED_PRECONDITION,
        f"session {session_id!r} {state}, not the expected {' and '.join(wanted)}; nothing was computed",
        actual,
        incarnation=incarnation,
    )
