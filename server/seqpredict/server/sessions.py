"""The state pool: every session's recurrent state in preallocated tensors, indexed by slot.

A batch is one gather (`index_select` on the batch dimension) and one scatter
(`index_copy_`). An idle session costs its state bytes, 32 bytes of bookkeeping arrays
and one ordered-dict entry; nothing else is allocated per session. The pool is touched
only by the inference thread, so it holds no locks.

Every session has an *incarnation*: a random non-zero 64-bit value chosen when it is
created and chosen again when it is reset. Position alone is not a version — after a
reset, an end and re-creation, or an eviction, a session can reach the same position with
different content — so clients that must not continue on the wrong state check both.

Layout: one tensor per state name ("h", "c"), each (num_layers, capacity, hidden) — the
nn.LSTM layout with the batch dimension standing for slots. Storage may be bf16/fp16 to
halve idle memory; gathers always return float32.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from sortedcontainers import SortedList
from torch import Tensor

from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.session_state import SessionRecord

log = logging.getLogger(__name__)

State = tuple[Tensor, ...]


NO_INCARNATION = 0  # what a session that does not exist has


class SessionPool:
    """Slots, positions, LRU order and idle expiry for up to `max_sessions` sessions."""

    def __init__(
        self,
        num_states: int,
        num_layers: int,
        hidden_size: int,
        max_sessions: int,
        idle_ttl: float,
        evict_lru: bool = True,
        dtype: torch.dtype = torch.float32,
        initial_capacity: int = 1024,
        on_end: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_ttl = idle_ttl
        self.evict_lru = evict_lru
        self.dtype = dtype
        self.clock = clock
        self._on_end = on_end or (lambda reason, n: None)
        # Told before a session is evicted to make room (the shared store commits what it has not yet).
        self.on_evict: Callable[[str, int, str], None] | None = None
        self._shape = (num_layers, hidden_size)
        self._num_states = num_states
        self._capacity = 0
        self._states: list[Tensor] = []
        self._position = np.zeros(0, dtype=np.int64)
        self._incarnation = np.zeros(0, dtype=np.uint64)
        # The version (incarnation, position) of the session in the shared store this copy was derived
        # from; (0, 0): none. Compare-and-set commits name it (see `store`).
        self._base_incarnation = np.zeros(0, dtype=np.uint64)
        self._base_position = np.zeros(0, dtype=np.int64)
        self._created = np.zeros(0, dtype=np.float64)
        self._last_used = np.zeros(0, dtype=np.float64)
        self._free: list[int] = []
        self._high_water = 0
        # session id → slot, least recently used first: eviction and expiry pop from the front.
        self._lru: OrderedDict[str, int] = OrderedDict()
        # The same ids in name order, for listing a page at a time in O(log n + page).
        self._ids: SortedList = SortedList()
        # Incarnations need to be unpredictable across restarts, not secret: a seeded PRNG is enough.
        self._random = random.Random(int.from_bytes(os.urandom(16), "little"))
        self._grow(min(initial_capacity, max_sessions))

    # -- size -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._lru

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def state_bytes(self) -> int:
        """Bytes allocated for state (all slots, used or not)."""
        return sum(t.numel() * t.element_size() for t in self._states)

    @property
    def state_shape(self) -> tuple[int, int]:
        """Each state tensor of one session: (num_layers, hidden)."""
        return self._shape

    @property
    def num_states(self) -> int:
        return self._num_states

    @property
    def state_bytes_per_session(self) -> int:
        L, H = self._shape
        return self._num_states * L * H * torch.empty(0, dtype=self.dtype).element_size()

    def _grow(self, capacity: int) -> None:
        """Reallocate to `capacity` slots, copying the used ones (doubling keeps this amortised O(1))."""
        L, H = self._shape
        new_states = [torch.empty((L, capacity, H), dtype=self.dtype) for _ in range(self._num_states)]
        used = self._high_water
        for new, old in zip(new_states, self._states, strict=False):
            new[:, :used] = old[:, :used]
        self._states = new_states
        for name in ("_position", "_incarnation", "_base_incarnation", "_base_position", "_created", "_last_used"):
            old = getattr(self, name)
            arr = np.zeros(capacity, dtype=old.dtype)
            arr[:used] = old[:used]
            setattr(self, name, arr)
        self._capacity = capacity

    # -- lookup and lifecycle -----------------------------------------------------------------
    def slot(self, session_id: str) -> int | None:
        return self._lru.get(session_id)

    def position(self, slot: int) -> int:
        return int(self._position[slot])

    def incarnation(self, slot: int) -> int:
        return int(self._incarnation[slot])

    def new_incarnation(self) -> int:
        return self._random.getrandbits(64) or 1

    def acquire(
        self, session_id: str, pinned: set[int] | frozenset[int] = frozenset(), now: float | None = None
    ) -> tuple[int, bool]:
        """The session's slot, creating it (zero state, position 0, a new incarnation) if needed → (slot, created).

        At the session limit the least recently used session not in `pinned` (the batch being
        formed, sessions in the middle of a request) is evicted, or — with eviction off —
        RESOURCE_EXHAUSTED is raised.
        """
        slot = self._lru.get(session_id)
        if slot is not None:
            return slot, False
        if len(self._lru) >= self.max_sessions:
            if not self.evict_lru:
                raise RequestFailed(
                    Code.RESOURCE_EXHAUSTED,
                    f"session limit of {self.max_sessions} reached and eviction is off",
                    limit="sessions",
                )
            victim = next((sid for sid, s in self._lru.items() if s not in pinned), None)
            if victim is None:
                raise RequestFailed(
                    Code.RESOURCE_EXHAUSTED, f"session limit of {self.max_sessions} reached", limit="sessions"
                )
            if self.on_evict is not None:
                self.on_evict(victim, self._lru[victim], "capacity")
            self.release(victim, "capacity")
        slot = self._take_slot()
        for t in self._states:
            t[:, slot].zero_()
        now = self.clock() if now is None else now
        self._position[slot] = 0
        self._incarnation[slot] = self.new_incarnation()
        self._base_incarnation[slot] = 0
        self._base_position[slot] = 0
        self._created[slot] = now
        self._last_used[slot] = now
        self._lru[session_id] = slot
        self._ids.add(session_id)
        return slot, True

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._high_water == self._capacity:
            self._grow(min(self.max_sessions, max(2 * self._capacity, 16)))
        self._high_water += 1
        return self._high_water - 1

    def release(self, session_id: str, reason: str) -> int | None:
        """Free the session's slot; returns its last position (None if it did not exist)."""
        slot = self._lru.pop(session_id, None)
        if slot is None:
            return None
        self._ids.remove(session_id)
        self._free.append(slot)
        self._on_end(reason, 1)
        return int(self._position[slot])

    def reset(self, slot: int) -> None:
        """Back to the zero state at position 0, as a new incarnation: the old history is gone."""
        for t in self._states:
            t[:, slot].zero_()
        self._position[slot] = 0
        self._incarnation[slot] = self.new_incarnation()

    def base(self, slot: int) -> tuple[int, int]:
        """The stored version this copy derives from: (incarnation, position); (0, 0) for none."""
        return int(self._base_incarnation[slot]), int(self._base_position[slot])

    def set_created(self, slot: int, created_at: float) -> None:
        self._created[slot] = created_at

    def set_base(self, slot: int, incarnation: int, position: int) -> None:
        self._base_incarnation[slot] = incarnation
        self._base_position[slot] = position

    def version(self, slot: int) -> tuple[int, int]:
        """The copy's own (incarnation, position)."""
        return int(self._incarnation[slot]), int(self._position[slot])

    def touch(self, session_id: str, slot: int, now: float) -> None:
        self._last_used[slot] = now
        self._lru.move_to_end(session_id)

    def advance_all(self, slots: list[int], tokens: list[int]) -> list[int]:
        """Add `tokens[i]` to the position of `slots[i]` (distinct slots); returns the new positions."""
        self._position[slots] += tokens
        return self._position[slots].tolist()

    def record(self, session_id: str) -> SessionRecord | None:
        """The session's bookkeeping, read without touching it: inspection keeps nothing alive."""
        slot = self._lru.get(session_id)
        if slot is None:
            return None
        last = float(self._last_used[slot])
        return SessionRecord(
            session_id,
            int(self._position[slot]),
            int(self._incarnation[slot]),
            float(self._created[slot]),
            last,
            last + self.idle_ttl,
        )

    def expire_idle(self, now: float | None = None, protected: set[int] | frozenset[int] = frozenset()) -> int:
        """Release every session idle for longer than the TTL, except `protected` slots (in the
        middle of a request); oldest first, so this is O(expired)."""
        deadline = (self.clock() if now is None else now) - self.idle_ttl
        expired = []
        for sid, slot in self._lru.items():
            if self._last_used[slot] > deadline:
                break
            if slot not in protected:
                expired.append(sid)
        for sid in expired:
            self.release(sid, "ttl")
        return len(expired)

    def release_all(self, reason: str) -> int:
        ids = list(self._lru)
        for sid in ids:
            self.release(sid, reason)
        return len(ids)

    # -- state ----------------------------------------------------------------------------------
    def gather(self, slots: Tensor) -> State:
        """State of `slots` (B,) as float32 tensors (num_layers, B, hidden)."""
        return tuple(t.index_select(1, slots).float() for t in self._states)

    def scatter(self, slots: Tensor, state: State) -> None:
        for t, s in zip(self._states, state, strict=True):
            t.index_copy_(1, slots, s.to(self.dtype))

    def ids_after(self, after: str, prefix: str, limit: int) -> list[str]:
        """Up to `limit` session ids starting with `prefix`, in name order, after `after` (exclusive)."""
        if after >= prefix:
            candidates = self._ids.irange(minimum=after, inclusive=(False, True))
        else:
            candidates = self._ids.irange(minimum=prefix)
        found: list[str] = []
        for sid in candidates:
            if len(found) == limit or not sid.startswith(prefix):
                break
            found.append(sid)
        return found

    def read_state(self, slot: int) -> list[Tensor]:
        """Copies of one session's state tensors, each (num_layers, hidden), in storage dtype."""
        return [t[:, slot].clone() for t in self._states]

    def write_state(self, slot: int, state: list[Tensor], position: int, incarnation: int) -> None:
        """Overwrite one session's state and bookkeeping (fork and import)."""
        for t, s in zip(self._states, state, strict=True):
            t[:, slot] = s.to(self.dtype)
        self._position[slot] = position
        self._incarnation[slot] = incarnation

    def items(self) -> Iterator[tuple[str, int]]:
        """(session id, slot), least recently used first."""
        return iter(list(self._lru.items()))

    def bookkeeping_arrays(self, slots: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (positions, incarnations, created_at, last_used_at) for `slots`."""
        return (
            self._position[slots].copy(),
            self._incarnation[slots].copy(),
            self._created[slots].copy(),
            self._last_used[slots].copy(),
        )

    def export_states(self, slots: Tensor) -> list[Tensor]:
        """Copies of the state of `slots`, in storage dtype: each (num_layers, N, hidden)."""
        return [t.index_select(1, slots) for t in self._states]

    def restore_all(
        self,
        session_ids: list[str],
        states: list[Tensor],
        positions: np.ndarray,
        incarnations: np.ndarray,
        created_at: np.ndarray,
        last_used_at: np.ndarray,
    ) -> None:
        """Fill an empty pool from a snapshot in one copy per tensor; ids least recently used first."""
        assert not self._lru, "restore_all needs an empty pool"
        n = len(session_ids)
        if n > self._capacity:
            self._grow(n)
        for t, s in zip(self._states, states, strict=True):
            t[:, :n] = s.to(self.dtype)
        self._position[:n] = positions
        self._incarnation[:n] = incarnations
        self._base_incarnation[:n] = 0
        self._base_position[:n] = 0
        self._created[:n] = created_at
        self._last_used[:n] = last_used_at
        self._high_water = n
        self._free.clear()
        self._lru = OrderedDict(zip(session_ids, range(n), strict=True))
        self._ids = SortedList(session_ids)
