"""One session's whole state, and what is said about it, as plain values: the way they cross
process boundaries (a frontend never loads torch).

Export hands the state out and import takes it in; a blob carries it. The state is bytes — the
state tensors back to back, C order, little-endian — so nothing but the engine needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

# Bytes per element of each storage dtype a blob may carry.
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class SessionState(msgspec.Struct, frozen=True):
    position: int
    incarnation: int
    dtype: str  # "float32", "bfloat16" or "float16"
    data: bytes  # the state tensors in the model's order, each (num_layers, hidden)


@dataclass(frozen=True)
class SessionRecord:
    """What GetSession and ListSessions say of a session."""

    session_id: str
    position: int
    incarnation: int
    created_at: float  # unix seconds
    last_used_at: float
    expires_at: float
