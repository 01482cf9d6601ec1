"""The session snapshot file: every session's state, written atomically, read back only onto the same model.

The inference thread copies the pool (`capture`, fast: one index_select per state tensor);
writing the file (`write`) happens elsewhere so serving is paused only for the copy. The
file is torch.save'd primitives and tensors, read back with weights_only=True, tagged
with the checkpoint's fingerprint: state from other weights would be silently wrong, so
a mismatch — or any damage — means starting clean, never half-loaded.

`clean` says whether the snapshot was taken at a drain, after the last request: only then
do the sessions keep their incarnations when restored. A periodic snapshot may be older
than what clients last saw, so its sessions come back as new incarnations, and a client
that checks its incarnation learns that it may have lost tokens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqpredict.models.atomic import atomic_torch_save
from seqpredict.server.sessions import SessionPool

log = logging.getLogger(__name__)

FORMAT_TAG = "seqpredict-snapshot"
FORMAT_VERSION = 2  # 2: incarnations and the clean flag; version 1 files are still read


class SnapshotError(Exception):
    """A snapshot of ours that cannot be restored; the message says why in one line."""


class NotASnapshot(SnapshotError):
    """The file is not a seqpredict snapshot at all (another file at the snapshot path)."""


@dataclass
class Snapshot:
    fingerprint: str
    session_ids: list[str]  # least recently used first, so restoring keeps the LRU order
    positions: torch.Tensor  # (N,) int64
    created_at: torch.Tensor  # (N,) float64, unix seconds
    last_used_at: torch.Tensor  # (N,) float64
    states: list[torch.Tensor]  # each (num_layers, N, hidden), in the pool's storage dtype
    incarnations: torch.Tensor | None = None  # (N,) int64 holding the uint64 bits; None: version 1
    clean: bool = False  # taken at a drain, after the last request

    def __len__(self) -> int:
        return len(self.session_ids)


def capture(pool: SessionPool, fingerprint: str, clean: bool = False) -> Snapshot:
    """Copy every session out of the pool; call on the thread that owns the pool."""
    ids, slots = [], []
    for sid, slot in pool.items():
        ids.append(sid)
        slots.append(slot)
    index = torch.tensor(slots, dtype=torch.long)
    positions, incarnations, created, last_used = pool.bookkeeping_arrays(slots)
    return Snapshot(
        fingerprint=fingerprint,
        session_ids=ids,
        positions=torch.from_numpy(positions),
        created_at=torch.from_numpy(created),
        last_used_at=torch.from_numpy(last_used),
        states=pool.export_states(index),
        incarnations=torch.from_numpy(incarnations.view(np.int64)),  # torch has no general uint64
        clean=clean,
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
        "incarnations": snapshot.incarnations,
        "created_at": snapshot.created_at,
        "last_used_at": snapshot.last_used_at,
        "states": snapshot.states,
        "clean": snapshot.clean,
    }
    atomic_torch_save(payload, path, mode=0o600)  # session state is the users' data: owner only


def read(path: str | os.PathLike[str], fingerprint: str, state_shapes: list[tuple[int, int]]) -> Snapshot:
    """Load and validate a snapshot for the model `fingerprint`; raises SnapshotError (NotASnapshot
    when the file is no snapshot of ours at all)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NotASnapshot(f"{path}: not a readable seqpredict snapshot: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise NotASnapshot(f"{path}: not a seqpredict snapshot")
    version = payload.get("version")
    if version not in (1, FORMAT_VERSION):
        raise SnapshotError(f"{path}: unsupported snapshot version {version!r}")
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
            incarnations=payload.get("incarnations"),
            clean=bool(payload.get("clean", False)),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"{path}: malformed snapshot: {exc}") from None
    n = len(ids)
    arrays = [snap.positions, snap.created_at, snap.last_used_at]
    if snap.incarnations is not None:
        arrays.append(snap.incarnations)
    if any(not isinstance(t, torch.Tensor) or t.shape != (n,) for t in arrays):
        raise SnapshotError(f"{path}: bookkeeping arrays do not match {n} sessions")
    if len(snap.states) != len(state_shapes) or any(
        tuple(t.shape) != (layers, n, hidden) for t, (layers, hidden) in zip(snap.states, state_shapes, strict=False)
    ):
        raise SnapshotError(f"{path}: state tensors do not match the model's shape")
    if n and (int(snap.positions.min()) < 0 or not all(t.isfinite().all() for t in snap.states)):
        raise SnapshotError(f"{path}: negative positions or non-finite state values")
    return snap


def restore(pool: SessionPool, snapshot: Snapshot) -> int:
    """Fill an empty pool from `snapshot` (up to its session limit); returns how many sessions.

    Sessions keep their incarnations only from a clean snapshot; otherwise each gets a new one.
    """
    keep = min(len(snapshot), pool.max_sessions)
    skip = len(snapshot) - keep  # the least recently used go first when the limit shrank
    if skip:
        log.warning(
            "snapshot holds %d sessions, max_sessions is %d: dropping the %d least recently used",
            len(snapshot),
            pool.max_sessions,
            skip,
        )
    if snapshot.clean and snapshot.incarnations is not None:
        incarnations = snapshot.incarnations[skip:].numpy().view(np.uint64)
    else:
        incarnations = np.array([pool.new_incarnation() for _ in range(keep)], dtype=np.uint64)
    pool.restore_all(
        snapshot.session_ids[skip:],
        [t[:, skip:] for t in snapshot.states],
        snapshot.positions[skip:].numpy(),
        incarnations,
        snapshot.created_at[skip:].numpy(),
        snapshot.last_used_at[skip:].numpy(),
    )
    return keep


def stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Files a write interrupted by a crash left beside `path` (atomic_torch_save's temporaries)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
