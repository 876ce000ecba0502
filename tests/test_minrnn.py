"""minGRU / minLSTM: the cells against the paper's equations computed by hand, and the parallel
scans against the sequential step loop (outputs, states, gradients) up to T = 4096."""

import pytest
import torch

import rnnkit
from rnnkit.cells.minrnn import MinGRUCell, MinLSTMCell, g, log_g
from rnnkit.kernels import native, scan

CLASSES = {"mingru": rnnkit.MinGRU, "minlstm": rnnkit.MinLSTM}


def test_g_and_log_g():
    v = torch.tensor([-30.0, -2.0, -1e-3, 0.0, 1e-3, 3.0, 80.0])
    expected = torch.tensor([torch.sigmoid(torch.tensor(-30.0)).item(), 1 / (1 + 2.718281828**2),
                             0.49975, 0.5, 0.501, 3.5, 80.5])
    torch.testing.assert_close(g(v), expected, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(log_g(v), torch.log(expected), rtol=1e-5, atol=1e-6)


def test_mingru_step_is_the_paper_equation():
    torch.manual_seed(0)
    cell = MinGRUCell(3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    W, b = cell.weight_ih, cell.bias_ih
    z = 1 / (1 + torch.exp(-(x @ W[:4].T + b[:4])))
    v = x @ W[4:].T + b[4:]
    h_tilde = torch.where(v >= 0, v + 0.5, 1 / (1 + torch.exp(-v)))
    (h_new,), gates = cell.step(x, (h,))
    torch.testing.assert_close(h_new, (1 - z) * h + z * h_tilde)
    torch.testing.assert_close(gates["update"], z)


def test_minlstm_step_normalises_forget_and_input():
    torch.manual_seed(0)
    cell = MinLSTMCell(3, 4)
    x, h = torch.randn(2, 3) * 3, torch.randn(2, 4)
    W, b = cell.weight_ih, cell.bias_ih
    f = torch.sigmoid(x @ W[:4].T + b[:4])
    i = torch.sigmoid(x @ W[4:8].T + b[4:8])
    h_tilde = g(x @ W[8:].T + b[8:])
    (h_new,), gates = cell.step(x, (h,))
    torch.testing.assert_close(h_new, f / (f + i) * h + i / (f + i) * h_tilde)
    torch.testing.assert_close(gates["forget"] + gates["input"], torch.ones(2, 4))
    la, lb = cell.log_coefficients(x)
    a, bb, _ = cell.coefficients(x)
    torch.testing.assert_close(la.exp(), a)
    torch.testing.assert_close(lb.exp(), bb)


def run(layer, x, h0, lengths):
    xx = x.clone().requires_grad_(True)
    hh = h0.clone().requires_grad_(True)
    out, h = layer(xx, hh, lengths=lengths)
    gen = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=gen)).sum() + (
        h * torch.randn(h.shape, generator=gen)).sum()
    layer.zero_grad()
    loss.backward()
    return [out, h, xx.grad, hh.grad, *[p.grad for p in layer.parameters()]], layer.last_kernel


def pair(kind, scan="chunked", **kw):
    torch.manual_seed(0)
    par = CLASSES[kind](5, 6, scan=scan, **kw)
    seq = CLASSES[kind](5, 6, kernel="reference", **kw)
    seq.load_state_dict(par.state_dict())
    return par, seq


needs_native = pytest.mark.skipif(native.lib() is None, reason="no C compiler for rnnkit's kernels")
SCAN_ALGOS = ["chunked", pytest.param("native", marks=needs_native)]


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
@pytest.mark.parametrize("T", [1, 7, 64, 300])
@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("algo", SCAN_ALGOS)
def test_scan_equals_sequential(kind, layers, bidir, T, use_lengths, algo):
    par, seq = pair(kind, scan=algo, num_layers=layers, bidirectional=bidir)
    D = 2 if bidir else 1
    x, h0 = torch.randn(3, T, 5), torch.randn(layers * D, 3, 6)
    lengths = torch.tensor([T, max(1, T // 3), 1]) if use_lengths else None
    v1, k1 = run(par, x, h0, lengths)
    v2, k2 = run(seq, x, h0, lengths)
    assert (k1, k2) == ("scan", "reference")
    for a, b in zip(v1, v2, strict=True):
        # weight gradients sum B*T terms: float32 rounding (of either side; both are within
        # ~2e-5 of a float64 run at T = 300) scales with their size
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("algo", SCAN_ALGOS)
def test_scan_equals_sequential_at_4096_with_extreme_gates(kind, algo):
    """Saturated gates (pre-activations ~ ±50) over 4096 steps: no overflow, no NaN."""
    par, seq = pair(kind, scan=algo)
    x = torch.randn(2, 4096, 5) * 10
    h0 = torch.randn(1, 2, 6)
    v1, _ = run(par, x, h0, torch.tensor([4096, 2500]))
    v2, _ = run(seq, x, h0, torch.tensor([4096, 2500]))
    for a, b in zip(v1, v2, strict=True):
        assert torch.isfinite(a).all()
        # weight gradients sum 8192 terms of size ~1e3: float32 rounding scales with them
        # (in float64 both agree to 1e-12 relative)
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("kind", CLASSES)
def test_log_space_scan_agrees_at_4096(kind):
    """Heinsen's log-space scan: the same values up to its float32 precision, finite."""
    chunked, _ = pair(kind)
    log, _ = pair(kind, scan="log")
    x = torch.randn(2, 4096, 5) * 3
    h0 = torch.rand(1, 2, 6)
    v1, _ = run(chunked, x, h0, None)
    v2, _ = run(log, x, h0, None)
    for b in v2:
        assert torch.isfinite(b).all()
    torch.testing.assert_close(v2[0], v1[0], atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(v2[1], v1[1], atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("kind", CLASSES)
def test_lengths_freeze_state_and_zero_outputs(kind):
    layer = CLASSES[kind](5, 6)
    x = torch.randn(3, 9, 5)
    out, h = layer(x, lengths=torch.tensor([9, 4, 2]))
    short, h_short = layer(x[1:2, :4])
    torch.testing.assert_close(out[1, :4], short[0])
    torch.testing.assert_close(h[0, 1], h_short[0, 0])
    assert (out[1, 4:] == 0).all() and (out[2, 2:] == 0).all()


def test_recording_on_scan_equals_reference():
    par, seq = pair("minlstm", num_layers=2, bidirectional=True)
    x = torch.randn(3, 8, 5)
    lengths = torch.tensor([8, 5, 2])
    recs = []
    for layer in (par, seq):
        with rnnkit.record(layer) as rec:
            layer(x, lengths=lengths)
        recs.append(rec.only)
    assert recs[0].kernel == "scan" and set(recs[0].names) == {"h", "forget", "input",
                                                               "candidate"}
    for name in recs[1].names:
        torch.testing.assert_close(recs[0][name], recs[1][name], atol=1e-5, rtol=1e-5)


class _Fixed:
    """Stands in for a cell whose ``linear_ih`` returns given pre-activations."""

    def __init__(self, pre):
        self.pre = pre

    def linear_ih(self, x):
        return self.pre


@needs_native
@pytest.mark.parametrize("kind", CLASSES)
def test_native_scan_on_gate_extremes_and_the_g_branch(kind):
    """The C pass's own exp/log/sigmoid against the cell's equations in float64 at chosen
    pre-activations: both sides of ``g``'s branch at 0, saturated gates at ±100 (where
    ``f / (f + i)`` would be 0/0 if computed directly), values and gradients."""
    torch.manual_seed(0)
    cls = MinGRUCell if kind == "mingru" else MinLSTMCell
    G = cls.num_gates
    vals = torch.tensor([-100.0, -30.0, -5.0, -1e-3, 0.0, 1e-3, 0.7, 5.0, 30.0, 100.0])
    H, T = vals.numel(), 3
    pre = torch.cat([vals.roll(k) for k in range(G)]).repeat(1, T, 1)  # (1, T, G*H)
    pre[:, 1:] += torch.randn(1, T - 1, G * H)
    h0 = torch.randn(1, H)
    p64 = pre.double().requires_grad_(True)
    h, ref = h0.double(), []
    for t in range(T):  # the cell's own coefficients, float64
        a, b, _ = cls.coefficients(_Fixed(p64[:, t]), None)
        h = a * h + b
        ref.append(h)
    ref = torch.stack(ref, 1)
    ours = pre.clone().requires_grad_(True)
    out = scan._NativeScan.apply(ours, h0, torch.tensor([T]), G == 3)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-6)
    w = torch.randn(1, T, H, dtype=torch.float64)
    (ref * w).sum().backward()
    (out * w.float()).sum().backward()
    torch.testing.assert_close(ours.grad.double(), p64.grad, atol=2e-6, rtol=2e-5)


def test_auto_scan_resolves_by_device_and_dtype():
    x = torch.randn(2, 5, 3)
    expected = "native" if native.lib() is not None else "chunked"
    assert scan.resolve("auto", x) == expected
    assert scan.resolve("auto", x.double()) == "chunked"
    assert scan.resolve("log", x) == "log"


def test_explicit_native_scan_that_cannot_run_is_an_error():
    layer = rnnkit.MinGRU(3, 4, scan="native").double()
    with pytest.raises(ValueError, match=r"scan='native' runs on CPU float32"):
        layer(torch.randn(2, 5, 3, dtype=torch.float64))


def test_errors_and_torch_has_no_equivalent():
    with pytest.raises(ValueError, match="scan must be"):
        rnnkit.MinGRU(3, 4, scan="fft")
    with pytest.raises(ValueError, match=r"torch\.nn has no equivalent"):
        rnnkit.MinGRU(3, 4).to_torch()
    with pytest.raises(ValueError, match="not linear in its state"):
        rnnkit.LSTM(3, 4, kernel="scan")(torch.randn(1, 2, 3))
    assert rnnkit.count_params(rnnkit.MinGRU(3, 4)) == 2 * 4 * (3 + 1)


@needs_native
@pytest.mark.parametrize("kind", CLASSES)
def test_native_scan_split_over_threads_equals_one_thread(kind):
    """Batch rows split over two threads (B = 9: blocks of 4 and 5) give the one-thread values,
    lengths included (only the weight products' summation order may differ)."""
    torch.manual_seed(0)
    layer = CLASSES[kind](5, 6, scan="native")
    x, h0 = torch.randn(9, 40, 5), torch.randn(1, 9, 6)
    lengths = torch.randint(1, 41, (9,))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run(layer, x, h0, lengths)[0])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
