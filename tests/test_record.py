"""rnnkit.record: recorded gates against the equations computed by hand, recorded final states
against the layer's returned state, outputs unchanged by recording, on every kernel."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import kernels

KERNELS = [k for k in ("reference", "fast", "auto") if k in kernels.CHOICES]
B, T, I, H = 4, 7, 5, 6


def make(family: str, kernel: str, **kw):
    if family == "gru_before":
        return rnnkit.GRU(I, H, reset_after=False, kernel=kernel, **kw)
    return {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[family](
        I, H, kernel=kernel, **kw)


def hand_gates(family: str, cell, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
    """The cell equations written out by hand on whole sequences: x (B, T, I), previous
    states h, c (B, T, H) -> dict of gates and new states."""
    W_i, W_h = cell.weight_ih, cell.weight_hh
    if family == "gru_before":
        b = cell.bias_rzn
        gi = x @ W_i.T
        r = torch.sigmoid(gi[..., :H] + h @ W_h[:H].T + b[:H])
        z = torch.sigmoid(gi[..., H:2 * H] + h @ W_h[H:2 * H].T + b[H:2 * H])
        n = torch.tanh(gi[..., 2 * H:] + (r * h) @ W_h[2 * H:].T + b[2 * H:])
        return {"reset": r, "update": z, "new": n, "h": (1 - z) * n + z * h}
    gi = x @ W_i.T + cell.bias_ih
    gh = h @ W_h.T + cell.bias_hh
    if family == "rnn":
        return {"preactivation": gi + gh, "h": torch.tanh(gi + gh)}
    if family == "gru":
        r = torch.sigmoid(gi[..., :H] + gh[..., :H])
        z = torch.sigmoid(gi[..., H:2 * H] + gh[..., H:2 * H])
        n = torch.tanh(gi[..., 2 * H:] + r * gh[..., 2 * H:])
        return {"reset": r, "update": z, "new": n, "h": (1 - z) * n + z * h}
    a = gi + gh
    i, f = torch.sigmoid(a[..., :H]), torch.sigmoid(a[..., H:2 * H])
    g, o = torch.tanh(a[..., 2 * H:3 * H]), torch.sigmoid(a[..., 3 * H:])
    c_new = f * c + i * g
    return {"input": i, "forget": f, "cell": g, "output": o, "c": c_new,
            "h": o * torch.tanh(c_new)}


def previous(v: torch.Tensor, d: int, lengths: torch.Tensor) -> torch.Tensor:
    """The state each step starts from, from the time-aligned record ``v`` (B, T, H): the
    forward direction reads t-1, the backward one t+1 (zero at each sequence's start)."""
    prev = torch.zeros_like(v)
    if d == 0:
        prev[:, 1:] = v[:, :-1]
    else:
        prev[:, :-1] = v[:, 1:]
        for b, n in enumerate(lengths.tolist()):
            prev[b, n - 1:] = 0
    return prev


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru", "gru_before"])
def test_recorded_gates_match_hand_computation(family, kernel):
    layer = make(family, kernel, num_layers=2, bidirectional=True)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([7, 3, 5, 1])
    with rnnkit.record(layer) as rec:
        out, _ = layer(x, lengths=lengths)
    r = rec[""]
    assert rec.only is r and r.num_layers == 2 and r.num_directions == 2
    mask = (torch.arange(T)[None, :] < lengths[:, None]).unsqueeze(-1)
    inp = x
    for li in range(2):
        for d in range(2):
            got = r[li, d]
            cell = layer.cells[li * 2 + d]
            h_prev = previous(got["h"], d, lengths)
            c_prev = previous(got["c"], d, lengths) if "c" in got else None
            want = hand_gates(family, cell, inp, h_prev, c_prev)
            assert set(want) <= set(got)
            for name, v in want.items():
                torch.testing.assert_close(got[name], v * mask, atol=1e-5, rtol=1e-5,
                                           msg=f"layer {li} dir {d} {name}")
        # layer li + 1 reads the concatenated hidden states of layer li
        inp = r[li]["h"]
        assert inp.shape == (B, T, 2 * H)
    torch.testing.assert_close(out, r[1]["h"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_recorded_final_state_equals_returned_state(family, kernel):
    layer = make(family, kernel, num_layers=2, bidirectional=True)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([2, 7, 4, 6])
    with rnnkit.record(layer) as rec:
        _, state = layer(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    r = rec.only
    for name, final in zip(layer.state_names, states, strict=True):
        seq = r.states[name]                                   # (L*D, B, T, H)
        assert seq.shape == (4, B, T, H)
        for k in range(4):
            # forward: the state at each sequence's last step; backward: at its first step
            idx = lengths - 1 if k % 2 == 0 else torch.zeros_like(lengths)
            torch.testing.assert_close(seq[k, torch.arange(B), idx], final[k],
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_recording_leaves_outputs_and_gradients_unchanged(family, kernel):
    layer = make(family, kernel, num_layers=2)
    x = torch.randn(B, T, I, requires_grad=True)
    out0, _ = layer(x)
    (g0,) = torch.autograd.grad(out0.square().sum(), x)
    plain_kernel = layer.last_kernel
    with rnnkit.record(layer) as rec:
        out1, _ = layer(x)
    (g1,) = torch.autograd.grad(out1.square().sum(), x)
    exact = plain_kernel == rec.kernel
    tol = {"atol": 0.0, "rtol": 0.0} if exact else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(out1, out0, **tol)
    torch.testing.assert_close(g1, g0, **tol)
    assert not layer._recorders
    if kernel == "auto" and plain_kernel == "fused":
        assert rec.kernel != "fused"
        assert "instead of fused" in repr(rec)
    # after the block the layer is back on its usual kernel
    layer(x)
    assert layer.last_kernel == plain_kernel


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, I)
        self.lstm = rnnkit.LSTM(I, H)
        self.gru = rnnkit.GRU(H, H)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        return self.gru(y)[0]


def test_record_by_module_name_detaches_on_exception_and_explains_errors():
    model = TwoLayers()
    ids = torch.randint(0, 10, (B, T))
    with pytest.raises(RuntimeError, match="boom"), rnnkit.record(model) as rec:
        model(ids)
        raise RuntimeError("boom")
    assert not model.lstm._recorders and not model.gru._recorders
    assert set(rec) == {"lstm", "gru"}
    assert rec["lstm"].gates["forget"].shape == (1, B, T, H)
    assert rec["lstm"][0]["forget"].shape == (B, T, H)
    assert set(rec["gru"].gates) == {"reset", "update", "new"}
    assert not rec["lstm"]["h"].requires_grad
    with pytest.raises(KeyError, match="'lstm', 'gru'"):
        rec["rnn"]
    with pytest.raises(ValueError, match="exactly one"):
        _ = rec.only
    with pytest.raises(ValueError, match="no rnnkit layer"):
        with rnnkit.record(nn.Linear(2, 2)):
            pass
    # a layer called twice inside the block: the last call, and the history
    with rnnkit.record(model.lstm, detach=False) as rec2:
        model.lstm(torch.randn(1, 3, I))
        model.lstm(torch.randn(2, 5, I))
    assert rec2.only["h"].shape == (1, 2, 5, H) and len(rec2.history[""]) == 2
    assert rec2.only["h"].requires_grad


def test_explicit_fused_kernel_refuses_to_record_with_a_reason():
    layer = rnnkit.LSTM(I, H, kernel="fused")
    with pytest.raises(ValueError, match="cannot expose gate values"), rnnkit.record(layer):
        layer(torch.randn(B, T, I))
