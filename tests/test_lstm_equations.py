"""CharRNN is exactly the textbook LSTM (and GRU), not just "something nn.LSTM computes".

The reference below is written gate by gate from the parameters stored in the checkpoint
(standard nn.LSTM names, gate order i, f, g, o), in float64, so a wrong gate order, a
missing bias or a mixed-up layer would show up as a mismatch against CharRNN.forward.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from seqpredict.models import CharRNN, ModelConfig

VOCAB, EMBED, HIDDEN, LAYERS = 11, 8, 24, 2
BATCH, STEPS = 3, 12
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    """Same weights and inputs on every run, whatever ran before."""
    torch.manual_seed(0)


def _model(cell: str) -> CharRNN:
    # Default dropout on purpose: eval() must switch it off between the layers.
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=EMBED, hidden_size=HIDDEN, num_layers=LAYERS, cell=cell)
    return CharRNN(cfg).eval()


def _p(model: CharRNN, name: str) -> Tensor:
    return getattr(model.rnn, name).detach().double()


def _split4(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """nn.LSTM stacks the gates as rows in the order i, f, g, o."""
    i, f, g, o = t.chunk(4, dim=0)
    return i, f, g, o


def lstm_reference(model: CharRNN, tokens: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The six LSTM equations over [h_{t-1}, x_t], layer by layer, then the linear head.

    Returns logits (B, T, V) and the final h, c (L, B, H), all float64.
    """
    x_seq = model.embed.weight.detach().double()[tokens]  # (B, T, E)
    h = [h0[k].double() for k in range(LAYERS)]
    c = [c0[k].double() for k in range(LAYERS)]
    # One weight matrix per gate acting on the concatenation [h, x], one bias per gate.
    gates = []
    for k in range(LAYERS):
        w_ih, w_hh = _split4(_p(model, f"weight_ih_l{k}")), _split4(_p(model, f"weight_hh_l{k}"))
        b_ih, b_hh = _split4(_p(model, f"bias_ih_l{k}")), _split4(_p(model, f"bias_hh_l{k}"))
        W = {name: torch.cat([w_hh[j], w_ih[j]], dim=1) for j, name in enumerate("ifgo")}
        b = {name: b_ih[j] + b_hh[j] for j, name in enumerate("ifgo")}
        gates.append((W, b))
    outputs = []
    for t in range(tokens.shape[1]):
        x = x_seq[:, t]
        for k, (W, b) in enumerate(gates):
            hx = torch.cat([h[k], x], dim=1)  # [h_{t-1}, x_t]
            f_t = torch.sigmoid(hx @ W["f"].T + b["f"])  # forget gate
            i_t = torch.sigmoid(hx @ W["i"].T + b["i"])  # input gate
            c_tilde = torch.tanh(hx @ W["g"].T + b["g"])  # candidate cell
            c[k] = f_t * c[k] + i_t * c_tilde  # new cell state
            o_t = torch.sigmoid(hx @ W["o"].T + b["o"])  # output gate
            h[k] = o_t * torch.tanh(c[k])  # new hidden state
            x = h[k]  # input of the next layer
        outputs.append(x)
    out = torch.stack(outputs, dim=1)  # (B, T, H)
    logits = out @ model.head.weight.detach().double().T + model.head.bias.detach().double()
    return logits, torch.stack(h), torch.stack(c)


def gru_reference(model: CharRNN, tokens: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """GRU equations (gate order r, z, n in nn.GRU): r and z gate, n candidate, h' = (1-z)*n + z*h."""
    x_seq = model.embed.weight.detach().double()[tokens]
    h = [h0[k].double() for k in range(LAYERS)]
    outputs = []
    for t in range(tokens.shape[1]):
        x = x_seq[:, t]
        for k in range(LAYERS):
            w_ir, w_iz, w_in = _p(model, f"weight_ih_l{k}").chunk(3)
            w_hr, w_hz, w_hn = _p(model, f"weight_hh_l{k}").chunk(3)
            b_ir, b_iz, b_in = _p(model, f"bias_ih_l{k}").chunk(3)
            b_hr, b_hz, b_hn = _p(model, f"bias_hh_l{k}").chunk(3)
            r = torch.sigmoid(x @ w_ir.T + b_ir + h[k] @ w_hr.T + b_hr)  # reset gate
            z = torch.sigmoid(x @ w_iz.T + b_iz + h[k] @ w_hz.T + b_hz)  # update gate
            n = torch.tanh(x @ w_in.T + b_in + r * (h[k] @ w_hn.T + b_hn))  # candidate
            h[k] = (1 - z) * n + z * h[k]
            x = h[k]
        outputs.append(x)
    out = torch.stack(outputs, dim=1)
    logits = out @ model.head.weight.detach().double().T + model.head.bias.detach().double()
    return logits, torch.stack(h)


def _close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("start", ["zero", "random"])
def test_lstm_matches_the_six_equations(start: str) -> None:
    """Every layer's h and c, and the logits, agree with the hand-written equations."""
    model = _model("lstm")
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS))
    if start == "zero":
        h0, c0 = model.zero_state(BATCH)
    else:
        h0, c0 = torch.randn(LAYERS, BATCH, HIDDEN) * 0.5, torch.randn(LAYERS, BATCH, HIDDEN)
    with torch.no_grad():
        logits, (h, c) = model(tokens, (h0, c0))
    ref_logits, ref_h, ref_c = lstm_reference(model, tokens, h0, c0)
    _close(logits, ref_logits)
    _close(h, ref_h)
    _close(c, ref_c)


def test_lstm_equations_hold_at_every_step_with_carried_state() -> None:
    """One token at a time with the state carried: h, c of every layer match after each step."""
    model = _model("lstm")
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS))
    state = (torch.randn(LAYERS, BATCH, HIDDEN) * 0.5, torch.randn(LAYERS, BATCH, HIDDEN))
    h_ref, c_ref = state
    for t in range(STEPS):
        with torch.no_grad():
            logits, state = model(tokens[:, t : t + 1], state)
        ref_logits, h_ref, c_ref = lstm_reference(model, tokens[:, t : t + 1], h_ref, c_ref)
        _close(logits, ref_logits)
        _close(state[0], h_ref)
        _close(state[1], c_ref)


@pytest.mark.parametrize("start", ["zero", "random"])
def test_gru_matches_its_equations(start: str) -> None:
    """The GRU variant: state is (h,) only and follows r, z, n with h' = (1-z)*n + z*h."""
    model = _model("gru")
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS))
    (h0,) = model.zero_state(BATCH) if start == "zero" else (torch.randn(LAYERS, BATCH, HIDDEN) * 0.5,)
    with torch.no_grad():
        logits, state = model(tokens, (h0,))
    assert len(state) == 1
    ref_logits, ref_h = gru_reference(model, tokens, h0)
    _close(logits, ref_logits)
    _close(state[0], ref_h)


def test_reference_is_sensitive_to_gate_order() -> None:
    """Guard against a vacuous reference: swapping the i and f rows must break the agreement."""
    model = _model("lstm")
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS))
    h0, c0 = torch.randn(LAYERS, BATCH, HIDDEN), torch.randn(LAYERS, BATCH, HIDDEN)
    with torch.no_grad():
        logits, _ = model(tokens, (h0, c0))
        w = model.rnn.weight_hh_l0
        i, f, g, o = w.chunk(4)
        w.copy_(torch.cat([f, i, g, o]))
    ref_logits, _, _ = lstm_reference(model, tokens, h0, c0)
    assert (logits.double() - ref_logits).abs().max() > 1e-3
