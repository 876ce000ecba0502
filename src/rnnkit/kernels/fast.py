"""rnnkit's own fast path: RNN (tanh/relu), LSTM, GRU in both forms and LayerNormLSTM, every
stacking, direction, ``lengths`` and gate recording, with a hand-written backward.

Per layer and direction a :class:`torch.autograd.Function` runs the recurrence:

* LSTM, LayerNormLSTM, GRU (both forms) and RNN on CPU float32: ONE C call for the whole
  sequence, forward, and one for the backward (:mod:`rnnkit.kernels.native`: recurrent
  products, the cell's elementwise math and, for (LayerNorm)LSTM, the input projection and
  ``dx``, all inside), then the weight gradients as ONE product over all steps, e.g.
  ``[dW_ih | dW_hh] = dA^T [X | H_prev]`` (:func:`rnnkit.kernels.gemm.products_t`, ``dA^T``
  written by the C backward);
* otherwise (float64, GPU, recording that gradients flow back through, no C compiler): the
  input projection of all steps as one matmul, then per step one product with the recurrent
  weight (reordered once per call, :class:`rnnkit.kernels.gemm.Fixed`) into a preallocated
  gate buffer and the step's elementwise math in in-place torch ops; the backward runs the
  reverse-time loop the same way, then the weight gradients as one product.

Both save the activated gates, which is what recording returns.

Variable lengths cost nothing extra: sequences are sorted once by length and laid out *packed*
(time-major, step ``t`` holds the ``b_t`` sequences longer than ``t``), so step ``t`` computes
only its ``b_t`` active rows. The backward direction reads each sequence reversed within its
own length, which in the packed layout is a fixed row permutation. Recorded gates are the
kernel's own buffers, unpacked; they stay differentiable (their gradients join the backward
loop only when some reach them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnkit.kernels import bindings, gemm, native

if TYPE_CHECKING:
    from rnnkit.layers import Recurrent

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before", "layernorm_lstm")
EPS = 1e-5  # torch.nn.LayerNorm's, as in rnnkit.cells.layernorm_lstm


def why_not(layer: Recurrent, x: Tensor, record: bool) -> str | None:
    if layer.mode not in MODES:
        return f"the fast path has no kernel for {layer.describe_cell()}"
    if x.dtype not in (torch.float32, torch.float64):
        return f"the fast path runs float32/float64, got {x.dtype}"
    return None


# ---------------------------------------------------------------------------------------------
# Packed layout
@dataclass
class Plan:
    """How ``(B, T, F)`` sequences are packed into ``(N, F)`` time-major rows.

    Step ``t`` owns rows ``offs[t] : offs[t] + sizes[t]`` (the ``sizes[t]`` longest sequences,
    sorted by length, longest first). ``prev`` indexes, for every packed row, its previous
    step's row in ``cat([h0, rows])`` (``None`` when all lengths equal ``T``: a shift by ``B``).
    """

    B: int
    T: int
    N: int
    sizes: list[int]
    offs: list[int]
    order: Tensor | None  # sorted position -> batch row
    unorder: Tensor | None
    flat: Tensor | None  # packed row -> b * T + t (forward time)
    rev: Tensor | None  # packed row -> packed row of the same sequence, time reversed
    prev: Tensor | None
    last: Tensor | None  # sorted sequence -> its last packed row

    @staticmethod
    def make(lengths: Tensor | None, B: int, T: int, device: torch.device) -> Plan:
        if lengths is None or bool((lengths == T).all()):
            return Plan(B, T, T * B, [B] * T, [t * B for t in range(T)],
                        None, None, None, None, None, None)
        lengths = lengths.to(device)
        order = torch.argsort(lengths, descending=True, stable=True)
        unorder = torch.empty_like(order)
        unorder[order] = torch.arange(B, device=device)
        slen = lengths[order]
        counts = torch.bincount(slen.cpu(), minlength=T + 1)  # sequences of each length
        sizes_t = B - torch.cumsum(counts, 0)[:T]  # sequences longer than t
        sizes = sizes_t.tolist()
        offs_t = torch.cumsum(sizes_t, 0) - sizes_t
        offs = offs_t.tolist()
        N = int(sizes_t.sum())
        t_of = torch.repeat_interleave(torch.arange(T), sizes_t).to(device)  # (N,)
        j_of = torch.arange(N, device=device) - offs_t.to(device)[t_of]
        flat = order[j_of] * T + t_of
        offs_d = offs_t.to(device)
        rev = offs_d[slen[j_of] - 1 - t_of] + j_of
        prev = torch.where(t_of > 0, B + offs_d[(t_of - 1).clamp(min=0)] + j_of, j_of)
        last = offs_d[slen - 1] + torch.arange(B, device=device)
        return Plan(B, T, N, sizes, offs, order, unorder, flat, rev, prev, last)

    def steps(self) -> tuple[Tensor, Tensor]:
        """``sizes`` and ``offs`` as int64 CPU tensors (for the C kernels)."""
        return torch.tensor(self.sizes), torch.tensor(self.offs)

    def pack(self, x: Tensor) -> Tensor:
        """``(B, T, F)`` -> ``(N, F)``."""
        if self.flat is None:
            return x.transpose(0, 1).reshape(self.N, x.shape[-1])
        return x.reshape(self.B * self.T, -1).index_select(0, self.flat)

    def unpack(self, y: Tensor) -> Tensor:
        """``(N, F)`` -> ``(B, T, F)``, zero past each length."""
        Fd = y.shape[-1]
        if self.flat is None:
            return y.view(self.T, self.B, Fd).transpose(0, 1).contiguous()
        out = y.new_zeros(self.B * self.T, Fd).index_copy(0, self.flat, y)
        return out.view(self.B, self.T, Fd)

    def reverse(self, y: Tensor) -> Tensor:
        """Each sequence reversed within its length (an involution on packed rows)."""
        if self.rev is None:
            return y.view(self.T, self.B, -1).flip(0).reshape(self.N, -1)
        return y.index_select(0, self.rev)

    def sort(self, s: Tensor) -> Tensor:
        """Batch rows ``(..., B, H)`` into length order (dim -2)."""
        return s if self.order is None else s.index_select(-2, self.order)

    def unsort(self, s: Tensor) -> Tensor:
        return s if self.unorder is None else s.index_select(-2, self.unorder)

    def previous(self, buf: Tensor) -> Tensor:
        """``buf`` ``(B + N, H)`` = ``[state0; rows]`` -> each row's previous state ``(N, H)``."""
        return buf[: self.N] if self.prev is None else buf.index_select(0, self.prev)

    def final(self, buf: Tensor) -> Tensor:
        """``buf`` ``(B + N, H)`` -> each (sorted) sequence's state at its last step ``(B, H)``."""
        if self.last is None:
            return buf[self.N:]
        return buf.index_select(0, self.last + self.B)

    def scatter_final(self, g: Tensor | None, H: int, like: Tensor) -> Tensor:
        """Gradient of :meth:`final`'s result laid out as a running ``(B, H)`` buffer."""
        return like.new_zeros(self.B, H) if g is None else g.clone()


# ---------------------------------------------------------------------------------------------
# The recurrences. Each ``forward`` takes the packed input projection ``xp`` (N, G*H) (biases
# folded in where they are additive), the recurrent weight ``w`` (G*H, H), the initial state
# (sorted, (B, H)) and the plan; it returns the packed outputs (N, H), the final state and
# (non-differentiable) buffers for recording.

def _grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


class _LSTM(torch.autograd.Function):
    """LSTM over packed rows, its input projection included: ``X`` ``(N, I)``, ``w_ih``
    ``(4H, I)``, ``bias`` ``(4H,)`` or None, ``w`` = ``W_hh`` ``(4H, H)``. Taking ``X`` (not
    ``X W_ih^T + b``) lets the C kernel project each step's rows itself, and the backward form
    ``dA^T`` once for both weight gradients: ``[dW_ih | dW_hh] = dA^T [X | H_prev]`` is one
    product."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, bias: Tensor | None, w: Tensor, h0: Tensor,
                c0: Tensor, plan: Plan):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = X.new_empty(B + N, H)
        CC = X.new_empty(B + N, H)
        HH[:B] = h0
        CC[:B] = c0
        G = X.new_empty(N, 4 * H)
        TC = X.new_empty(N, H)
        if native.usable(X, w_ih, w):  # the whole recurrence, input projection included, in C
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
        ctx.plan, ctx.has_bias = plan, bias is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(X, w_ih, w, HH, CC, G, TC)
        return HH[B:], plan.final(HH), plan.final(CC), G, CC[B:]

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dcN: Tensor | None,
                 dG: Tensor | None, dC: Tensor | None):
        plan: Plan = ctx.plan
        X, w_ih, w, HH, CC, G, TC = ctx.saved_tensors
        need = ctx.needs_input_grad
        if dG is None and dC is None and native.usable(G):
            dAT, dX, run_h, run_c, db = _lstm_backward_native(
                plan, w, w_ih if need[0] else None, CC, G, TC, dY, dhN, dcN)
        else:
            dA, run_h, run_c = _LSTM.recurrence_backward(plan, w, CC, G, TC, dY, dhN, dcN, dG,
                                                         dC)
            dAT, db = dA.t(), dA.sum(0)
            dX = gemm.mm(dA, w_ih) if need[0] else None
        dw_ih, dw = gemm.products_t(dAT, [X, plan.previous(HH)])  # dA^T X, dA^T H_prev
        return dX, dw_ih, db if ctx.has_bias and need[2] else None, dw, run_h, run_c, None

    @staticmethod
    def recurrence_backward(plan: Plan, w: Tensor, CC: Tensor, G: Tensor, TC: Tensor,
                            dY: Tensor | None, dhN: Tensor | None, dcN: Tensor | None,
                            dG: Tensor | None, dC: Tensor | None) -> tuple[Tensor, ...]:
        """The reverse-time loop in torch ops: gradients of the gate pre-activations ``dA``
        ``(N, 4H)`` and of the initial state."""
        mat = gemm.Fixed(w, plan.B)  # dh_prev = dA @ W_hh
        N, H = plan.N, w.shape[1]
        dY = _grad_or_zeros(dY, TC)
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
    """:meth:`_LSTM.recurrence_backward` as one C call over the whole sequence, which also
    makes the input's gradient ``dA W_ih`` (when ``w_ih`` is given) and sums ``dA`` over rows:
    returns ``dA^T`` ``(4H, N)``, ``dX`` ``(N, I)`` or None, the initial state's gradients and
    the bias gradient ``(4H,)``."""
    H = w.shape[1]
    dY = _grad_or_zeros(dY, TC).contiguous()
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


class _GRU(torch.autograd.Function):
    """GRU, ``reset_after=True``: ``n = tanh(xn + r * (W_hn h + b_hn))``."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, bh: Tensor, h0: Tensor, plan: Plan):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = xp.new_empty(B + N, H)
        HH[:B] = h0
        G = xp.new_empty(N, 3 * H)  # r, z, n (activated)
        R = xp.new_empty(N, 3 * H)  # recurrent products W_hh h + b_hh
        if native.usable(xp, w, bh) and xp.is_contiguous():  # the whole recurrence in C
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
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, HH, G, R)
        return HH[B:], plan.final(HH), G

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dG: Tensor | None):
        plan: Plan = ctx.plan
        w, HH, G, R = ctx.saved_tensors
        B, N, H = plan.B, plan.N, w.shape[1]
        dY = _grad_or_zeros(dY, HH[B:])
        hp = plan.previous(HH)
        if dG is None and native.usable(G):
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
        return dxp, dw, DR.sum(0), run, None


def _gru_backward_native(plan: Plan, w: Tensor, HH: Tensor, G: Tensor, R: Tensor, dY: Tensor,
                         dhN: Tensor | None, hp: Tensor) -> tuple:
    """:class:`_GRU`'s backward as one C call over the whole sequence: the gradients of the
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
    return dxp, dw, db.sum(0), run, None


class _GRUCho(torch.autograd.Function):
    """GRU, ``reset_after=False``: ``n = tanh(xn + W_hn (r * h))``; all biases are in ``xp``."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, h0: Tensor, plan: Plan):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = xp.new_empty(B + N, H)
        HH[:B] = h0
        G = xp.new_empty(N, 3 * H)  # r, z, n (activated)
        RH = xp.new_empty(N, H)  # r * h_prev
        if native.usable(xp, w) and xp.is_contiguous():  # the whole recurrence in C
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
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, HH, G, RH)
        return HH[B:], plan.final(HH), G

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dG: Tensor | None):
        plan: Plan = ctx.plan
        w, HH, G, RH = ctx.saved_tensors
        B, H = plan.B, w.shape[1]
        dY = _grad_or_zeros(dY, HH[B:])
        hp = plan.previous(HH)
        if dG is None and native.usable(G):  # the reverse-time loop in one C call
            dY, dA, DAT = dY.contiguous(), torch.empty_like(G), G.new_empty(3 * H, plan.N)
            run = plan.scatter_final(dhN, H, hp)
            sizes, offs = plan.steps()
            wrz, wn = native.pack(w[:2 * H]), native.pack(w[2 * H:])
            bindings.gru_cho_seq_backward(G, HH, dY, wrz, wn, run, dA, DAT, sizes, offs, plan.T,
                                          B, H)
            dw = torch.cat([gemm.products_t(DAT[:2 * H], [hp])[0],
                            gemm.products_t(DAT[2 * H:], [RH])[0]])
            return dA, dw, run, None
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
        return dA, dw, run, None


class _RNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, h0: Tensor, plan: Plan, relu: bool):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH = xp.new_empty(B + N, H)
        HH[:B] = h0
        A = xp.new_empty(N, H)  # pre-activations
        if native.usable(xp, w) and xp.is_contiguous():  # the whole recurrence in C
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
        ctx.plan, ctx.relu = plan, relu
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, HH)
        return HH[B:], plan.final(HH), A

    @staticmethod
    def backward(ctx: Any, dY: Tensor | None, dhN: Tensor | None, dA_rec: Tensor | None):
        plan: Plan = ctx.plan
        w, HH = ctx.saved_tensors
        B, H = plan.B, w.shape[1]
        Y = HH[B:]
        dY = _grad_or_zeros(dY, Y)
        if dA_rec is None and native.usable(HH):  # the reverse-time loop in one C call
            dY, dA, DAT = dY.contiguous(), torch.empty_like(Y), Y.new_empty(H, plan.N)
            run = plan.scatter_final(dhN, H, Y)
            sizes, offs = plan.steps()
            wp = native.pack(w)  # dh_prev = dA @ W_hh
            bindings.rnn_seq_backward(HH, dY, wp, run, dA, DAT, sizes, offs, plan.T, B, H, ctx.relu)
            return dA, gemm.products_t(DAT, [plan.previous(HH)])[0], run, None, None
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
        return dA, dw, run, None, None


class _LNLSTM(torch.autograd.Function):
    """LayerNormLSTM (see :mod:`rnnkit.cells.layernorm_lstm`) over packed rows ``X`` ``(N, I)``:
    the gate pre-activations are ``LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + β`` (``β = β_ih +
    β_hh``), the cell state is layer-normed, and recurrent dropout / zoneout masks are drawn
    from ``cell.draw``."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, w_ih: Tensor, g_ih: Tensor, beta: Tensor, w: Tensor,
                g_hh: Tensor, g_c: Tensor, b_c: Tensor, h0: Tensor, c0: Tensor, plan: Plan,
                cell: Any):
        B, N, H = plan.B, plan.N, h0.shape[1]
        HH, CC = X.new_empty(B + N, H), X.new_empty(B + N, H)
        HH[:B], CC[:B] = h0, c0
        G = X.new_empty(N, 4 * H)  # activated i, f, g, o
        CPRE, TC = X.new_empty(N, H), X.new_empty(N, H)  # f c + i g (before LN); tanh(ĉ)
        stats_h, stats_c, drops, zones = [], [], [], []
        H4 = (4 * H,)
        R = X.new_empty(N, 4 * H)  # W_hh h_{t-1}, before its LN
        ctx.native = native.usable(X, w_ih, w)
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
        dY = _grad_or_zeros(dY, TC)
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
                None)


def _lnlstm_backward_native(ctx: Any, X: Tensor, w_ih: Tensor, g_ih: Tensor, w: Tensor,
                            g_hh: Tensor, g_c: Tensor, HH: Tensor, CC: Tensor, G: Tensor,
                            P: Tensor, R: Tensor, CPRE: Tensor, TC: Tensor, dY: Tensor,
                            dhN: Tensor | None, dcN: Tensor | None) -> tuple:
    """:class:`_LNLSTM`'s backward as one C call over the whole sequence, which also makes
    ``dx``, sums the layer norms' parameter gradients (no ``(N, 4H)`` temporaries for them) and
    writes the two products' gradients transposed, ready for ``dW_hh`` and ``dW_ih``."""
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
    return dX, dw_ih, d_gih, d_beta, dw, d_ghh, d_gc, d_bc, run_h, run_c, None, None


# ---------------------------------------------------------------------------------------------
def _bias_sum(cell: Any) -> Tensor | None:
    if cell.bias_ih is None:
        return None
    return cell.bias_ih + cell.bias_hh


def run_direction(
    mode: str, cell: Any, X: Tensor, state: tuple[Tensor, ...], plan: Plan, record: bool
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """One layer, one direction over packed input ``X`` ``(N, I)``; ``state`` sorted ``(B, H)``.

    Returns packed outputs ``(N, H)``, the final state (sorted) and, when ``record``, packed
    ``(N, H)`` recordings (states first, then the cell's gates).
    """
    H = cell.hidden_size
    rec: dict[str, Tensor] | None = None
    if mode == "lstm":
        Y, hN, cN, G, CC = _LSTM.apply(X, cell.weight_ih, _bias_sum(cell), cell.weight_hh,
                                       state[0], state[1], plan)
        if record:
            rec = {"h": Y, "c": CC}
            rec.update(zip(cell.gate_names, G.split(H, 1), strict=True))
        return Y, (hN, cN), rec
    if mode == "layernorm_lstm":
        beta = _bias_sum(cell)  # bias=False: the layer norms shift by zero
        Y, hN, cN, G, CC = _LNLSTM.apply(
            X, cell.weight_ih, cell.ln_ih_weight,
            X.new_zeros(4 * H) if beta is None else beta, cell.weight_hh,
            cell.ln_hh_weight, cell.ln_c_weight, cell.ln_c_bias, state[0], state[1], plan, cell)
        if record:
            rec = {"h": Y, "c": CC}
            rec.update(zip(cell.gate_names, G.split(H, 1), strict=True))
        return Y, (hN, cN), rec
    if mode == "gru":
        xp = gemm.linear(X, cell.weight_ih, cell.bias_ih)
        bh = cell.bias_hh if cell.bias_hh is not None else X.new_zeros(3 * H)
        Y, hN, G = _GRU.apply(xp, cell.weight_hh, bh, state[0], plan)
    elif mode == "gru_reset_before":
        xp = gemm.linear(X, cell.weight_ih, cell.bias_rzn)
        Y, hN, G = _GRUCho.apply(xp, cell.weight_hh, state[0], plan)
    else:
        xp = gemm.linear(X, cell.weight_ih, _bias_sum(cell))
        Y, hN, G = _RNN.apply(xp, cell.weight_hh, state[0], plan, mode == "rnn_relu")
    if record:
        rec = {"h": Y}
        rec.update(zip(cell.gate_names, G.split(H, 1), strict=True))
    return Y, (hN,), rec


def run(
    layer: Recurrent,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], list | None]:
    B, T, _ = x.shape
    D = layer.num_directions
    plan = Plan.make(lengths, B, T, x.device)
    st = tuple(plan.sort(s) for s in state)
    X = plan.pack(x)
    finals: list[list[Tensor]] = [[] for _ in state]
    records: list | None = [] if record else None
    for layer_idx in range(layer.num_layers):
        outs, layer_records = [], []
        for d in range(D):
            k = layer_idx * D + d
            inp = X if d == 0 else plan.reverse(X)
            Y, fin, rec = run_direction(layer.mode, layer.cells[k], inp,
                                        tuple(s[k] for s in st), plan, record)
            outs.append(Y if d == 0 else plan.reverse(Y))
            for i, v in enumerate(fin):
                finals[i].append(v)
            if rec is not None:
                layer_records.append(
                    {n: plan.unpack(v if d == 0 else plan.reverse(v)) for n, v in rec.items()})
        X = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if layer.dropout > 0 and layer.training and layer_idx < layer.num_layers - 1:
            X = F.dropout(X, layer.dropout, training=True)
        if records is not None:
            records.append(layer_records)
    out = plan.unpack(X)
    return out, tuple(plan.unsort(torch.stack(f, 0)) for f in finals), records
