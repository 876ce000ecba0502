"""Kernel fuzz (hypothesis, bounded): random small shapes x every cell (LayerNormLSTM with and
without bias) x every kernel that can serve the call x lengths x directions x layers agree
with the reference loop within a scale-aware float32 tolerance, forward and backward, and
never crash."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit import kernels
from rnnkit.kernels.native import usable as native_ok
from rnnkit.layers import CELLS


def _tol(ref: torch.Tensor) -> float:
    return 2e-5 * (1.0 + float(ref.abs().max()))


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(cell=st.sampled_from(sorted(CELLS)), B=st.integers(1, 4), T=st.integers(1, 9),
       I=st.integers(1, 6), H=st.integers(1, 9), layers=st.integers(1, 2),
       bidirectional=st.booleans(), bias=st.booleans(), ragged=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_every_kernel_that_can_serve_agrees_with_the_reference(cell, B, T, I, H, layers,
                                                               bidirectional, bias, ragged,
                                                               seed):
    torch.manual_seed(seed)
    ref = CELLS[cell](I, H, num_layers=layers, bidirectional=bidirectional, bias=bias,
                      kernel="reference")
    x = torch.randn(B, T, I) * 2
    lengths = torch.randint(1, T + 1, (B,)) if ragged else None
    xr = x.clone().requires_grad_(True)
    y_ref, _ = ref(xr, lengths=lengths)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [xr, *ref.parameters()])
    runs = [(name, {}) for name in ("auto", *kernels.KERNELS) if name != "reference"]
    if cell in ("mingru", "minlstm"):  # each scan algorithm of the scan kernel by name too
        runs += [("scan", {"scan": s}) for s in ("native", "chunked", "log")]
    for name, extra in runs:
        layer = CELLS[cell](I, H, num_layers=layers, bidirectional=bidirectional, bias=bias,
                            kernel=name, **extra)
        if extra.get("scan") == "native" and not native_ok(x):
            continue
        # the log scan is the documented low-precision form (~1e-3 relative, never "auto")
        rtol = 2e-3 if extra.get("scan") == "log" else 2e-5
        layer.load_state_dict(ref.state_dict())
        if name != "auto" and kernels.why_not(name, layer, x, False) is not None:
            continue
        xk = x.clone().requires_grad_(True)
        try:
            y, _ = layer(xk, lengths=lengths)
        except ValueError as e:  # a kernel may refuse a call it cannot serve, by name
            assert "cannot run this call" in str(e), (name, e)
            continue
        torch.testing.assert_close(y, y_ref, rtol=rtol, atol=_tol(y_ref) * rtol / 2e-5,
                                   msg=f"{cell} kernel={name} {extra} ({layer.last_kernel})")
        g = torch.autograd.grad(y.square().sum(), [xk, *layer.parameters()])
        for a, b in zip(g, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=5 * rtol, atol=10 * _tol(b) * rtol / 2e-5,
                                       msg=f"{cell} kernel={name} {extra} gradient")
