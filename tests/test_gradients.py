"""gradient_flow: ∂L/∂h_t against the backpropagation-through-time recursion written by hand,
and the vanishing-gradient picture (tanh RNN vs LSTM) on a fixed seed."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.inspect import gradient_flow
from rnnkit.tasks.longrange import LongRangeModel, adding_data


class Readout(nn.Module):
    """Loss-friendly wrapper: the layer's outputs and its final state."""

    def __init__(self, layer):
        super().__init__()
        self.rnn = layer

    def forward(self, x, lengths=None):
        return self.rnn(x, lengths=lengths)


def test_rnn_gradients_match_hand_bptt_both_directions_with_lengths():
    torch.manual_seed(1)
    B, T, I, H = 3, 6, 4, 5
    model = Readout(rnnkit.RNN(I, H, bidirectional=True, kernel="auto"))
    x, lengths = torch.randn(B, T, I), torch.tensor([6, 2, 4])
    v = torch.randn(B, T, 2 * H)            # L = Σ_t <out_t, v_t> + Σ_d <h_final_d, w_d>
    w = torch.randn(2, B, H)

    def loss_fn(m, batch):
        out, h = m(batch, lengths=lengths)
        return (out * v).sum() + (h * w).sum()

    flow = gradient_flow(model, x, loss_fn, lengths=lengths)
    assert set(flow.grads) == {"rnn.l0", "rnn.l0_reverse"}
    with rnnkit.record(model) as rec:
        model(x, lengths=lengths)
    for d, key in enumerate(("rnn.l0", "rnn.l0_reverse")):
        h = rec["rnn"][0, d]["h"]
        W = model.rnn.cells[d].weight_hh
        want = torch.zeros(B, T, H)
        for b, n in enumerate(lengths.tolist()):
            order = range(n - 1, -1, -1) if d == 0 else range(n)   # from the loss backwards
            g_next = None
            for t in order:
                g = v[b, t, d * H:(d + 1) * H].clone()
                if g_next is not None:   # h_t feeds the next step: through W_hh and tanh'
                    t_next = t + 1 if d == 0 else t - 1
                    g += W.T @ ((1 - h[b, t_next] ** 2) * g_next)
                else:                    # the step that becomes the final state
                    g += w[d, b]
                want[b, t], g_next = g, g
        torch.testing.assert_close(flow.grads[key], want, atol=1e-5, rtol=1e-5)
        norms = flow.norms()[key]
        torch.testing.assert_close(norms, want.transpose(0, 1).flatten(1).norm(dim=1))


def test_lstm_last_step_gradients_match_hand_computation_and_model_is_restored():
    torch.manual_seed(2)
    B, T, I, H = 4, 5, 3, 6
    lstm = rnnkit.LSTM(I, H, num_layers=2)
    model = Readout(lstm)
    x, v = torch.randn(B, T, I), torch.randn(B, T, H)

    def loss_fn(m, xb):
        out, _ = m(xb)
        return ((out * v).sum(-1) ** 2).mean()

    flow = gradient_flow(model, x, loss_fn)
    assert set(flow.grads) == {"rnn.l0", "rnn.l1"}
    # the top layer's last step feeds the loss only: ∂L/∂h_T = ∂L/∂out_T
    out, _ = model(x)
    out.retain_grad()
    loss_fn_value = ((out * v).sum(-1) ** 2).mean()
    loss_fn_value.backward()
    g_out = out.grad
    top = flow.grads["rnn.l1"]
    torch.testing.assert_close(top[:, -1], g_out[:, -1], atol=1e-6, rtol=1e-5)
    # one step earlier: ∂L/∂out_{T-1} plus the path through step T, by hand from the recorded
    # gates: h_T = o ⊙ tanh(c_T), c_T = f ⊙ c_{T-1} + i ⊙ g, gates from W_hh h_{T-1}
    with rnnkit.record(model) as rec:
        model(x)
    r = rec["rnn"][1]
    i, f, g, o = (r[k][:, -1] for k in ("input", "forget", "cell", "output"))
    c = r["c"][:, -1]
    d_c = g_out[:, -1] * o * (1 - torch.tanh(c) ** 2)
    d_pre = torch.cat([d_c * g * i * (1 - i), d_c * r["c"][:, -2] * f * (1 - f),
                       d_c * i * (1 - g ** 2), g_out[:, -1] * torch.tanh(c) * o * (1 - o)], -1)
    want = g_out[:, -2] + d_pre @ lstm.cells[1].weight_hh
    torch.testing.assert_close(top[:, -2], want, atol=1e-6, rtol=1e-5)
    assert flow.loss == pytest.approx(float(loss_fn_value.detach()), rel=1e-6)
    # the model is left as it was: kernel choice, class step, no parameter gradients from us
    lstm.zero_grad(set_to_none=True)
    gradient_flow(model, x, loss_fn)
    assert lstm.kernel == "auto" and all("step" not in c.__dict__ for c in lstm.cells)
    assert all(p.grad is None for p in lstm.parameters())
    model(x)
    assert lstm.last_kernel == "fused"


def test_untrained_tanh_rnn_gradient_vanishes_over_100_steps_lstm_far_less():
    """The vanishing-gradient picture on a fixed seed (float64: the RNN's underflows float32).

    Adding problem, T = 100, loss on the last step: ‖∂L/∂h_0‖ / ‖∂L/∂h_99‖ falls by > 1e15 for
    the tanh RNN and by < 1e10 for the LSTM (forget-gate bias 1)."""
    torch.manual_seed(0)
    x, y = adding_data(32, 100, torch.Generator().manual_seed(0))
    x, y = x.double(), y.double()
    drop = {}
    for cell in ("rnn", "lstm"):
        torch.manual_seed(0)
        model = LongRangeModel(cell, 2, 32, 1).double()
        flow = gradient_flow(model, (x, y),
                             lambda m, b: ((m(b[0])[:, -1, 0] - b[1]) ** 2).mean())
        n = flow.norms()["rnn.l0"]
        assert n.shape == (100,)
        drop[cell] = float(n[-1] / n[0])
    assert drop["rnn"] > 1e15, drop
    assert drop["lstm"] < 1e10, drop
    assert drop["rnn"] > 1e6 * drop["lstm"], drop


def test_gradient_flow_errors():
    with pytest.raises(ValueError, match="no rnnkit layer"):
        gradient_flow(nn.Linear(2, 2), torch.zeros(1, 2), lambda m, b: m(b).sum())
    model = Readout(rnnkit.GRU(2, 3))
    with pytest.raises(ValueError, match="scalar"):
        gradient_flow(model, torch.zeros(2, 4, 2), lambda m, b: m(b)[0])
