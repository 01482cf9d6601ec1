"""The model side of seqpredict: the recurrent network, its vocabulary and checkpoints.

Nothing in this package imports grpc or prometheus; the server drives it from one thread.
"""

from seqpredict.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from seqpredict.models.config import ModelConfig
from seqpredict.models.network import CharRNN, State
from seqpredict.models.stepper import FusedStepper
from seqpredict.models.vocab import UnknownCharacterError, Vocabulary

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
