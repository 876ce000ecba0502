r"""Gated recurrent unit (Cho et al. 2014), in both of its published forms.

``reset_after=True`` (torch.nn, cuDNN, Keras' default): the reset gate scales the recurrent
*product*, so each gate keeps two biases::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)        reset gate
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)        update gate
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))   new (candidate) state
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

``reset_after=False`` (Cho et al. 2014; Keras ``reset_after=False``): the reset gate scales the
*state* before the product. Two biases per gate would be redundant here, so the cell keeps one,
``bias`` ``(3H,)``::

    r_t = σ(W_ir x_t + W_hr h_{t-1} + b_r)
    z_t = σ(W_iz x_t + W_hz h_{t-1} + b_z)
    n_t = tanh(W_in x_t + W_hn (r_t ⊙ h_{t-1}) + b_n)
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Shapes: ``x_t`` ``(B, I)``, ``h`` ``(B, H)``, ``weight_ih`` ``(3H, I)``, ``weight_hh``
``(3H, H)``, blocks in the order r, z, n (torch.nn's order).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit.cells.base import Cell, Gates


class GRUCell(Cell):
    """One GRU step. State ``h``; gates ``reset``, ``update``, ``new``."""

    num_gates = 3
    state_names = ("h",)
    gate_names = ("reset", "update", "new")

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True
    ) -> None:
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, bias=bias)
        if not reset_after:
            # One bias per gate (Cho et al. / Keras reset_after=False) instead of b_ih + b_hh.
            self.bias_ih = None
            self.bias_hh = None
            if bias:
                self.register_parameter(
                    "bias_rzn", nn.Parameter(torch.empty(3 * hidden_size))
                )
                bound = 1.0 / math.sqrt(hidden_size)
                nn.init.uniform_(self.bias_rzn, -bound, bound)
            else:
                self.register_parameter("bias_rzn", None)

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Gates]:
        if self.reset_after:
            return self.combine(self.linear_ih(x), self.linear_hh(state[0]), state)
        (h,) = state
        w_hr, w_hz, w_hn = self.weight_hh.split(self.hidden_size, dim=0)
        xr, xz, xn = self.linear_ih(x).chunk(3, dim=-1)
        if self.bias_rzn is not None:
            b_r, b_z, b_n = self.bias_rzn.split(self.hidden_size)
            xr, xz, xn = xr + b_r, xz + b_z, xn + b_n
        r = torch.sigmoid(xr + h @ w_hr.T)
        z = torch.sigmoid(xz + h @ w_hz.T)
        n = torch.tanh(xn + (r * h) @ w_hn.T)
        h = (1 - z) * n + z * h
        return (h,), {"reset": r, "update": z, "new": n}

    def combine(self, xi: Tensor, hh: Tensor, state: tuple[Tensor, ...]
                ) -> tuple[tuple[Tensor, ...], Gates]:
        """``reset_after=True``'s step after its two products: ``xi = W_ih x + b_ih``,
        ``hh = W_hh h + b_hh`` (``reset_after=False`` has no such split: its reset gate acts
        before the recurrent product)."""
        if not self.reset_after:
            raise NotImplementedError("reset_after=False multiplies r ⊙ h before W_hn")
        (h,) = state
        xr, xz, xn = xi.chunk(3, dim=-1)
        hr, hz, hn = hh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return (h,), {"reset": r, "update": z, "new": n}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reset_after={self.reset_after}"
