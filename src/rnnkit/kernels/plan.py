"""The packed layout of the fast path (:mod:`rnnkit.kernels.fast`): sequences of different
lengths laid out time-major with only the rows still running at each step.

Sequences are sorted once by length (longest first); step ``t`` then holds the ``b_t``
sequences longer than ``t`` as consecutive rows, so a step computes only its active rows and
ragged batches cost nothing extra. The backward direction reads each sequence reversed within
its own length, which in this layout is a fixed row permutation (:meth:`Plan.reverse`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    """``g``, or zeros like ``like`` where no gradient reached it."""
    return torch.zeros_like(like) if g is None else g


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
    _steps: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

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
        """``sizes`` and ``offs`` as int64 CPU tensors (for the C kernels), made once per plan
        (read only)."""
        if self._steps is None:
            self._steps = (torch.tensor(self.sizes), torch.tensor(self.offs))
        return self._steps

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
