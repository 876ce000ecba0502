r"""The vanilla (Elman) recurrent cell.

.. math::
    a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}
    h_t = \tanh(a_t) \quad (\text{or } \mathrm{ReLU}(a_t))

Shapes: ``x_t`` ``(B, I)``, ``h`` ``(B, H)``, ``W_ih`` ``(H, I)``, ``W_hh`` ``(H, H)``,
``b_ih``, ``b_hh`` ``(H,)``. Parameter names and initialisation match ``torch.nn.RNNCell``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, Gates


class RNNCell(Cell):
    r"""``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    Args:
        input_size: features ``I`` of ``x_t``.
        hidden_size: units ``H``.
        nonlinearity: ``"tanh"`` (default) or ``"relu"``.
        bias: keep ``b_ih`` and ``b_hh``.

    Gates returned by :meth:`step`: ``preactivation`` (``a_t``, ``(B, H)``).
    """

    num_gates = 1
    sums_products = True
    state_names = ("h",)
    gate_names = ("preactivation",)

    def __init__(
        self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias=bias)

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Gates]:
        return self.combine(self.linear_ih(x), self.linear_hh(state[0]), state)

    def combine(self, xi: Tensor, hh: Tensor, state: tuple[Tensor, ...]
                ) -> tuple[tuple[Tensor, ...], Gates]:
        """The step after its two products: ``xi = W_ih x + b_ih``, ``hh = W_hh h + b_hh``."""
        a = xi + hh
        h = torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)
        return (h,), {"preactivation": a}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"
