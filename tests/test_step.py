"""The stateful step API (layer.stepper) against the whole layer, for every cell family; the
oneDNN products (kernels.gemm) against torch; the C elementwise step at sizes that exercise
its vector lanes and their remainder."""

import pytest
import torch

import rnnkit
from rnnkit.kernels import gemm, native

FAMILIES = [
    (rnnkit.LSTM, {}),
    (rnnkit.GRU, {}),
    (rnnkit.GRU, {"reset_after": False}),
    (rnnkit.RNN, {}),
    (rnnkit.RNN, {"nonlinearity": "relu"}),
    (rnnkit.LayerNormLSTM, {}),
    (rnnkit.MinGRU, {}),
    (rnnkit.MinLSTM, {}),
]


@pytest.mark.parametrize("cls,kw", FAMILIES)
@pytest.mark.parametrize("batch", [1, 3])
def test_stepper_equals_the_whole_layer(cls, kw, batch):
    torch.manual_seed(0)
    layer = cls(5, 19, num_layers=2, **kw).eval()
    x = torch.randn(batch, 9, 5)
    h0 = torch.randn(2, batch, 19)
    init = (h0, torch.randn(2, batch, 19)) if len(layer.state_names) == 2 else h0
    with torch.no_grad():
        out, final = layer(x, init)
    step, state, ys = layer.stepper(batch), init, []
    for t in range(9):
        y, state = step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), out, atol=1e-5, rtol=1e-5)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    final if isinstance(final, tuple) else (final,), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_stepper_is_rebuilt_when_weights_change_and_refuses_bidirectional():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 8).eval()
    s1 = layer.stepper()
    assert layer.stepper() is s1
    x = torch.randn(1, 4)
    y1, _ = s1(x)
    with torch.no_grad():
        layer.cells[0].weight_hh.mul_(2.0)
        layer.cells[0].weight_ih.mul_(2.0)
    assert not s1.fresh()
    s2 = layer.stepper()
    assert s2 is not s1
    y2, _ = s2(x)
    with torch.no_grad():
        ref, _ = layer(x[:, None])
    torch.testing.assert_close(y2, ref[:, 0])
    assert not torch.allclose(y1, y2)
    with pytest.raises(ValueError, match="bidirectional"):
        rnnkit.GRU(4, 8, bidirectional=True).stepper()
    with pytest.raises(ValueError, match=r"expects x of shape \(1, 4\), got \(2, 4\)"):
        s2(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"state as h and c, each of shape \(1, 1, 8\), got "
                                         r"\[\(1, 1, 8\)\]"):
        s2(x, torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match=r"got \[\(1, 2, 8\), \(1, 2, 8\)\]"):
        s2(x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))


@pytest.mark.parametrize("threads", [1, 2])
def test_lstm_stack_step_splits_units_over_threads(threads):
    """The C stack step for LSTM: 11 rows (a group of 8 and a partial one), H = 76 (ten panels
    of 8 units, the last padded; from 8 panels the threads split them), float64 input cast,
    three layers; against the whole layer."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        layer = rnnkit.LSTM(6, 76, num_layers=3).eval()
        x = torch.randn(11, 5, 6)
        init = (torch.randn(3, 11, 76), torch.randn(3, 11, 76))
        with torch.no_grad():
            out, (h, c) = layer(x, init)
        step, state, ys = layer.stepper(11), init, []
        for t in range(5):
            y, state = step(x[:, t].double(), state)
            ys.append(y)
        torch.testing.assert_close(torch.stack(ys, 1), out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state[0], h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state[1], c, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("m,k,n", [(1, 7, 5), (33, 64, 130), (300, 17, 9)])
def test_gemm_products_equal_torch(m, k, n):
    torch.manual_seed(0)
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.testing.assert_close(gemm.mm(a, b), a @ b, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gemm.mm(b.t(), a.t()), b.t() @ a.t(), atol=1e-4, rtol=1e-5)
    fixed = gemm.Fixed(b, m)
    add = torch.randn(m, n)
    torch.testing.assert_close(fixed(a, torch.empty(m, n), add), add + a @ b, atol=1e-4,
                               rtol=1e-5)
    bias = torch.randn(n)
    torch.testing.assert_close(fixed(a, torch.empty(m, n), bias), bias + a @ b, atol=1e-4,
                               rtol=1e-5)
    # linear: forward and every gradient
    x = torch.randn(m, k, requires_grad=True)
    w = torch.randn(n, k, requires_grad=True)
    bb = torch.randn(n, requires_grad=True)
    g = torch.randn(m, n)
    got = gemm.linear(x, w, bb)
    (got * g).sum().backward()
    grads = [t.grad.clone() for t in (x, w, bb)]
    for t in (x, w, bb):
        t.grad = None
    want = torch.nn.functional.linear(x, w, bb)
    (want * g).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for a_, b_ in zip(grads, [x.grad, w.grad, bb.grad], strict=True):
        torch.testing.assert_close(a_, b_, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(native.lib() is None, reason="no C compiler")
@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.LayerNormLSTM])
@pytest.mark.parametrize("H", [19, 64])
def test_native_step_equals_reference_across_vector_lanes(cls, H):
    torch.manual_seed(0)
    ref = cls(7, H, num_layers=2, kernel="reference")
    fast = cls(7, H, num_layers=2, kernel="fast")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 12, 7) * 3  # large pre-activations reach the saturated ends
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = []
    for layer, xx in zip((ref, fast), xs, strict=True):
        out, (h, c) = layer(xx, lengths=torch.tensor([12, 3, 7, 12, 1]))
        (out.square().sum() + h.sum() + c.sum()).backward()
        outs.append([out, h, c, xx.grad, *[p.grad for p in layer.parameters()]])
    assert fast.last_kernel == "fast"
    for a, b in zip(outs[1], outs[0], strict=True):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5)
