"""The model side of seqpredict: the recurrent network, its vocabulary and checkpoints.

Nothing in this package imports grpc or prometheus; the server drives it from one thread.
Names are imported on first use (PEP 562), so a process that only needs the vocabulary or
the model's configuration — a gRPC frontend, a client tool — never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "Checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ModelConfig": "config",
    "CharRNN": "network",
    "State": "network",
    "FusedStepper": "stepper",
    "UnknownCharacterError": "vocab",
    "Vocabulary": "vocab",
}

if TYPE_CHECKING:
    from seqpredict.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from seqpredict.models.config import ModelConfig
    from seqpredict.models.errors import CheckpointError
    from seqpredict.models.network import CharRNN, State
    from seqpredict.models.stepper import FusedStepper
    from seqpredict.models.vocab import UnknownCharacterError, Vocabulary


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CharRNN",
    "Checkpoint",
    "CheckpointError",
    "FusedStepper",
    "ModelConfig",
    "State",
    "UnknownCharacterError",
    "Vocabulary",
    "load_checkpoint",
    "save_checkpoint",
]
