"""One-token step for serving, with the same weights as CharRNN and the same results.

nn.LSTM called for one time step spends most of its time in per-call overhead. Here each
layer is one call of ATen's cell (`torch.lstm_cell` / `torch.gru_cell`): both gate matmuls —
all four gates at once — and the cell update in C++, so a step is a handful of torch calls
(each a GIL round trip on the serving thread).

Why the cell and not one matmul over the concatenated [x, h] with the biases folded in: in
float32 the two round differently, and a recurrence can amplify the difference. On a
random-token history found by the soak, the folded form drifted 3.8e-5 from nn.LSTM in a
next-token probability — beyond the service's 1e-5 equivalence contract — while the cell
stayed at 5.5e-6 (bench/ANALYSIS.md); its speed is the same within noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqpredict.models.network import CharRNN, State


class FusedStepper:
    """CharRNN.forward for one token, with the weights taken once from the model."""

    def __init__(self, model: CharRNN) -> None:
        cfg = model.config
        self.config = cfg
        rnn = model.rnn
        with torch.no_grad():
            self.embedding = model.embed.weight.float()  # (V, E)
            # Per layer: weight_ih (G*H, in), weight_hh (G*H, H), bias_ih, bias_hh — nn.LSTM's own tensors.
            self.layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = [
                tuple(getattr(rnn, f"{name}_l{k}").float() for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                for k in range(cfg.num_layers)
            ]
            self.w_head_t = model.head.weight.float().T.contiguous()  # (H, V)
            self.b_head = model.head.bias.float()

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """tokens (B,) int64, state tensors (L, B, H) → logits (B, V), new state.

        The tensors here do not require grad, so no autograd graph is built even outside
        torch.no_grad(); not wrapping each call saves microseconds per step.
        """
        x = self.embedding.index_select(0, tokens)  # (B, E)
        if self.config.cell == "lstm":
            h, c = state  # each (L, B, H)
            new_h, new_c = [], []
            for k, weights in enumerate(self.layers):
                x, c_k = torch.lstm_cell(x, (h[k], c[k]), *weights)  # (B, H) each
                new_h.append(x)
                new_c.append(c_k)
            new_state: State = (torch.stack(new_h), torch.stack(new_c))
        else:
            (h,) = state
            new_h = []
            for k, weights in enumerate(self.layers):
                x = torch.gru_cell(x, h[k], *weights)
                new_h.append(x)
            new_state = (torch.stack(new_h),)
        logits = torch.addmm(self.b_head, x, self.w_head_t)  # (B, V)
        return logits, new_state
