"""The bfloat16 fast path (csrc/bf16.c, AVX512-BF16): what runs under CPU bf16 autocast, its
accuracy against a float64 reference next to torch.nn's own bf16 kernel, the exact rounding it
promises, and the float32 fallback (with its one-line notice) where the CPU lacks the
instructions."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import bindings, fast, native

needs_bf16 = pytest.mark.skipif(not native.bf16_capable(),
                                reason="no AVX512-BF16 kernels on this CPU/compiler")


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def rel(a, b):
    """Relative error of ``a`` against the float64 reference ``b`` (Frobenius norms)."""
    b = b.detach()
    return float((a.detach().double() - b).norm() / b.norm())


def outputs_and_grads(layer, x, lengths, g, state):
    """Output, final (h, c) and the gradients of x, every weight and the initial state of
    ``sum(out * g) + sum(h) + sum(c)`` (the run under bf16 autocast unless float64)."""
    xx = x.clone().requires_grad_(True)
    st = tuple(s.clone().requires_grad_(True) for s in state)
    arg = st if len(st) == 2 else st[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=x.dtype != torch.float64):
        if isinstance(layer, nn.RNNBase):
            out, fin = layer(xx, arg)
        else:
            out, fin = layer(xx, arg, lengths=lengths)
    fin = fin if isinstance(fin, tuple) else (fin,)
    loss = (out.to(g.dtype) * g).sum() + sum(f.to(g.dtype).sum() for f in fin)
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad(loss, [xx, *st, *params])
    return [out, *fin, *grads]


CASES = [  # (I, H, layers, bidirectional, lengths)
    (64, 128, 1, False, None),
    (7, 33, 2, True, None),
    (16, 48, 2, False, [11, 3, 7, 11, 1, 9]),
    (32, 64, 2, True, [11, 3, 7, 11, 1, 9]),  # AMX: the LSTM split by units, both layers
]


FAMILIES = {"lstm": (rnnkit.LSTM, {}, 2), "gru": (rnnkit.GRU, {}, 1),
            "rnn_tanh": (rnnkit.RNN, {}, 1)}


@needs_bf16
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("I,H,layers,bidir,lengths", CASES)
def test_bf16_error_no_larger_than_torch_nn(family, I, H, layers, bidir, lengths):
    """rnnkit's bf16 kernel and torch.nn's (oneDNN, under the same bf16 autocast), each against
    the float64 reference: rnnkit's relative error is no larger in the output, the final state
    and the gradient of the input, the initial state and every weight."""
    torch.manual_seed(0)
    B, T = 6, 11
    cls, kw, n_state = FAMILIES[family]
    ours = cls(I, H, num_layers=layers, bidirectional=bidir, kernel="fast", **kw)
    D = 2 if bidir else 1
    x = torch.randn(B, T, I)
    state = tuple(0.5 * torch.randn(layers * D, B, H) for _ in range(n_state))
    g = torch.randn(B, T, D * H, dtype=torch.float64)
    lens = None if lengths is None else torch.tensor(lengths)
    if lens is None:
        peer = ours.to_torch()
        peer.batch_first = True
        ref = ours.to_torch().double()
        ref.batch_first = True
    else:  # torch.nn's packed kernel: rnnkit's fused kernel calls it
        peer = cls.from_torch(ours.to_torch(), kernel="fused")
        ref = cls.from_torch(ours.to_torch(), kernel="reference").double()
    got = outputs_and_grads(ours, x, lens, g.float(), state)
    assert ours.last_kernel.runs == "fast:bf16"
    theirs = outputs_and_grads(peer, x, lens, g.float(), state)
    want = outputs_and_grads(ref, x.double(), lens, g, tuple(s.double() for s in state))
    names = ["out", *["h", "c"][:n_state], "dx", *["dh0", "dc0"][:n_state],
             *[n for n, _ in ours.named_parameters()]]
    for name, a, b, w in zip(names, got, theirs, want, strict=True):
        ea, eb = rel(a, w), rel(b, w)
        assert ea <= eb, f"{name}: rnnkit's bf16 error {ea:.2e} > torch.nn's {eb:.2e}"
        assert ea < 2e-2, (name, ea)


def emulated_lstm(x, w_ih, w_hh, b, h, c):
    """The rounding the kernel promises, in plain torch: x, h_prev and the weights rounded to
    bfloat16, products and the cell in float32. ``x`` ``(B, T, I)``; returns ``(B, T, H)``."""
    r = lambda t: t.bfloat16().float()  # noqa: E731
    outs = []
    for t in range(x.shape[1]):
        pre = r(x[:, t]) @ r(w_ih).t() + r(h) @ r(w_hh).t() + b
        i, f, gg, o = pre.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1)


@needs_bf16
@pytest.mark.parametrize("I,H", [(5, 3), (6, 40), (33, 17)])
def test_bf16_kernel_rounds_as_promised(I, H):
    """Odd and even sizes (the padding of the bfloat16 pairs): the kernel equals the emulation
    of its rounding to float32 accuracy (a flip of one bf16 rounding at a tie aside)."""
    torch.manual_seed(1)
    lstm = rnnkit.LSTM(I, H, kernel="fast")
    x = torch.randn(9, 13, I)
    with torch.no_grad(), autocast():
        out, _ = lstm(x)
    assert lstm.last_kernel.runs == "fast:bf16" and out.dtype == torch.float32
    cell = lstm.cells[0]
    z = torch.zeros(9, H)
    with torch.no_grad():
        want = emulated_lstm(x, cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh,
                             z, z)
    assert (out - want).abs().max() < 2e-3


@needs_bf16
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_bf16_rnn_rounds_as_promised(nonlinearity):
    """The Elman RNN's bf16 kernel, odd sizes: equal to the emulation of its rounding."""
    torch.manual_seed(5)
    I, H = 7, 19
    rnn = rnnkit.RNN(I, H, nonlinearity=nonlinearity, kernel="fast")
    x = torch.randn(5, 9, I)
    with torch.no_grad(), autocast():
        out, _ = rnn(x)
    assert rnn.last_kernel.runs == "fast:bf16"
    cell, r = rnn.cells[0], (lambda t: t.bfloat16().float())
    act = torch.relu if nonlinearity == "relu" else torch.tanh
    h, want = torch.zeros(5, H), []
    with torch.no_grad():
        for t in range(9):
            h = act(r(x[:, t]) @ r(cell.weight_ih).t() + r(h) @ r(cell.weight_hh).t()
                    + cell.bias_ih + cell.bias_hh)
            want.append(h)
    assert (out - torch.stack(want, 1)).abs().max() < 2e-3


@needs_bf16
def test_bf16_activations_in_and_their_gradient_out():
    """Autocast's bfloat16 activations (a bf16 input with float32 weights) run the bf16 kernel;
    the input's gradient comes back bfloat16, the weights' float32."""
    torch.manual_seed(2)
    lstm = rnnkit.LSTM(8, 16, num_layers=2, kernel="fast")
    x = torch.randn(3, 5, 8).bfloat16().requires_grad_(True)
    with autocast():
        out, _ = lstm(x)
    assert lstm.last_kernel.runs == "fast:bf16"
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0
    assert all(p.grad.dtype == torch.float32 for p in lstm.parameters())


def test_without_bf16_instructions_float32_with_one_notice(monkeypatch, capsys):
    """A CPU without AVX512-BF16 (the capability forced off): bf16 autocast runs rnnkit's
    float32 fast path, equal to it outside autocast, with one line on stderr, once."""
    monkeypatch.setenv("RNNKIT_BF16", "0")
    monkeypatch.setattr(fast, "_NOTICED", set())
    assert not native.bf16_capable()
    torch.manual_seed(3)
    lstm = rnnkit.LSTM(8, 16)
    x = torch.randn(4, 6, 8)
    with autocast():
        a, _ = lstm(x)
        choice = lstm.last_kernel
        a2, _ = lstm(x)
    b, _ = rnnkit.LSTM.from_torch(lstm.to_torch(), kernel="fast")(x)
    assert choice == "fast" and "without the bfloat16 kernel" in choice.why
    if native.lib() is not None:
        assert choice.runs == "fast:c"
    assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(a2, b)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in float32" in err[0] and "AVX512-BF16" in err[0], err


def test_fused_under_autocast_is_still_torch_nn_bit_for_bit():
    """kernel="fused" under bf16 autocast is torch.nn's own bf16 kernel, bit for bit."""
    torch.manual_seed(4)
    ref = nn.LSTM(8, 16, batch_first=True)
    ours = rnnkit.LSTM.from_torch(ref, kernel="fused")
    x = torch.randn(3, 5, 8)
    with autocast():
        assert torch.equal(ours(x)[0], ref(x)[0])


@needs_bf16
def test_auto_under_bf16_autocast_follows_the_table_for_this_cpu_class(monkeypatch):
    """Which bf16 kernel wins depends on the CPU (torch.nn's oneDNN multiplies on AMX tiles
    where the CPU has them): ``auto`` reads the row of this CPU's class; without one it runs
    rnnkit's bf16 kernel; recording gates runs in float32 whatever the table says."""
    lstm = rnnkit.LSTM(8, 16)
    x = torch.randn(4, 10, 8, requires_grad=True)  # 40 rows: past the "tiny" class
    with autocast():
        key = "|".join(kernels.table_key(lstm, x))
    assert key == f"cpu|bfloat16-autocast-{native.bf16_class()}|lstm|train|small"
    for row, want in (({"fused": 1.0, "fast": 2.0}, "fused"),
                      ({"fused": 2.0, "fast": 1.0}, "fast"), (None, "fast")):
        monkeypatch.setattr(kernels, "TABLE", {} if row is None else {key: row})
        with autocast():
            c = kernels.select(lstm, x, None, False)
            lstm(x)
        assert c == want, (row, c, c.why)
        assert lstm.last_kernel.runs == ("fast:bf16" if want == "fast" else "fused")
        if row is None:
            assert "no measured row for this CPU class" in c.why
        else:
            assert "measured faster" in c.why and "bfloat16-autocast" in c.why
    with autocast():
        assert "runs fast" in kernels.explain(lstm, x)
        with rnnkit.record(lstm) as rec:
            lstm(x)
        assert lstm.last_kernel.runs == "fast:c" and rec is not None


needs_amx = pytest.mark.skipif(not (native.bf16_capable() and native.bf16_amx()),
                               reason="no AMX tiles on this CPU (or Linux refused them)")


@pytest.fixture
def two_threads():
    """Two threads (what splits the LSTM by units), put back after the test."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.skipif(native.lib() is None, reason="rnnkit's C kernels are not built here")
@pytest.mark.parametrize("K,N", [(5, 3), (64, 128), (33, 70)])
def test_c_packing_equals_the_reference_layout(K, N):
    """bindings.pack_bf16 (C, one pass) writes exactly native.pack_bf16's layout: a weight read
    as its transpose, and blocks side by side ([W_hh | W_ih]), odd sizes padded with zeros."""
    torch.manual_seed(6)
    w, m, m2 = torch.randn(N, K), torch.randn(K, N), torch.randn(K, 7)
    bits = lambda t: t.view(torch.int16)  # noqa: E731
    assert torch.equal(bits(bindings.pack_bf16([w], transposed=True)),
                       bits(native.pack_bf16(w.t())))
    assert torch.equal(bits(bindings.pack_bf16([m, m2])),
                       bits(native.pack_bf16(torch.cat([m, m2], 1))))
    with pytest.raises(ValueError, match=r"blocks\[1\] must be \(K, n\) with K=" + str(K)):
        bindings.pack_bf16([m, torch.randn(K + 1, 3)])


@needs_amx
@pytest.mark.parametrize("family", FAMILIES)
def test_amx_tiles_agree_with_the_dot_products(family, two_threads):
    """The same bf16 products on AMX tiles and on AVX512-BF16 dot products (float32
    accumulation both, in another order): outputs and every gradient agree to a bf16
    rounding's echo, with lengths, two layers, both directions."""
    torch.manual_seed(7)
    cls, kw, n_state = FAMILIES[family]
    B, T, I, H = 19, 11, 32, 64
    layer = cls(I, H, num_layers=2, bidirectional=True, kernel="fast", **kw)
    x = torch.randn(B, T, I)
    lens = torch.randint(1, T + 1, (B,))
    state = tuple(0.5 * torch.randn(4, B, H) for _ in range(n_state))
    g = torch.randn(B, T, 2 * H)
    try:
        native.bf16_amx(False)
        want = outputs_and_grads(layer, x, lens, g, state)
        assert not native.bf16_amx()
    finally:
        assert native.bf16_amx(True)
    got = outputs_and_grads(layer, x, lens, g, state)
    assert layer.last_kernel.runs == "fast:bf16"
    for a, b in zip(got, want, strict=True):
        assert rel(a, b.double()) < 2e-3


@needs_amx
def test_lstm_split_by_units_equals_the_split_by_rows(two_threads):
    """On two threads the LSTM splits by units (each thread its columns of the weight, a
    barrier per step); on one it runs every row itself: the same products in the same order,
    so every output and gradient is equal bit for bit, with lengths (rows that end early)."""
    torch.manual_seed(8)
    B, T, I, H = 21, 9, 32, 64
    lstm = rnnkit.LSTM(I, H, num_layers=2, kernel="fast")
    x = torch.randn(B, T, I)
    lens = torch.randint(1, T + 1, (B,))
    state = tuple(0.5 * torch.randn(2, B, H) for _ in range(2))
    g = torch.randn(B, T, H)
    split = outputs_and_grads(lstm, x, lens, g, state)
    torch.set_num_threads(1)
    rows = outputs_and_grads(lstm, x, lens, g, state)
    for a, b in zip(split, rows, strict=True):
        assert torch.equal(a, b)
