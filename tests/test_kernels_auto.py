"""``kernel="auto"``: the measured-faster of fused and fast per call, equal to torch.nn within
1e-5 (float32) for every family, deterministic, and explained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import native
from rnnkit.kernels.auto_table import TABLE

FAMILIES = {
    "rnn_tanh": (rnnkit.RNN, nn.RNN, {}),
    "rnn_relu": (rnnkit.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, nn.LSTM, {}),
    "gru": (rnnkit.GRU, nn.GRU, {}),
}
B, T, I = 3, 7, 5


def expected(mode: str, training: bool, H: int, rows: int = B * T) -> str:
    """What the shipped table says for this call (independent of the dispatch code)."""
    size = "tiny" if rows <= 32 else "small" if H <= 384 else "large"
    times = TABLE.get(f"cpu|float32|{mode}|{'train' if training else 'infer'}|{size}")
    if not times:
        return "fused"
    best = min(times, key=lambda k: (times[k], k))
    return best if best == "fused" or times[best] <= times["fused"] * (1 - kernels.MARGIN) \
        else "fused"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("H", [8, 400])
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_auto_equals_torch_nn_and_names_its_choice(family, H, layers, bidir):
    torch.manual_seed(0)
    ours_cls, torch_cls, kw = FAMILIES[family]
    ref = torch_cls(I, H, num_layers=layers, bidirectional=bidir, batch_first=True, **kw)
    ours = ours_cls.from_torch(ref)
    x = torch.randn(B, T, I)
    # training: outputs and every gradient
    xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    o1, _ = ref(xr)
    o2, _ = ours(xo)
    g = torch.randn(o1.shape)
    (o1 * g).sum().backward()
    (o2 * g).sum().backward()
    torch.testing.assert_close(o2, o1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xo.grad, xr.grad, atol=1e-5, rtol=1e-5)
    for tname, rname in ours.torch_names():
        torch.testing.assert_close(dict(ours.named_parameters())[rname].grad,
                                   dict(ref.named_parameters())[tname].grad,
                                   atol=1e-5, rtol=1e-5)
    want = expected(ours.mode, True, H)
    assert ours.last_kernel == want
    assert want in ours.last_kernel.why or "fused" in ours.last_kernel.why
    assert f"runs {want}" in kernels.explain(ours, xo)
    # inference
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
        assert ours.last_kernel == expected(ours.mode, False, H)
        assert f"runs {ours.last_kernel}" in kernels.explain(ours, x)


def test_gru_and_rnn_training_take_the_fast_path_on_cpu():
    """The shipped table: rnnkit's fast path trains GRU and tanh RNN faster than torch.nn."""
    for mode in ("gru", "rnn_tanh"):
        t = TABLE[f"cpu|float32|{mode}|train|small"]
        assert t["fast"] < t["fused"]
    x = torch.randn(4, 16, I, requires_grad=True)  # 64 rows: not "tiny"
    layer = rnnkit.GRU(I, 16)
    layer(x)
    assert layer.last_kernel == "fast" and "measured faster" in layer.last_kernel.why


def test_a_tiny_call_reads_the_tiny_row():
    """A few rows (a streamed chunk, B * T <= 32) have their own rows in the table: there the
    fixed cost per call decides, not the products; training has no tiny row (fused)."""
    layer = rnnkit.GRU(I, 16)
    for shape, grad in (((1, 16), False), ((2, 16), False), ((1, 33), False), ((1, 16), True)):
        x = torch.randn(*shape, I)
        with torch.set_grad_enabled(grad):
            layer(x)
        want = expected("gru", grad, 16, shape[0] * shape[1])
        assert layer.last_kernel == want, (shape, grad, layer.last_kernel.why)
        if shape[0] * shape[1] <= 32 and not grad and "cpu|float32|gru|infer|tiny" in TABLE:
            assert "tiny" in layer.last_kernel.why


def test_fused_stays_bit_exact_torch_nn():
    for family, (ours_cls, torch_cls, kw) in FAMILIES.items():
        torch.manual_seed(1)
        ref = torch_cls(I, 16, num_layers=2, batch_first=True, **kw)
        ours = ours_cls.from_torch(ref, kernel="fused")
        x = torch.randn(B, T, I)
        a, b = ours(x)[0], ref(x)[0]
        assert torch.equal(a, b), family
        assert ours.last_kernel == "fused" and "asked for" in ours.last_kernel.why


def test_deterministic_and_autocast_is_the_bf16_fast_path():
    """Under CPU bf16 autocast the fast path serves (its bfloat16 kernel where the CPU has
    AVX512-BF16, else float32: tests/test_kernels_bf16.py)."""
    layer = rnnkit.GRU(I, 16)
    x = torch.randn(B, T, I, requires_grad=True)
    picks = {kernels.select(layer, x, None, False) for _ in range(5)}
    assert len(picks) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = kernels.select(layer, x, None, False)
        row = TABLE.get("|".join(kernels.table_key(layer, x)))
        want = "fast" if row is None or not native.bf16_capable() else \
            kernels.measured(layer, x)[0]  # this CPU class's row (AMX: torch.nn may win)
        assert c == want and ("bf16 autocast" in c.why or "bfloat16-autocast" in c.why), c.why
        assert f"runs {want}" in kernels.explain(layer, x)


def test_explain_names_the_other_kernels():
    text = kernels.explain(rnnkit.MinGRU(I, 16), torch.randn(B, T, I))
    assert "runs scan" in text and "torch.nn has no fused kernel" in text
    ragged = kernels.explain(rnnkit.LSTM(I, 16), torch.randn(B, T, I), torch.tensor([T, 2, 1]))
    assert "runs fast" in ragged and "different lengths" in ragged
    assert "recording" in kernels.explain(rnnkit.LSTM(I, 16), torch.randn(B, T, I), record=True)
