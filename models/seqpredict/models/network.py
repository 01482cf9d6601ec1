"""Token embedding → stacked nn.LSTM (or nn.GRU) → linear head.

The recurrent state is a tuple of tensors in nn.LSTM's layout, (num_layers, B, hidden):
(h, c) for the LSTM, (h,) for the GRU. Keeping the standard module means the checkpoint
carries the standard parameter names (weight_ih_l0, ..., gate order i, f, g, o).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqpredict.models.config import ModelConfig

State = tuple[Tensor, ...]


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            input_size=config.embed_dim,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def zero_state(self, batch_size: int, dtype: torch.dtype = torch.float32) -> State:
        """The state of a session that has seen nothing."""
        cfg = self.config
        shape = (cfg.num_layers, batch_size, cfg.hidden_size)
        return tuple(torch.zeros(shape, dtype=dtype) for _ in cfg.state_names)

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (B, T) int64 → logits (B, T, V) and the state after the last token."""
        out, new_state = self.features(tokens, state)
        return self.head(out), new_state  # (B, T, V)

    def features(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (B, T) → top-layer hidden outputs (B, T, H) and the new state.

        Split from the head so a caller that needs logits only at some positions (serving a
        long prefill) does not pay for the rest.
        """
        assert tokens.dim() == 2, f"tokens must be (B, T), got shape {tuple(tokens.shape)}"
        if state is None:
            state = self.zero_state(tokens.shape[0], dtype=self.head.weight.dtype)
        x = self.embed(tokens)  # (B, T, E)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        out, new_state = self.rnn(x, rnn_state)  # out: (B, T, H)
        if self.config.cell == "gru":
            new_state = (new_state,)
        return out, tuple(new_state)

    def next_logits(self, state: State) -> Tensor:
        """Logits for the next token from a state alone: the head over the top layer's h → (B, V)."""
        return self.head(state[0][-1])
