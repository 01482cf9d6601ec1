"""One-token step for serving, with the same weights as CharRNN and the same results.

nn.LSTM called for one time step spends most of its time in per-call overhead; here every
layer is one addmm over [x, h] for all four gates. Layer 0's input projection is folded
into a (V, 4H) table — embedding @ W_ih0ᵀ + biases — so it becomes a row gather.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqpredict.models.network import CharRNN, State


class FusedStepper:
    """Precomputed matrices for CharRNN.forward on one token, in inference mode only."""

    def __init__(self, model: CharRNN) -> None:
        cfg = model.config
        self.config = cfg
        rnn, H = model.rnn, cfg.hidden_size
        with torch.no_grad():
            emb = model.embed.weight.float()  # (V, E)
            w_ih0 = rnn.weight_ih_l0.float()
            b_ih0, b_hh0 = rnn.bias_ih_l0.float(), rnn.bias_hh_l0.float()
            if cfg.cell == "lstm":
                # (V, 4H): what layer 0's gates get from the token, biases included.
                self.table0 = (emb @ w_ih0.T + b_ih0 + b_hh0).contiguous()
                self.w_hh0_t = rnn.weight_hh_l0.float().T.contiguous()  # (H, 4H)
                # Layers ≥ 1: one (2H, 4H) matrix over [x, h] and the summed bias.
                self.w_cat_t: list[Tensor] = []
                self.b_cat: list[Tensor] = []
                for k in range(1, cfg.num_layers):
                    w = torch.cat([getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")], dim=1)
                    self.w_cat_t.append(w.float().T.contiguous())
                    self.b_cat.append((getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}")).float())
            else:
                # GRU's candidate gate multiplies r into (W_hn h + b_hn), so ih and hh stay apart.
                self.table0 = (emb @ w_ih0.T + b_ih0).contiguous()  # (V, 3H)
                self.w_ih_t = [None] + [
                    getattr(rnn, f"weight_ih_l{k}").float().T.contiguous() for k in range(1, cfg.num_layers)
                ]
                self.b_ih = [None] + [getattr(rnn, f"bias_ih_l{k}").float() for k in range(1, cfg.num_layers)]
                self.w_hh_t = [getattr(rnn, f"weight_hh_l{k}").float().T.contiguous() for k in range(cfg.num_layers)]
                self.b_hh = [getattr(rnn, f"bias_hh_l{k}").float() for k in range(cfg.num_layers)]
            self.w_head_t = model.head.weight.float().T.contiguous()  # (H, V)
            self.b_head = model.head.bias.float()
        self.hidden_size = H

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """tokens (B,) int64, state tensors (L, B, H) → logits (B, V), new state.

        The matrices here are plain tensors that do not require grad, so no autograd graph is
        built even outside torch.no_grad(); not wrapping each call saves microseconds per step.
        """
        if self.config.cell == "lstm":
            return self._lstm_step(tokens, state)
        return self._gru_step(tokens, state)

    def _lstm_step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        # Few, large ops: each torch call costs microseconds of overhead (and a GIL round trip).
        h, c = state  # each (L, B, H)
        H = self.hidden_size
        new_h, new_c = torch.empty_like(h), torch.empty_like(c)
        x = h[0]
        for k in range(self.config.num_layers):
            if k == 0:
                gates = torch.addmm(self.table0.index_select(0, tokens), h[0], self.w_hh0_t)  # (B, 4H)
            else:
                gates = torch.addmm(self.b_cat[k - 1], torch.cat([x, h[k]], dim=1), self.w_cat_t[k - 1])
            act = torch.sigmoid(gates)  # i, f, o used; the g quarter is recomputed with tanh below
            g = torch.tanh(gates[:, 2 * H : 3 * H])
            c_k = torch.addcmul(act[:, H : 2 * H] * c[k], act[:, :H], g, out=new_c[k])  # f ⊙ c + i ⊙ g
            x = torch.mul(act[:, 3 * H :], torch.tanh(c_k), out=new_h[k])  # o ⊙ tanh(c)
        logits = torch.addmm(self.b_head, x, self.w_head_t)  # (B, V)
        return logits, (new_h, new_c)

    def _gru_step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        H = self.hidden_size
        new_h = torch.empty_like(h)
        x = None
        for k in range(self.config.num_layers):
            gi = self.table0[tokens] if k == 0 else torch.addmm(self.b_ih[k], x, self.w_ih_t[k])  # (B, 3H)
            gh = torch.addmm(self.b_hh[k], h[k], self.w_hh_t[k])  # (B, 3H)
            r = torch.sigmoid(gi[:, :H] + gh[:, :H])
            z = torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
            n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
            x = torch.lerp(n, h[k], z)  # (1 - z) * n + z * h
            new_h[k] = x
        logits = torch.addmm(self.b_head, x, self.w_head_t)
        return logits, (new_h,)
