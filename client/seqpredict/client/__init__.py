"""Python client for seqpredict: sync (`Client`) and asyncio (`AsyncClient`), with typed results and errors.

The two halves are imported when first named, so `from seqpredict.client import Client` loads
the blocking client alone and `AsyncClient` the asyncio one alone: neither half depends on the
other, and the CLI (sync) and the server (which only reads `seqpredict.client.version`) do not
pay for the half they never use. Shared pieces — errors, results, requests — load eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seqpredict.client.errors import (
    Aborted,
    AlreadyExists,
    AnswerLost,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PositionMismatch,
    ResourceExhausted,
    SeqpredictError,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from seqpredict.client.requests import FeedRequest
from seqpredict.client.types import (
    ExportedSession,
    GeneratedToken,
    ModelInfo,
    Prediction,
    ServerLimits,
    SessionInfo,
    TokenProbability,
)

if TYPE_CHECKING:
    from seqpredict.client.aio import AsyncClient
    from seqpredict.client.aio_session import AsyncSession
    from seqpredict.client.generation import AsyncGeneration, Generation
    from seqpredict.client.sync import Client
    from seqpredict.client.sync_session import Session

# Public name → the module that defines it, imported on first use (PEP 562).
_LAZY = {
    "Client": "seqpredict.client.sync",
    "Session": "seqpredict.client.sync_session",
    "Generation": "seqpredict.client.generation",
    "AsyncClient": "seqpredict.client.aio",
    "AsyncSession": "seqpredict.client.aio_session",
    "AsyncGeneration": "seqpredict.client.generation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Aborted",
    "AlreadyExists",
    "AnswerLost",
    "AsyncClient",
    "AsyncGeneration",
    "AsyncSession",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "ExportedSession",
    "FeedRequest",
    "GeneratedToken",
    "Generation",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PositionMismatch",
    "Prediction",
    "ResourceExhausted",
    "SeqpredictError",
    "ServerError",
    "ServerLimits",
    "Session",
    "SessionInfo",
    "TokenProbability",
    "Unauthenticated",
    "Unavailable",
]
