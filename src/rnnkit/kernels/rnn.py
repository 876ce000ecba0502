"""The fast path's Elman RNN (tanh or relu; :mod:`rnnkit.cells.rnn`) over packed rows: a
forward and a hand-written backward, in one C call per pass (``csrc/rnn.c``) or in torch ops,
as the fast path decided for the call; the input projection of all steps as one product
before the recurrence, the weight gradient as one product after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.plan import Plan, grad_or_zeros


class RNNSequence(torch.autograd.Function):
    """Elman RNN over packed rows from the input projection ``xp`` ``(N, H)`` (biases
    included): ``h = tanh(xp + W_hh h_prev)``, or ``max(., 0)`` with ``relu``."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, h0: Tensor, plan: Plan, relu: bool,
                use_c: bool):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = xp.new_empty(B + N, H)
        HH[:B] = h0
        A = xp.new_empty(N, H)  # pre-activations
        if use_c:  # the whole recurrence in C
            sizes, offs = plan.steps()
            wh = native.pack(w.t())  # (referenced while C runs)
            bindings.rnn_seq_forward(xp, wh, HH, A, sizes, offs, plan.T, B, H, relu)
        else:
            mat, p = gemm.Fixed(w.t(), B), 0
            for b, s in zip(plan.sizes, plan.offs, strict=True):
                a = mat(HH[p:p + b], A[s:s + b], xp[s:s + b])
                p = B + s
                if relu:
                    torch.clamp(a, min=0, out=HH[p:p + b])
                else:
                    torch.tanh(a, out=HH[p:p + b])
        ctx.plan, ctx.relu, ctx.use_c = plan, relu, use_c
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, HH)
        return HH[B:], plan.final(HH), A

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dA_rec: Tensor | None):
        plan: Plan = ctx.plan
        w, HH = ctx.saved_tensors
        B, H = plan.B, w.shape[1]
        Y = HH[B:]
        dY = grad_or_zeros(dY, Y)
        if dA_rec is None and ctx.use_c:  # the reverse-time loop in one C call
            dY, dA, DAT = dY.contiguous(), torch.empty_like(Y), Y.new_empty(H, plan.N)
            run = plan.scatter_final(dhN, H, Y)
            sizes, offs = plan.steps()
            wp = native.pack(w)  # dh_prev = dA @ W_hh
            bindings.rnn_seq_backward(HH, dY, wp, run, dA, DAT, sizes, offs, plan.T, B, H, ctx.relu)
            return dA, gemm.products_t(DAT, [plan.previous(HH)])[0], run, None, None, None
        mat = gemm.Fixed(w, ctx.plan.B)  # dh_prev = dA @ W_hh
        D = (Y > 0).to(Y.dtype) if ctx.relu else 1 - Y * Y
        dA = torch.empty_like(Y)
        run = plan.scatter_final(dhN, H, Y)
        for b, s in zip(reversed(plan.sizes), reversed(plan.offs), strict=True):
            e = s + b
            torch.add(run[:b], dY[s:e], out=dA[s:e]).mul_(D[s:e])
            if dA_rec is not None:
                dA[s:e].add_(dA_rec[s:e])
            mat(dA[s:e], run[:b])
        dw = gemm.mm(dA.t(), plan.previous(HH))
        return dA, dw, run, None, None, None


def direction(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan, record: bool,
              use_c: bool, relu: bool = False
              ) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """One layer and direction of an Elman RNN (tanh, or relu) over packed rows ``X``
    ``(N, I)`` from the sorted state ``(h,)`` ``(B, H)``: packed ``h`` ``(N, H)``, the final
    ``(h,)`` and, when ``record``, packed ``h`` and the pre-activation ``(N, H)``."""
    bias = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
    xp = gemm.linear(X, cell.weight_ih, bias)
    Y, hN, A = RNNSequence.apply(xp, cell.weight_hh, state[0], plan, relu, use_c)
    rec = None
    if record:
        rec = {"h": Y, **dict(zip(cell.gate_names, A.split(cell.hidden_size, 1), strict=True))}
    return Y, (hN,), rec


class RNNSequenceBF16(torch.autograd.Function):
    """:class:`RNNSequence` in bfloat16 (``csrc/bf16.c``), its input projection included:
    ``X`` ``(N, I)`` float32 or bfloat16, ``w_ih`` ``(H, I)``, ``bias`` ``(H,)`` or None,
    ``w`` ``(H, H)`` float32; ``X``, ``h_prev`` and the weights rounded to bfloat16 for the
    products, float32 accumulation, activations and gradients. Returns packed ``h`` ``(N, H)``
    and the final ``h`` ``(B, H)``, float32."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, bias: Tensor | None, w: Tensor, h0: Tensor,
                plan: Plan, relu: bool):
        from rnnkit.kernels.lstm import _bf16_rows

        with torch.autocast("cpu", enabled=False):
            B, N, H, I = plan.B, plan.N, h0.shape[1], X.shape[1]
            HH = h0.new_empty(B + N, H, dtype=torch.float32)
            HB = h0.new_zeros(B + N, bindings.even(H), dtype=torch.bfloat16)
            HH[:B] = h0
            HB[:B, :H] = h0
            A = HH.new_empty(N, H)
            Xb = _bf16_rows(X)
            sizes, offs = plan.steps()
            wx, wh = bindings.pack_bf16([w_ih], True), bindings.pack_bf16([w], True)
            b = HH.new_zeros(H) if bias is None else bias.to(torch.float32).contiguous()
            bindings.rnn_seq_forward_bf16(Xb, wx, b, wh, HH, HB, A, sizes, offs, plan.T, B, H,
                                          I, relu)
        ctx.plan, ctx.relu, ctx.has_bias, ctx.x_dtype, ctx.I = (plan, relu, bias is not None,
                                                                X.dtype, I)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(Xb, w_ih, w, HH, HB)
        return HH[B:], plan.final(HH)

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None):
        plan: Plan = ctx.plan
        Xb, w_ih, w, HH, HB = ctx.saved_tensors
        need = ctx.needs_input_grad
        B, H = plan.B, w.shape[1]
        I = ctx.I if need[0] else 0
        with torch.autocast("cpu", enabled=False):
            Y = HH[B:]
            dY = grad_or_zeros(dY, Y).to(torch.float32).contiguous()
            DAT = Y.new_empty(H, plan.N, dtype=torch.bfloat16)
            dX = Y.new_empty(plan.N, I) if I else None
            run = plan.scatter_final(dhN, H, Y).to(torch.float32)
            db = Y.new_zeros(bindings.threads(), H)
            sizes, offs = plan.steps()
            wp = bindings.pack_bf16([w] if not I else [w, w_ih])  # [W_hh | W_ih]
            bindings.rnn_seq_backward_bf16(HH, dY, wp, run, DAT, dX, db, sizes, offs, plan.T,
                                           B, H, I, ctx.relu)
            dw_ih = DAT.mm(Xb[:, :w_ih.shape[1]]).float() if need[1] else None
            dw = DAT.mm(plan.previous(HB)[:, :H]).float() if need[3] else None
        if dX is not None:
            dX = dX.to(ctx.x_dtype)
        return (dX, dw_ih, db.sum(0) if ctx.has_bias and need[2] else None, dw, run, None,
                None)


def direction_bf16(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan, record: bool,
                   use_c: bool, relu: bool = False) -> tuple[Tensor, tuple[Tensor, ...], None]:
    """:func:`direction` on the bfloat16 kernel (:class:`RNNSequenceBF16`; no recording)."""
    if record:
        raise ValueError("the bfloat16 RNN kernel does not record: record in float32")
    bias = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
    Y, hN = RNNSequenceBF16.apply(X, cell.weight_ih, bias, cell.weight_hh, state[0], plan,
                                  relu)
    return Y, (hN,), None
