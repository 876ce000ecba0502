"""The fast path's GRU (:mod:`rnnkit.cells.gru`) over packed rows, in both forms, each a
forward and a hand-written backward, in one C call per pass (``csrc/gru.c``) or in torch ops,
as the fast path decided for the call:

* :class:`GRUResetAfter` (``reset_after=True``, torch.nn's and cuDNN's form):
  ``n = tanh(xn + r * (W_hn h + b_hn))``;
* :class:`GRUResetBefore` (``reset_after=False``, Cho et al. 2014):
  ``n = tanh(xn + W_hn (r * h))``.

The input projection of all steps is one product before the recurrence (:func:`gemm.linear`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.plan import Plan, grad_or_zeros


class GRUResetAfter(torch.autograd.Function):
    """GRU, ``reset_after=True``: ``n = tanh(xn + r * (W_hn h + b_hn))``."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, bh: Tensor, h0: Tensor, plan: Plan,
                use_c: bool):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = xp.new_empty(B + N, H)
        HH[:B] = h0
        G = xp.new_empty(N, 3 * H)  # r, z, n (activated)
        R = xp.new_empty(N, 3 * H)  # recurrent products W_hh h + b_hh
        if use_c:  # the whole recurrence in C
            sizes, offs = plan.steps()
            wh, bh = native.pack(w.t()), bh.contiguous()  # (referenced while C runs)
            bindings.gru_seq_forward(xp, wh, bh, HH, G, R, sizes, offs, plan.T, B, H)
        else:
            mat, p = gemm.Fixed(w.t(), B), 0
            for b, s in zip(plan.sizes, plan.offs, strict=True):
                e = s + b
                hp = HH[p:p + b]
                r = mat(hp, R[s:e], bh)
                g = G[s:e]
                torch.add(xp[s:e, :2 * H], r[:, :2 * H], out=g[:, :2 * H]).sigmoid_()
                n = torch.addcmul(xp[s:e, 2 * H:], g[:, :H], r[:, 2 * H:], out=g[:, 2 * H:])
                n.tanh_()
                p = B + s
                torch.lerp(n, hp, g[:, H:2 * H], out=HH[p:p + b])
        ctx.plan, ctx.use_c = plan, use_c
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, HH, G, R)
        return HH[B:], plan.final(HH), G

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dG: Tensor | None):
        plan: Plan = ctx.plan
        w, HH, G, R = ctx.saved_tensors
        B, N, H = plan.B, plan.N, w.shape[1]
        dY = grad_or_zeros(dY, HH[B:])
        hp = plan.previous(HH)
        if dG is None and ctx.use_c:
            return _gru_backward_native(plan, w, HH, G, R, dY, dhN, hp)
        mat = gemm.Fixed(w, ctx.plan.B)  # dh_prev = dA @ W_hh
        r, z, n = G.split(H, dim=1)
        # dxp = dh * [P_r, P_z, P_n];  d(W_hh h + b_hh) = dh * [P_r, P_z, P_n r]
        P = torch.empty_like(G)
        Pn = torch.mul(1 - z, 1 - n * n, out=P[:, 2 * H:])
        torch.mul(hp - n, z * (1 - z), out=P[:, H:2 * H])
        torch.mul(Pn * R[:, 2 * H:], r * (1 - r), out=P[:, :H])
        Q = P.clone()
        Q[:, 2 * H:].mul_(r)
        Q3 = Q.view(N, 3, H)
        DH = torch.empty_like(hp)
        DR = torch.empty_like(G)
        DR3 = DR.view(N, 3, H)
        run = plan.scatter_final(dhN, H, hp)
        tmp = torch.empty_like(run)
        E = Er = None  # gradient reaching the recorded gates, at the pre-activations
        if dG is not None:
            E = torch.empty_like(G)
            En = torch.mul(dG[:, 2 * H:], 1 - n * n, out=E[:, 2 * H:])
            torch.mul(dG[:, H:2 * H], z * (1 - z), out=E[:, H:2 * H])
            torch.mul(En * R[:, 2 * H:] + dG[:, :H], r * (1 - r), out=E[:, :H])
            Er = E.clone()
            Er[:, 2 * H:].mul_(r)
        for b, s in zip(reversed(plan.sizes), reversed(plan.offs), strict=True):
            e = s + b
            dh = torch.add(run[:b], dY[s:e], out=DH[s:e])
            torch.mul(dh.unsqueeze(1), Q3[s:e], out=DR3[s:e])
            if Er is not None:
                DR[s:e].add_(Er[s:e])
            torch.mul(dh, z[s:e], out=tmp[:b])
            mat(DR[s:e], run[:b], tmp[:b])
        dxp = (DH.unsqueeze(1) * P.view(N, 3, H)).view(N, 3 * H)
        if E is not None:
            dxp += E
        dw = gemm.mm(DR.t(), hp)
        return dxp, dw, DR.sum(0), run, None, None


def _gru_backward_native(plan: Plan, w: Tensor, HH: Tensor, G: Tensor, R: Tensor, dY: Tensor,
                         dhN: Tensor | None, hp: Tensor) -> tuple:
    """:class:`GRUResetAfter`'s backward as one C call over the whole sequence: the gradients of the
    input projection ``(N, 3H)``, ``W_hh``, ``b_hh`` and the initial state."""
    H = w.shape[1]
    dY = dY.contiguous()
    dxp, DQT = torch.empty_like(G), G.new_empty(3 * H, plan.N)
    run = plan.scatter_final(dhN, H, hp)
    db = G.new_zeros(bindings.threads(), 3 * H)  # bias sums, a row per thread, added up below
    sizes, offs = plan.steps()
    wp = native.pack(w)  # dh_prev = dq @ W_hh
    bindings.gru_seq_backward(G, R, HH, dY, wp, run, dxp, DQT, db, sizes, offs, plan.T, plan.B, H)
    dw = gemm.products_t(DQT, [hp])[0]
    return dxp, dw, db.sum(0), run, None, None


class GRUResetBefore(torch.autograd.Function):
    """GRU, ``reset_after=False``: ``n = tanh(xn + W_hn (r * h))``; all biases are in ``xp``."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, h0: Tensor, plan: Plan, use_c: bool):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = xp.new_empty(B + N, H)
        HH[:B] = h0
        G = xp.new_empty(N, 3 * H)  # r, z, n (activated)
        RH = xp.new_empty(N, H)  # r * h_prev
        if use_c:  # the whole recurrence in C
            sizes, offs = plan.steps()
            wrz, wn = native.pack(w[:2 * H].t()), native.pack(w[2 * H:].t())  # (referenced)
            bindings.gru_cho_seq_forward(xp, wrz, wn, HH, G, RH, sizes, offs, plan.T, B, H)
        else:
            w_rz, w_n = gemm.Fixed(w[:2 * H].t(), B), gemm.Fixed(w[2 * H:].t(), B)
            p = 0
            for b, s in zip(plan.sizes, plan.offs, strict=True):
                e = s + b
                hp = HH[p:p + b]
                g = G[s:e]
                w_rz(hp, g[:, :2 * H], xp[s:e, :2 * H]).sigmoid_()
                rh = torch.mul(g[:, :H], hp, out=RH[s:e])
                w_n(rh, g[:, 2 * H:], xp[s:e, 2 * H:]).tanh_()
                p = B + s
                torch.lerp(g[:, 2 * H:], hp, g[:, H:2 * H], out=HH[p:p + b])
        ctx.plan, ctx.use_c = plan, use_c
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, HH, G, RH)
        return HH[B:], plan.final(HH), G

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dG: Tensor | None):
        plan: Plan = ctx.plan
        w, HH, G, RH = ctx.saved_tensors
        B, H = plan.B, w.shape[1]
        dY = grad_or_zeros(dY, HH[B:])
        hp = plan.previous(HH)
        if dG is None and ctx.use_c:  # the reverse-time loop in one C call
            dY, dA, DAT = dY.contiguous(), torch.empty_like(G), G.new_empty(3 * H, plan.N)
            run = plan.scatter_final(dhN, H, hp)
            sizes, offs = plan.steps()
            wrz, wn = native.pack(w[:2 * H]), native.pack(w[2 * H:])
            bindings.gru_cho_seq_backward(G, HH, dY, wrz, wn, run, dA, DAT, sizes, offs, plan.T,
                                          B, H)
            dw = torch.cat([gemm.products_t(DAT[:2 * H], [hp])[0],
                            gemm.products_t(DAT[2 * H:], [RH])[0]])
            return dA, dw, run, None, None
        r, z, n = G.split(H, dim=1)
        Pn = (1 - z) * (1 - n * n)
        Pz = (hp - n) * z * (1 - z)
        Pr = hp * r * (1 - r)
        w_rz, w_n = gemm.Fixed(w[:2 * H], B), gemm.Fixed(w[2 * H:], B)
        dA = torch.empty_like(G)
        dRH = torch.empty_like(hp)
        run = plan.scatter_final(dhN, H, hp)
        dh_buf, tmp = torch.empty_like(run), torch.empty_like(run)
        E = None  # gradient reaching the recorded gates, at the pre-activations
        if dG is not None:
            E = dG * torch.cat([r * (1 - r), z * (1 - z), 1 - n * n], 1)
        for b, s in zip(reversed(plan.sizes), reversed(plan.offs), strict=True):
            e = s + b
            dh = torch.add(run[:b], dY[s:e], out=dh_buf[:b])
            dn = torch.mul(dh, Pn[s:e], out=dA[s:e, 2 * H:])
            torch.mul(dh, Pz[s:e], out=dA[s:e, H:2 * H])
            if E is not None:
                dA[s:e, H:].add_(E[s:e, H:])
            drh = w_n(dn, dRH[s:e])
            torch.mul(drh, Pr[s:e], out=dA[s:e, :H])
            if E is not None:
                dA[s:e, :H].add_(E[s:e, :H])
            torch.mul(dh, z[s:e], out=tmp[:b]).addcmul_(drh, r[s:e])
            w_rz(dA[s:e, :2 * H], run[:b], tmp[:b])
        dw = torch.cat([gemm.mm(dA[:, :2 * H].t(), hp), gemm.mm(dA[:, 2 * H:].t(), RH)])
        return dA, dw, run, None, None


class GRUResetAfterBF16(torch.autograd.Function):
    """:class:`GRUResetAfter` in bfloat16 (``csrc/bf16.c``), its input projection included:
    ``X`` ``(N, I)`` float32 or bfloat16, ``w_ih`` ``(3H, I)``, ``b_ih``, ``b_hh`` ``(3H,)``,
    ``w`` ``(3H, H)`` float32; ``X``, ``h_prev`` and the weights rounded to bfloat16 for the
    products, float32 accumulation, gates and gradients. Returns packed ``h`` ``(N, H)`` and
    the final ``h`` ``(B, H)``, float32."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, b_ih: Tensor, w: Tensor, b_hh: Tensor,
                h0: Tensor, plan: Plan):
        from rnnkit.kernels.lstm import _bf16_rows

        with torch.autocast("cpu", enabled=False):
            B, N, H, I = plan.B, plan.N, h0.shape[1], X.shape[1]
            HH = h0.new_empty(B + N, H, dtype=torch.float32)
            HB = h0.new_zeros(B + N, bindings.even(H), dtype=torch.bfloat16)
            HH[:B] = h0
            HB[:B, :H] = h0
            G, R = HH.new_empty(N, 3 * H), HH.new_empty(N, 3 * H)
            Xb = _bf16_rows(X)
            sizes, offs = plan.steps()
            wx, wh = bindings.pack_bf16([w_ih], True), bindings.pack_bf16([w], True)
            bindings.gru_seq_forward_bf16(Xb, wx, b_ih.float().contiguous(), wh,
                                          b_hh.float().contiguous(), HH, HB, G, R, sizes, offs,
                                          plan.T, B, H, I)
        ctx.plan, ctx.x_dtype, ctx.I = plan, X.dtype, I
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(Xb, w_ih, w, HH, HB, G, R)
        return HH[B:], plan.final(HH)

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None):
        plan: Plan = ctx.plan
        Xb, w_ih, w, HH, HB, G, R = ctx.saved_tensors
        need = ctx.needs_input_grad
        B, H = plan.B, w.shape[1]
        I = ctx.I if need[0] else 0
        with torch.autocast("cpu", enabled=False):
            dY = grad_or_zeros(dY, HH[B:]).to(torch.float32).contiguous()
            DXT = G.new_empty(3 * H, plan.N, dtype=torch.bfloat16)
            DQT = G.new_empty(3 * H, plan.N, dtype=torch.bfloat16)
            dX = G.new_empty(plan.N, I) if I else None
            run = plan.scatter_final(dhN, H, dY).to(torch.float32)
            db = G.new_zeros(bindings.threads(), 6 * H)
            sizes, offs = plan.steps()
            wh = bindings.pack_bf16([w])  # dh_prev = dq W_hh
            wx = bindings.pack_bf16([w_ih]) if I else None  # dx = dxp W_ih
            bindings.gru_seq_backward_bf16(G, R, HH, dY, wh, wx, run, DXT, DQT, dX, db, sizes,
                                           offs, plan.T, B, H, I)
            dw_ih = DXT.mm(Xb[:, :w_ih.shape[1]]).float() if need[1] else None
            dw = DQT.mm(plan.previous(HB)[:, :H]).float() if need[3] else None
            dbs = db.sum(0)
        if dX is not None:
            dX = dX.to(ctx.x_dtype)
        return (dX, dw_ih, dbs[3 * H:] if need[2] else None, dw,
                dbs[:3 * H] if need[4] else None, run, None)


def reset_after_direction_bf16(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan,
                               record: bool, use_c: bool
                               ) -> tuple[Tensor, tuple[Tensor, ...], None]:
    """:func:`reset_after_direction` on the bfloat16 kernel (:class:`GRUResetAfterBF16`; no
    recording)."""
    if record:
        raise ValueError("the bfloat16 GRU kernel does not record gates: record in float32")
    H = cell.hidden_size
    b_ih = cell.bias_ih if cell.bias_ih is not None else X.new_zeros(3 * H, dtype=torch.float32)
    b_hh = cell.bias_hh if cell.bias_hh is not None else X.new_zeros(3 * H, dtype=torch.float32)
    Y, hN = GRUResetAfterBF16.apply(X, cell.weight_ih, b_ih, cell.weight_hh, b_hh, state[0],
                                    plan)
    return Y, (hN,), None


def _record(cell: Any, Y: Tensor, G: Tensor, record: bool) -> dict[str, Tensor] | None:
    if not record:
        return None
    return {"h": Y, **dict(zip(cell.gate_names, G.split(cell.hidden_size, 1), strict=True))}


def reset_after_direction(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan,
                          record: bool, use_c: bool
                          ) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """One layer and direction of a GRU with ``reset_after=True`` over packed rows ``X``
    ``(N, I)`` from the sorted state ``(h,)`` ``(B, H)``: packed ``h`` ``(N, H)``, the final
    ``(h,)`` and, when ``record``, packed ``h`` and gates ``(N, H)``."""
    H = cell.hidden_size
    xp = gemm.linear(X, cell.weight_ih, cell.bias_ih)
    bh = cell.bias_hh if cell.bias_hh is not None else X.new_zeros(3 * H)
    Y, hN, G = GRUResetAfter.apply(xp, cell.weight_hh, bh, state[0], plan, use_c)
    return Y, (hN,), _record(cell, Y, G, record)


def reset_before_direction(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan,
                           record: bool, use_c: bool
                           ) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """:func:`reset_after_direction` for ``reset_after=False`` (every bias in the input
    projection)."""
    xp = gemm.linear(X, cell.weight_ih, cell.bias_rzn)
    Y, hN, G = GRUResetBefore.apply(xp, cell.weight_hh, state[0], plan, use_c)
    return Y, (hN,), _record(cell, Y, G, record)
