"""Matrix products for the fast path, through oneDNN on CPU float32.

torch's CPU ``mm``/``addmm`` call the BLAS it was built with (MKL); torch.nn's own fused RNN
kernel calls oneDNN, with its weights reordered once into oneDNN's blocked layout. On some
processors oneDNN is several times faster for these shapes (the README's kernel section has
the measurement), so a kernel that wants to keep up with torch.nn must use the same library.
Everything here falls back to plain torch ops off CPU, for float64, or when oneDNN is
unavailable; results agree to float32 rounding.

* :class:`Fixed`: ``add + v @ m`` for one matrix ``m`` and many small ``v`` (the per-step
  recurrent product): ``m`` is reordered once per call of the kernel.
* :func:`mm`: one large ``a @ b`` (weight gradients over a whole sequence).
* :func:`products_t`: ``a^T b_1, a^T b_2, ...`` as one product, given ``a^T`` (weight
  gradients sharing ``dA^T``, which the C kernels write transposed);
* :func:`linear`: ``x W^T + b`` with autograd, forward and backward through :func:`mm` (the
  input projection of all time steps); :func:`affine`, the same without autograd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_DNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_lin = torch.ops.mkldnn._linear_pointwise if _DNN else None
_reorder = torch.ops.mkldnn._reorder_linear_weight if _DNN else None


def _ok(*ts: Tensor) -> bool:
    return _DNN and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ts)


def _pack(w: Tensor, rows: int) -> Tensor:
    """``w`` ``(N, K)`` (a linear layer's weight layout) reordered for products with ``rows``
    rows. ``w`` may be any strided view (a transpose): the reorder reads it in place, one pass
    instead of a copy and a pass (bit-identical results)."""
    return _reorder(w, rows)


class Fixed:
    """``out = add + v @ m`` for one matrix ``m`` ``(K, N)`` and many small ``v`` ``(b, K)``.

    On CPU float32, ``m`` is reordered once into oneDNN's blocked layout (what torch.nn's own
    oneDNN LSTM does); ``addmm`` would repack it on every call. Elsewhere it is ``addmm``.
    ``add`` may be ``None``, a bias ``(N,)`` or a ``(b, N)`` tensor.
    """

    def __init__(self, m: Tensor, rows: int) -> None:
        self.m = m
        self.packed = _pack(m.t(), rows) if _ok(m) else None

    def product(self, v: Tensor, add: Tensor | None = None) -> Tensor:
        """``add + v @ m`` as a new ``(b, N)`` tensor."""
        if self.packed is None:
            return torch.mm(v, self.m) if add is None else torch.addmm(add, v, self.m)
        v = v if v.is_contiguous() else v.contiguous()
        if add is None or add.dim() == 1:
            return _lin(v, self.packed, add, "none", [], "")
        if add.is_contiguous():
            return _lin.binary(v, add, self.packed, None, "add")
        return _lin(v, self.packed, None, "none", [], "").add_(add)

    def __call__(self, v: Tensor, out: Tensor, add: Tensor | None = None) -> Tensor:
        """``add + v @ m`` written into ``out``."""
        if self.packed is None:
            if add is None:
                return torch.mm(v, self.m, out=out)
            return torch.addmm(add, v, self.m, out=out)
        return out.copy_(self.product(v, add))


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``a`` ``(M, K)``, ``b`` ``(K, N)`` (either may be a transposed view)."""
    if not _ok(a, b) or a.shape[0] == 0:
        return a.mm(b)
    a = a if a.is_contiguous() else a.contiguous()
    return _lin(a, _pack(b.t(), a.shape[0]), None, "none", [], "")


def _affine_ok(x: Tensor, w: Tensor, b: Tensor | None) -> bool:
    return x.dim() == 2 and x.shape[0] > 0 and _ok(x, w) and (b is None or _ok(b))


def affine(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``x W^T + b`` without autograd: ``x`` ``(N, I)``, ``w`` ``(O, I)`` -> ``(N, O)``."""
    if not _affine_ok(x, w, b):
        return torch.nn.functional.linear(x, w, b)
    x = x if x.is_contiguous() else x.contiguous()
    return _lin(x, _pack(w, x.shape[0]), b, "none", [], "")


def products_t(at: Tensor, bs: list[Tensor]) -> list[Tensor]:
    """``[at @ b for b in bs]`` for ``at`` ``(G, N)`` (best contiguous: ``a^T`` formed once,
    or written so by a kernel) and each ``b`` ``(N, K_i)``, as ONE product
    ``at [b_1 | b_2 | ...]``: weight gradients over a whole sequence, ``(G, K_i)`` each."""
    if not _ok(at, *bs) or at.shape[1] == 0:
        return [at.mm(b) for b in bs]
    at = at if at.is_contiguous() else at.contiguous()
    z = bs[0] if len(bs) == 1 else torch.cat(bs, 1)  # (N, sum K_i), rows copied as rows
    out = _lin(at, _pack(z.t(), at.shape[0]), None, "none", [], "")  # z^T: the linear's weight
    return list(out.split([b.shape[1] for b in bs], dim=1))


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return affine(x, w, b)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        dx = mm(dy, w) if ctx.needs_input_grad[0] else None
        dw = mm(dy.t(), x) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``x W^T + b`` for ``x`` ``(N, I)``, ``w`` ``(O, I)``, ``b`` ``(O,)`` -> ``(N, O)``."""
    if not _affine_ok(x, w, b):
        return torch.nn.functional.linear(x, w, b)
    return _Linear.apply(x, w, b)
