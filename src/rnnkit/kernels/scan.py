"""Parallel scans for recurrences that are linear in the state: ``h_t = a_t ⊙ h_{t-1} + b_t``
(minGRU, minLSTM; see :mod:`rnnkit.cells.minrnn`), over the whole sequence at once.

Three algorithms, all exact up to float rounding (``layer.scan``):

* ``"native"`` (what ``"auto"``, the default, picks on CPU float32 where the C kernels build):
  one pass over time per sequence in C (``csrc/minrnn.c``), vectorised over the
  units, the batch rows split over torch's threads. The recurrence is memory bound: this pass
  reads the input projection once and writes ``h`` once, where a parallel-over-time scan reads
  and writes every value several times. Backward: the same pass reversed in time
  (``∂L/∂h_t = ∂L/∂y_t + a_{t+1} ∂L/∂h_{t+1}``), writing the projection's gradient.
* ``"chunked"`` (``"auto"`` elsewhere: float64, GPU): split time into ``K`` chunks of
  ``C ≈ √T`` steps; run the recurrence inside every chunk at once from a zero start (``C``
  vectorised steps over ``(B, K, H)``), carry the chunk-end states across chunks (``K`` small
  steps), and add each carry times the running product of ``a``. No division and no
  logarithm, so nothing can overflow; ``2√T`` Python-level steps instead of ``T``. Backward
  is the same scan run backwards in time, hand-written.
* ``"log"``: Heinsen's (2023) log-space scan used by the paper,
  ``log h_t = A_t + logcumsumexp(log b - A)_t`` with ``A_t = Σ_{s<=t} log a_s``; needs
  ``b > 0`` (the paper's ``g`` ensures it) and loses relative precision as ``|A_t|`` grows:
  the low-precision form, up to ~1e-3 relative against the reference in float32 (20-650x the
  reference's own float32 error in fuzzing), kept for comparison with the paper and never
  chosen by ``"auto"``.

The loop over layers and directions is :func:`rnnkit.kernels.stack.over_stack`; measured
speeds: ``python bench/kernels.py --only minrnn`` (``bench/results/kernels-cpu.md``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.stack import (
    Result,
    Stack,
    State,
    float_family,
    over_stack,
    time_mask,
    time_reversal,
)

MODES = ("mingru", "minlstm")
SCANS = ("auto", "native", "chunked", "log")


def why_not(layer: Stack, x: Tensor, record: bool) -> str | None:
    return float_family(layer, x, MODES, f"{layer.cell_name} is not linear in its state; no "
                        "parallel scan applies", "the scan")


def _chunked(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h`` ``(B, T, H)`` with ``h_t = a_t h_{t-1} + b_t``, ``h_{-1} = h0`` ``(B, H)``.

    Works time-major inside chunks, ``(C, B, K, H)``, so that every one of the ``C`` vectorised
    steps reads and writes one contiguous block (strided slices of a long sequence thrash the
    cache: at T = 4096 the layout alone is a 2-3x difference)."""
    B, T, H = a.shape
    C = max(1, math.isqrt(T))
    K = -(-T // C)
    if K * C != T:
        a = torch.cat([a, a.new_ones(B, K * C - T, H)], 1)
        b = torch.cat([b, b.new_zeros(B, K * C - T, H)], 1)
    a4 = a.view(B, K, C, H).permute(2, 0, 1, 3).contiguous()  # (C, B, K, H); read only
    loc = b.view(B, K, C, H).permute(2, 0, 1, 3).clone(  # a copy: becomes the in-chunk scan
        memory_format=torch.contiguous_format)
    for c in range(1, C):  # the recurrence inside each chunk, from a zero start
        loc[c].addcmul_(a4[c], loc[c - 1])
    A = torch.cumprod(a4, dim=0)  # running product of a inside each chunk
    carry = torch.empty_like(loc[0])  # (B, K, H): the state entering each chunk
    carry[:, 0] = h0
    for k in range(1, K):
        torch.addcmul(loc[-1, :, k - 1], A[-1, :, k - 1], carry[:, k - 1], out=carry[:, k])
    h = loc.addcmul_(A, carry.unsqueeze(0))  # (C, B, K, H)
    return h.permute(1, 2, 0, 3).reshape(B, K * C, H)[:, :T]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = _chunked(a.contiguous(), b.contiguous(), h0).contiguous()
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, h0, h = ctx.saved_tensors
        # g_t = dh_t + a_{t+1} g_{t+1}: the same scan, backwards in time
        a_next = torch.cat([a[:, 1:], a.new_zeros(a[:, :1].shape)], 1)
        g = _chunked(a_next.flip(1), dh.flip(1).contiguous(), torch.zeros_like(h0)).flip(1)
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], 1)
        return g * h_prev, g, a[:, 0] * g[:, 0]


def linear_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """Chunked parallel scan: ``a``, ``b`` ``(B, T, H)``, ``h0`` ``(B, H)`` -> ``h`` ``(B, T, H)``
    with ``h_t = a_t ⊙ h_{t-1} + b_t``."""
    return _LinearScan.apply(a, b, h0)


def log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """Heinsen's log-space scan, same recurrence with ``a = exp(log_a)``, ``b = exp(log_b)``;
    ``h0`` of any sign enters as ``exp(A_t) h0``."""
    A = torch.cumsum(log_a, dim=1)
    h = torch.exp(A + torch.logcumsumexp(log_b - A, dim=1))
    return h + torch.exp(A) * h0.unsqueeze(1)


class _NativeScan(torch.autograd.Function):
    """minGRU / minLSTM from the input projection ``pre`` ``(B, T, G*H)`` in one C pass over
    time per sequence (``csrc/minrnn.c``), batch rows split over torch's OpenMP threads;
    ``lens`` ``(B,)`` int64."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, h0: Tensor, lens: Tensor, lstm: bool) -> Tensor:
        B, T, _ = pre.shape
        H = h0.shape[1]
        pre, h0 = pre.contiguous(), h0.contiguous()
        h = pre.new_empty(B, T, H)
        bindings.minrnn_forward(pre, h0, lens, h, B, T, H, lstm)
        ctx.save_for_backward(pre, h0, h, lens)
        ctx.lstm = lstm
        return h

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor, Tensor, None, None]:
        pre, h0, h, lens = ctx.saved_tensors
        B, T, H = h.shape
        dh = dh.contiguous()
        dpre, dh0 = torch.empty_like(pre), torch.empty_like(h0)
        bindings.minrnn_backward(pre, h0, h, lens, dh, dpre, dh0, B, T, H, ctx.lstm)
        return dpre, dh0, None, None


def resolve(scan: str, x: Tensor) -> str:
    """The algorithm that runs: ``scan="auto"`` means ``"native"`` where the C kernels are
    built and ``x`` is CPU float32, else ``"chunked"``. An explicit ``"native"`` that cannot
    run is an error, never a silent fallback."""
    if scan not in ("auto", "native"):
        return scan
    if native.usable(x):
        return "native"
    if scan == "auto":
        return "chunked"
    why = ("the C kernels could not be built (no C compiler, or RNNKIT_NATIVE=0)"
           if native.lib() is None else f"got a {x.device.type} {x.dtype} input")
    raise ValueError(f"scan='native' runs on CPU float32 with rnnkit's C kernels: {why}; "
                     "use scan='auto' or 'chunked'")


def run_direction(
    cell: Any, seq: Tensor, h0: Tensor, mask: Tensor | None, scan: str, record: bool,
    lens: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor] | None]:
    """One layer and direction: ``seq`` ``(B, T, I)`` -> ``h`` ``(B, T, H)`` (frozen past each
    length) and, when ``record``, the gates ``(B, T, H)``. ``lens`` ``(B,)`` int64 (the
    lengths, or ``T`` each) is needed by ``scan="native"``."""
    gates = None
    if scan == "native":
        B, T, I = seq.shape
        pre = gemm.linear(seq.reshape(B * T, I), cell.weight_ih, cell.bias_ih)
        h = _NativeScan.apply(pre.view(B, T, -1), h0, lens, cell.num_gates == 3)
        if record:
            gates = cell.coefficients(seq)[2]
    elif scan == "log":
        la, lb = cell.log_coefficients(seq)
        if mask is not None:
            m = mask.unsqueeze(-1)
            la, lb = la.masked_fill(~m, 0.0), lb.masked_fill(~m, -math.inf)
        h = log_scan(la, lb, h0)
        if record:
            gates = cell.coefficients(seq)[2]
    else:
        a, b, gates = cell.coefficients(seq)
        if mask is not None:
            m = mask.unsqueeze(-1)
            a, b = a.masked_fill(~m, 1.0), b.masked_fill(~m, 0.0)
        h = linear_scan(a, b, h0)
    return h, (gates if record else None)


def run(stack: Stack, x: Tensor, state: State, lengths: Tensor | None, record: bool = False,
        how: str | None = None) -> Result:
    """The kernel (see :mod:`rnnkit.kernels`); ``how``: the algorithm (:func:`resolve`)."""
    B, T, _ = x.shape
    algo = how or resolve(stack.scan, x)
    lens = None
    if algo == "native":
        lens = (torch.full((B,), T, dtype=torch.int64) if lengths is None
                else lengths.to(device="cpu", dtype=torch.int64).contiguous())
    mask = time_mask(lengths, B, T, x.device)

    def direction(cell: Any, seq: Tensor, s: tuple[Tensor, ...]):
        h, gates = run_direction(cell, seq, s[0], mask, algo, record, lens)
        final = h[:, -1]  # frozen past each length: the state at its last step
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        rec = None
        if record:
            rec = {"h": h}
            for name, v in gates.items():
                rec[name] = v if mask is None else v * mask.unsqueeze(-1).to(v.dtype)
        return h, (final,), rec

    return over_stack(stack, x, state, direction, time_reversal(stack, lengths, x), record)
