"""What the transport side knows about the served model: plain values, no torch.

The engine builds the card from the checkpoint and its state pool; a gRPC frontend in
another process receives it as it is (a msgspec Struct) and needs nothing else to validate
requests, answer GetModelInfo, bound answer sizes and encode or check session blobs.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ModelCard(msgspec.Struct, frozen=True):
    name: str  # the checkpoint's file name
    fingerprint: str  # sha256 of the checkpoint file
    cell: str
    vocab_size: int
    embed_dim: int
    hidden_size: int
    num_layers: int
    state_names: tuple[str, ...]
    vocabulary: tuple[str, ...]  # token id i is vocabulary[i]
    training: dict[str, Any]
    state_dtype: str  # how the pool stores idle state: "float32", "bfloat16" or "float16"
    state_bytes_per_session: int

    @property
    def state_shape(self) -> tuple[int, int]:
        """Each state tensor of one session: (num_layers, hidden_size)."""
        return self.num_layers, self.hidden_size


def model_card(checkpoint: Any, state_dtype: str, state_bytes_per_session: int) -> ModelCard:
    """The card of a loaded `seqpredict.models.Checkpoint` (typed loosely: this module never imports torch)."""
    cfg = checkpoint.config
    return ModelCard(
        name=checkpoint.path.rsplit("/", 1)[-1],
        fingerprint=checkpoint.fingerprint,
        cell=cfg.cell,
        vocab_size=cfg.vocab_size,
        embed_dim=cfg.embed_dim,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        state_names=tuple(cfg.state_names),
        vocabulary=tuple(checkpoint.vocab.chars),
        training=dict(checkpoint.training),
        state_dtype=state_dtype,
        state_bytes_per_session=state_bytes_per_session,
    )
