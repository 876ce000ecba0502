"""The fast path's LSTM (:mod:`rnnkit.cells.lstm`) over packed rows: forward and a
hand-written backward, in one C call per pass (``csrc/lstm.c``: recurrent products, the
input projection, ``dx`` and the cell's elementwise math inside) or in torch ops, as the
fast path decided for the call; the weight gradients as one product over all steps,
``[dW_ih | dW_hh] = dA^T [X | H_prev]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.plan import Plan, grad_or_zeros


class LSTMSequence(torch.autograd.Function):
    """LSTM over packed rows, its input projection included: ``X`` ``(N, I)``, ``w_ih``
    ``(4H, I)``, ``bias`` ``(4H,)`` or None, ``w`` = ``W_hh`` ``(4H, H)``. Taking ``X`` (not
    ``X W_ih^T + b``) lets the C kernel project each step's rows itself, and the backward form
    ``dA^T`` once for both weight gradients: ``[dW_ih | dW_hh] = dA^T [X | H_prev]`` is one
    product."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, bias: Tensor | None, w: Tensor, h0: Tensor,
                c0: Tensor, plan: Plan, use_c: bool):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = X.new_empty(B + N, H)
        CC = X.new_empty(B + N, H)
        HH[:B] = h0
        CC[:B] = c0
        G = X.new_empty(N, 4 * H)
        TC = X.new_empty(N, H)
        if use_c:  # the whole recurrence, input projection included, in C
            X = X.contiguous()
            sizes, offs = plan.steps()
            wx, wh = native.pack(w_ih.t()), native.pack(w.t())  # (referenced while C runs)
            b = X.new_zeros(4 * H) if bias is None else bias.contiguous()
            bindings.lstm_seq_forward(X, wx, b, wh, HH, CC, G, TC, sizes, offs, plan.T, B, H,
                               X.shape[1])
        else:
            xp = gemm.affine(X, w_ih, bias)
            mat = gemm.Fixed(w.t(), B)
            p = 0
            for b, s in zip(plan.sizes, plan.offs, strict=True):
                g = mat(HH[p:p + b], G[s:s + b], xp[s:s + b])
                g[:, :2 * H].sigmoid_()
                g[:, 2 * H:3 * H].tanh_()
                g[:, 3 * H:].sigmoid_()
                c = torch.mul(g[:, H:2 * H], CC[p:p + b], out=CC[B + s:B + s + b])
                c.addcmul_(g[:, :H], g[:, 2 * H:3 * H])
                tc = torch.tanh(c, out=TC[s:s + b])
                p = B + s
                torch.mul(g[:, 3 * H:], tc, out=HH[p:p + b])
        ctx.plan, ctx.has_bias, ctx.use_c = plan, bias is not None, use_c
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(X, w_ih, w, HH, CC, G, TC)
        return HH[B:], plan.final(HH), plan.final(CC), G, CC[B:]

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dcN: Tensor | None,
                 dG: Tensor | None, dC: Tensor | None):
        plan: Plan = ctx.plan
        X, w_ih, w, HH, CC, G, TC = ctx.saved_tensors
        need = ctx.needs_input_grad
        if dG is None and dC is None and ctx.use_c:
            dAT, dX, run_h, run_c, db = _lstm_backward_native(
                plan, w, w_ih if need[0] else None, CC, G, TC, dY, dhN, dcN)
        else:
            dA, run_h, run_c = LSTMSequence.recurrence_backward(plan, w, CC, G, TC, dY, dhN,
                                                                dcN, dG, dC)
            dAT, db = dA.t(), dA.sum(0)
            dX = gemm.mm(dA, w_ih) if need[0] else None
        dw_ih, dw = gemm.products_t(dAT, [X, plan.previous(HH)])  # dA^T X, dA^T H_prev
        return (dX, dw_ih, db if ctx.has_bias and need[2] else None, dw, run_h, run_c, None,
                None)

    @staticmethod
    def recurrence_backward(plan: Plan, w: Tensor, CC: Tensor, G: Tensor, TC: Tensor,
                            dY: Tensor | None, dhN: Tensor | None, dcN: Tensor | None,
                            dG: Tensor | None, dC: Tensor | None) -> tuple[Tensor, ...]:
        """The reverse-time loop in torch ops: gradients of the gate pre-activations ``dA``
        ``(N, 4H)`` and of the initial state."""
        mat = gemm.Fixed(w, plan.B)  # dh_prev = dA @ W_hh
        N, H = plan.N, w.shape[1]
        dY = grad_or_zeros(dY, TC)
        i, f, g, o = G.split(H, dim=1)
        # Factors of the gate gradients, for all steps at once:
        # dA_i = dc g i(1-i), dA_f = dc c_prev f(1-f), dA_g = dc i (1-g^2), dA_o = dh tanh(c) o(1-o)
        K = o * (1 - TC * TC)  # dc += dh * K
        P = torch.empty_like(G)
        torch.mul(g, i * (1 - i), out=P[:, :H])
        torch.mul(plan.previous(CC), f * (1 - f), out=P[:, H:2 * H])
        torch.mul(i, 1 - g * g, out=P[:, 2 * H:3 * H])
        torch.mul(TC, o * (1 - o), out=P[:, 3 * H:])
        P3 = P[:, :3 * H].view(N, 3, H)
        dA = torch.empty_like(G)
        dA3 = dA[:, :3 * H].view(N, 3, H)
        run_h = plan.scatter_final(dhN, H, TC)
        run_c = plan.scatter_final(dcN, H, TC)
        dh_buf, dc_buf = torch.empty_like(run_h), torch.empty_like(run_c)
        E = None  # gradient reaching the recorded gates, through to their pre-activations
        if dG is not None:
            E = dG * torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], 1)
        for b, s in zip(reversed(plan.sizes), reversed(plan.offs), strict=True):
            e = s + b
            dh = torch.add(run_h[:b], dY[s:e], out=dh_buf[:b])
            dc = torch.addcmul(run_c[:b], dh, K[s:e], out=dc_buf[:b])
            if dC is not None:
                dc.add_(dC[s:e])
            torch.mul(dc.unsqueeze(1), P3[s:e], out=dA3[s:e])
            torch.mul(dh, P[s:e, 3 * H:], out=dA[s:e, 3 * H:])
            if E is not None:
                dA[s:e].add_(E[s:e])
            torch.mul(dc, f[s:e], out=run_c[:b])
            mat(dA[s:e], run_h[:b])
        return dA, run_h, run_c


def _lstm_backward_native(plan: Plan, w: Tensor, w_ih: Tensor | None, CC: Tensor, G: Tensor,
                          TC: Tensor, dY: Tensor | None, dhN: Tensor | None,
                          dcN: Tensor | None) -> tuple:
    """:meth:`LSTMSequence.recurrence_backward` as one C call over the whole sequence, which also
    makes the input's gradient ``dA W_ih`` (when ``w_ih`` is given) and sums ``dA`` over rows:
    returns ``dA^T`` ``(4H, N)``, ``dX`` ``(N, I)`` or None, the initial state's gradients and
    the bias gradient ``(4H,)``."""
    H = w.shape[1]
    dY = grad_or_zeros(dY, TC).contiguous()
    dAT = G.new_empty(4 * H, plan.N)
    I = 0 if w_ih is None else w_ih.shape[1]
    dX = G.new_empty(plan.N, I) if I else None
    run_h = plan.scatter_final(dhN, H, TC)
    run_c = plan.scatter_final(dcN, H, TC)
    db = G.new_zeros(bindings.threads(), 4 * H)  # bias sums, a row per thread, added up below
    sizes, offs = plan.steps()
    wp = native.pack(w if w_ih is None else torch.cat([w, w_ih], 1))  # [W_hh | W_ih]
    bindings.lstm_seq_backward(G, CC, TC, dY, wp, run_h, run_c, dAT, dX, db, sizes, offs, plan.T,
                        plan.B, H, I)
    return dAT, dX, run_h, run_c, db.sum(0)


def direction(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan, record: bool,
              use_c: bool) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """One layer and direction of an LSTM over packed rows ``X`` ``(N, I)`` from the sorted
    state ``(h, c)``, each ``(B, H)``: packed ``h`` ``(N, H)``, the final ``(h, c)`` and, when
    ``record``, packed ``h``, ``c`` and gates ``(N, H)``."""
    bias = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
    Y, hN, cN, G, CC = LSTMSequence.apply(X, cell.weight_ih, bias, cell.weight_hh, state[0],
                                          state[1], plan, use_c)
    rec = None
    if record:
        rec = {"h": Y, "c": CC, **dict(zip(cell.gate_names, G.split(cell.hidden_size, 1),
                                         strict=True))}
    return Y, (hN, cN), rec


def _bf16_rows(X: Tensor) -> Tensor:
    """``X`` ``(N, I)`` as the bfloat16 kernel reads it: ``(N, even(I))`` bfloat16, contiguous,
    a zero column appended where ``I`` is odd."""
    I = X.shape[1]
    if I % 2 == 0:
        return X.to(torch.bfloat16).contiguous()
    out = X.new_zeros(X.shape[0], I + 1, dtype=torch.bfloat16)
    out[:, :I] = X
    return out


class LSTMSequenceBF16(torch.autograd.Function):
    """:class:`LSTMSequence` in bfloat16 (``csrc/bf16.c``, AVX512-BF16): ``X``, ``h_prev`` and
    the weights rounded to bfloat16 for the products, float32 accumulation, float32 cell state,
    gates, output and gradients. ``X`` ``(N, I)`` float32 or bfloat16, ``w_ih`` ``(4H, I)``,
    ``bias`` ``(4H,)`` or None, ``w`` ``(4H, H)`` float32; returns packed ``h`` ``(N, H)`` and
    the final ``(h, c)`` ``(B, H)``, float32. The backward forms ``dA`` in float32, multiplies
    its bfloat16 rounding by ``[W_hh | W_ih]`` (``dh_prev``, ``dx``) and makes the weight
    gradients as bfloat16 products ``dA^T X``, ``dA^T H_prev`` (oneDNN), float32 results."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, bias: Tensor | None, w: Tensor, h0: Tensor,
                c0: Tensor, plan: Plan):
        with torch.autocast("cpu", enabled=False):
            B, N, H, I = plan.B, plan.N, h0.shape[1], X.shape[1]
            f32 = torch.float32
            HH = h0.new_empty(B + N, H, dtype=f32)
            CC = h0.new_empty(B + N, H, dtype=f32)
            HB = h0.new_empty(B + N, bindings.even(H), dtype=torch.bfloat16)
            HH[:B] = h0
            CC[:B] = c0
            HB[:B, :H] = h0
            if H % 2:
                HB[:B, H:] = 0
            G = HH.new_empty(N, 4 * H)
            TC = HH.new_empty(N, H)
            Xb = _bf16_rows(X)
            sizes, offs = plan.steps()
            wx, wh = bindings.pack_bf16([w_ih], True), bindings.pack_bf16([w], True)
            b = HH.new_zeros(4 * H) if bias is None else bias.to(f32).contiguous()
            bindings.lstm_seq_forward_bf16(Xb, wx, b, wh, HH, HB, CC, G, TC, sizes, offs,
                                           plan.T, B, H, I)
        ctx.plan, ctx.has_bias, ctx.x_dtype, ctx.I = plan, bias is not None, X.dtype, I
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(Xb, w_ih, w, HB, CC, G, TC)
        return HH[B:], plan.final(HH), plan.final(CC)

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dcN: Tensor | None):
        plan: Plan = ctx.plan
        Xb, w_ih, w, HB, CC, G, TC = ctx.saved_tensors
        need = ctx.needs_input_grad
        H, I = w.shape[1], ctx.I if need[0] else 0
        with torch.autocast("cpu", enabled=False):
            dY = grad_or_zeros(dY, TC).to(torch.float32).contiguous()
            dAT = G.new_empty(4 * H, plan.N, dtype=torch.bfloat16)
            dX = G.new_empty(plan.N, I) if I else None
            run_h = plan.scatter_final(dhN, H, TC).to(torch.float32)
            run_c = plan.scatter_final(dcN, H, TC).to(torch.float32)
            db = G.new_zeros(bindings.threads(), 4 * H)
            sizes, offs = plan.steps()
            wp = bindings.pack_bf16([w] if not I else [w, w_ih])  # [W_hh | W_ih]
            bindings.lstm_seq_backward_bf16(G, CC, TC, dY, wp, run_h, run_c, dAT, dX, db,
                                            sizes, offs, plan.T, plan.B, H, I)
            dw_ih = dAT.mm(Xb[:, :w_ih.shape[1]]).float() if need[1] else None
            dw = dAT.mm(plan.previous(HB)[:, :H]).float() if need[3] else None
        if dX is not None:
            dX = dX.to(ctx.x_dtype)
        return (dX, dw_ih, db.sum(0) if ctx.has_bias and need[2] else None, dw, run_h, run_c,
                None)


def direction_bf16(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan, record: bool,
                   use_c: bool) -> tuple[Tensor, tuple[Tensor, ...], None]:
    """:func:`direction` on the bfloat16 kernel (:class:`LSTMSequenceBF16`; no recording):
    packed ``h`` ``(N, H)`` and the final ``(h, c)``, float32."""
    if record:
        raise ValueError("the bfloat16 LSTM kernel does not record gates: record in float32")
    bias = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
    Y, hN, cN = LSTMSequenceBF16.apply(X, cell.weight_ih, bias, cell.weight_hh, state[0],
                                       state[1], plan)
    return Y, (hN, cN), None
