"""Python client for seqpredict: sync (`Client`) and asyncio (`AsyncClient`), with typed results and errors."""

from seqpredict.client.aio import AsyncClient, AsyncSession
from seqpredict.client.errors import (
    Aborted,
    AlreadyExists,
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
from seqpredict.client.generation import AsyncGeneration, Generation
from seqpredict.client.requests import FeedRequest
from seqpredict.client.sync import Client, Session
from seqpredict.client.types import (
    ExportedSession,
    GeneratedToken,
    ModelInfo,
    Prediction,
    ServerLimits,
    SessionInfo,
    TokenProbability,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
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
