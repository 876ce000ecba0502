"""The fast path's LayerNormLSTM (:mod:`rnnkit.cells.layernorm_lstm`: layer norm on both
gate products and on the cell state, recurrent dropout, zoneout) over packed rows: forward and
a hand-written backward, in one C call per pass (``csrc/layernorm_lstm.c``, input projection
and ``dx`` included) or in torch ops, as the fast path decided for the call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.plan import Plan, grad_or_zeros

EPS = 1e-5  # torch.nn.LayerNorm's, as in rnnkit.cells.layernorm_lstm


class LayerNormLSTMSequence(torch.autograd.Function):
    """LayerNormLSTM (see :mod:`rnnkit.cells.layernorm_lstm`) over packed rows ``X`` ``(N, I)``:
    the gate pre-activations are ``LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + β`` (``β = β_ih +
    β_hh``), the cell state is layer-normed, and recurrent dropout / zoneout masks are drawn
    from ``cell.draw``."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, g_ih: Tensor, beta: Tensor, w: Tensor,
                g_hh: Tensor, g_c: Tensor, b_c: Tensor, h0: Tensor, c0: Tensor, plan: Plan,
                cell: Any, use_c: bool):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH, CC = X.new_empty(B + N, H), X.new_empty(B + N, H)
        HH[:B], CC[:B] = h0, c0
        G = X.new_empty(N, 4 * H)  # activated i, f, g, o
        CPRE, TC = X.new_empty(N, H), X.new_empty(N, H)  # f c + i g (before LN); tanh(ĉ)
        stats_h, stats_c, drops, zones = [], [], [], []
        H4 = (4 * H,)
        R = X.new_empty(N, 4 * H)  # W_hh h_{t-1}, before its LN
        ctx.native = use_c
        if ctx.native:  # the whole recurrence, input projection included, in one C call
            X = X.contiguous()
            PX = X.new_empty(N, 4 * H)  # W_ih x, before its LN
            # the masks first, step by step as the reference loop draws them (same numbers)
            masks = [cell.draw(b, X) for b in plan.sizes]
            drop = torch.cat([m["drop"] for m in masks]) if "drop" in masks[0] else None
            zc = masks[0].get("zone", 0.0)
            zone = torch.cat([m["zone"] for m in masks]) if isinstance(zc, Tensor) else None
            if drop is not None:
                drops = list(drop.split(plan.sizes))
            if zone is not None:
                zones, zc = list(zone.split(plan.sizes)), 0.0
            elif zc:
                zones = [zc]
            ctx.masks = (drop, zone, torch.cat([X.new_ones(H), X.new_full((H,), zc)]))
            ST = X.new_empty(N, 6)  # per row: mean, 1/std of W_hh h, the cell update, W_ih x
            sizes, offs = plan.steps()
            wx, wh = native.pack(w_ih.t()), native.pack(w.t())
            bindings.lnlstm_seq_forward(X, wx, wh, g_ih, beta, g_hh, g_c, b_c, *ctx.masks, PX, R,
                                        HH, CC, G, ST, CPRE, TC, sizes, offs, plan.T, B, H,
                                        X.shape[1], EPS)
            ctx.ST = ST
            stats_x = (ST[:, 4:5].contiguous(), ST[:, 5:6].contiguous())
        else:
            PX = gemm.affine(X, w_ih)
            xp, *stats_x = torch.native_layer_norm(PX, H4, g_ih, beta, EPS)
            mat, p = gemm.Fixed(w.t(), B), 0
            for b, s in zip(plan.sizes, plan.offs, strict=True):
                e = s + b
                hp, cp = HH[p:p + b], CC[p:p + b]
                r = mat(hp, R[s:e])
                ln, mu, rs = torch.native_layer_norm(r, H4, g_hh, None, EPS)
                stats_h.append((mu, rs))
                gt = torch.add(ln, xp[s:e], out=G[s:e])
                gt[:, :2 * H].sigmoid_()
                gt[:, 2 * H:3 * H].tanh_()
                gt[:, 3 * H:].sigmoid_()
                masks = cell.draw(b, X)
                upd = gt[:, 2 * H:3 * H]
                if "drop" in masks:
                    drops.append(masks["drop"])
                    upd = upd * masks["drop"]
                cpre = torch.mul(gt[:, H:2 * H], cp, out=CPRE[s:e]).addcmul_(gt[:, :H], upd)
                cn, mu, rs = torch.native_layer_norm(cpre, (H,), g_c, b_c, EPS)
                stats_c.append((mu, rs))
                tc = torch.tanh(cn, out=TC[s:e])
                q = B + s
                if "zone" in masks:
                    d = masks["zone"]
                    zones.append(d)
                    torch.lerp(cn, cp, d, out=CC[q:q + b])
                    torch.lerp(gt[:, 3 * H:] * tc, hp, d, out=HH[q:q + b])
                else:
                    CC[q:q + b] = cn
                    torch.mul(gt[:, 3 * H:], tc, out=HH[q:q + b])
                p = q
        ctx.plan, ctx.drops, ctx.zones = plan, drops, zones
        ctx.stats = (stats_h, stats_c, stats_x)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(X, w_ih, g_ih, beta, w, g_hh, g_c, b_c, HH, CC, G, PX, R, CPRE,
                              TC)
        return HH[B:], plan.final(HH), plan.final(CC), G, CC[B:]

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dcN: Tensor | None,
                 dG: Tensor | None, dC: Tensor | None):
        plan: Plan = ctx.plan
        X, w_ih, g_ih, beta, w, g_hh, g_c, b_c, HH, CC, G, PX, R, CPRE, TC = ctx.saved_tensors
        N, H = plan.N, w.shape[1]
        stats_h, stats_c, stats_x = ctx.stats
        dY = grad_or_zeros(dY, TC)
        if ctx.native and dG is None and dC is None:
            return _lnlstm_backward_native(ctx, X, w_ih, g_ih, w, g_hh, g_c, HH, CC, G, PX, R,
                                           CPRE, TC, dY, dhN, dcN)
        mat = gemm.Fixed(w, ctx.plan.B)  # dh_prev = dA @ W_hh
        if ctx.native:  # per-step statistics (contiguous) for the torch loop below
            cols = [ctx.ST[:, k:k + 1].contiguous().split(plan.sizes) for k in range(4)]
            stats_h = list(zip(cols[0], cols[1], strict=True))
            stats_c = list(zip(cols[2], cols[3], strict=True))
        i, f, g, o = G.split(H, dim=1)
        DM = torch.cat(ctx.drops) if ctx.drops else None
        Z = None
        if ctx.zones:
            Z = torch.cat(ctx.zones) if isinstance(ctx.zones[0], Tensor) else ctx.zones[0]
        # dA_i = dĉpre g' i(1-i), dA_f = dĉpre c_prev f(1-f), dA_g = dĉpre i m (1-g^2),
        # dA_o = dh (1-Z) tanh(ĉ) o(1-o); dĉ = dc (1-Z) + dh (1-Z) o (1 - tanh(ĉ)^2)
        gm = g if DM is None else g * DM
        K = o * (1 - TC * TC)
        P = torch.empty_like(G)
        torch.mul(gm, i * (1 - i), out=P[:, :H])
        torch.mul(plan.previous(CC), f * (1 - f), out=P[:, H:2 * H])
        torch.mul(i if DM is None else i * DM, 1 - g * g, out=P[:, 2 * H:3 * H])
        torch.mul(TC, o * (1 - o), out=P[:, 3 * H:])
        if Z is not None:
            K = K * (1 - Z)
            P[:, 3 * H:].mul_(1 - Z)
        P3 = P[:, :3 * H].view(N, 3, H)
        E = None
        if dG is not None:
            E = dG * torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], 1)
        dA, DR, DCN = torch.empty_like(G), torch.empty_like(G), torch.empty_like(TC)
        dA3 = dA[:, :3 * H].view(N, 3, H)
        run_h = plan.scatter_final(dhN, H, TC)
        run_c = plan.scatter_final(dcN, H, TC)
        dh_buf = torch.empty_like(run_h)
        H4, mask = (4 * H,), [True, False, False]
        t = len(plan.sizes)
        for b, s in zip(reversed(plan.sizes), reversed(plan.offs), strict=True):
            t -= 1
            e = s + b
            dh = torch.add(run_h[:b], dY[s:e], out=dh_buf[:b])
            dc = run_c[:b]
            if dC is not None:
                dc.add_(dC[s:e])
            if Z is None:
                dcn = torch.addcmul(dc, dh, K[s:e], out=DCN[s:e])
                keep_c = keep_h = None
            else:
                Zt = Z[s:e] if isinstance(Z, Tensor) else Z
                keep_c, keep_h = dc * Zt, dh * Zt
                dcn = torch.mul(dc, 1 - Zt, out=DCN[s:e]).addcmul_(dh, K[s:e])
            mu, rs = stats_c[t]
            dcp = torch.ops.aten.native_layer_norm_backward(
                dcn, CPRE[s:e], (H,), mu, rs, g_c, b_c, mask)[0]
            torch.mul(dcp.unsqueeze(1), P3[s:e], out=dA3[s:e])
            torch.mul(dh, P[s:e, 3 * H:], out=dA[s:e, 3 * H:])
            if E is not None:
                dA[s:e].add_(E[s:e])
            mu, rs = stats_h[t]
            dr = torch.ops.aten.native_layer_norm_backward(
                dA[s:e], R[s:e], H4, mu, rs, g_hh, None, mask)[0]
            DR[s:e] = dr
            if keep_c is None:
                torch.mul(dcp, f[s:e], out=run_c[:b])
                mat(dr, run_h[:b])
            else:
                torch.addcmul(keep_c, dcp, f[s:e], out=run_c[:b])
                mat(dr, run_h[:b], keep_h)
        dw = gemm.mm(DR.t(), plan.previous(HH))
        mu_h = torch.cat([m for m, _ in stats_h])
        rs_h = torch.cat([r for _, r in stats_h])
        mu_c = torch.cat([m for m, _ in stats_c])
        rs_c = torch.cat([r for _, r in stats_c])
        d_ghh = (dA * (R - mu_h) * rs_h).sum(0)
        d_gc = (DCN * (CPRE - mu_c) * rs_c).sum(0)
        # through the input layer norm and projection: dA is the gradient of LN(W_ih x) + β
        dP, d_gih, d_beta = torch.ops.aten.native_layer_norm_backward(
            dA, PX, H4, *stats_x, g_ih, beta, [True, True, True])
        dX, dw_ih = gemm.mm(dP, w_ih), gemm.mm(dP.t(), X)
        return (dX, dw_ih, d_gih, d_beta, dw, d_ghh, d_gc, DCN.sum(0), run_h, run_c, None,
                None, None)


def _lnlstm_backward_native(ctx: Any, X: Tensor, w_ih: Tensor, g_ih: Tensor, w: Tensor,
                            g_hh: Tensor, g_c: Tensor, HH: Tensor, CC: Tensor, G: Tensor,
                            P: Tensor, R: Tensor, CPRE: Tensor, TC: Tensor, dY: Tensor,
                            dhN: Tensor | None, dcN: Tensor | None) -> tuple:
    """:class:`LayerNormLSTMSequence`'s backward as one C call over the whole sequence, which
    also makes ``dx``, sums the layer norms' parameter gradients (no ``(N, 4H)`` temporaries
    for them) and writes the two products' gradients transposed, ready for ``dW_hh`` and
    ``dW_ih``."""
    plan: Plan = ctx.plan
    H, I = w.shape[1], w_ih.shape[1]
    dY = dY.contiguous()
    DRT, DPT, dX = G.new_empty(4 * H, plan.N), G.new_empty(4 * H, plan.N), X.new_empty(X.shape)
    acc = G.new_zeros(bindings.threads(), 14 * H)  # one row of sums per thread, added up at the end
    # (columns: d γ_hh 4H, d γ_c H, d β_c H, d γ_ih 4H, d β 4H)
    run_h = plan.scatter_final(dhN, H, TC)
    run_c = plan.scatter_final(dcN, H, TC)
    sizes, offs = plan.steps()
    wh, wx = native.pack(w), native.pack(w_ih)  # dh_prev = dr @ W_hh, dx = dp @ W_ih
    bindings.lnlstm_seq_backward(P, R, g_ih, g_hh, g_c, G, ctx.ST, CPRE, TC, CC, *ctx.masks, dY, wh,
                          wx, run_h, run_c, DRT, DPT, dX, acc, sizes, offs, plan.T, plan.B, H,
                          I)
    dw = gemm.products_t(DRT, [plan.previous(HH)])[0]
    dw_ih = gemm.products_t(DPT, [X])[0]
    d_ghh, d_gc, d_bc, d_gih, d_beta = acc.sum(0).split([4 * H, H, H, 4 * H, 4 * H])
    return dX, dw_ih, d_gih, d_beta, dw, d_ghh, d_gc, d_bc, run_h, run_c, None, None, None


def direction(cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan, record: bool,
              use_c: bool) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """One layer and direction of a LayerNormLSTM over packed rows ``X`` ``(N, I)`` from the
    sorted state ``(h, c)``, each ``(B, H)``: packed ``h`` ``(N, H)``, the final ``(h, c)``
    and, when ``record``, packed ``h``, ``c`` and gates ``(N, H)``."""
    H = cell.hidden_size
    beta = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
    Y, hN, cN, G, CC = LayerNormLSTMSequence.apply(
        X, cell.weight_ih, cell.ln_ih_weight,
        X.new_zeros(4 * H) if beta is None else beta,  # bias=False: the layer norms shift by 0
        cell.weight_hh, cell.ln_hh_weight, cell.ln_c_weight, cell.ln_c_bias, state[0],
        state[1], plan, cell, use_c)
    rec = None
    if record:
        rec = {"h": Y, "c": CC, **dict(zip(cell.gate_names, G.split(H, 1), strict=True))}
    return Y, (hN, cN), rec
