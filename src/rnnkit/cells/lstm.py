r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al.).

.. math::
    i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi})      &\text{input gate}\\
    f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})      &\text{forget gate}\\
    g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg})       &\text{cell candidate}\\
    o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho})      &\text{output gate}\\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t                          &\text{cell state}\\
    h_t &= o_t \odot \tanh(c_t)

Shapes: ``x_t`` ``(B, I)``; ``h``, ``c`` ``(B, H)``; ``weight_ih`` ``(4H, I)`` and
``weight_hh`` ``(4H, H)`` stack the blocks in the order i, f, g, o (torch.nn's order).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, Gates


class LSTMCell(Cell):
    """One LSTM step. State ``(h, c)``; gates ``input``, ``forget``, ``cell``, ``output``."""

    num_gates = 4
    sums_products = True
    state_names = ("h", "c")
    gate_names = ("input", "forget", "cell", "output")

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Gates]:
        return self.combine(self.linear_ih(x), self.linear_hh(state[0]), state)

    def combine(self, xi: Tensor, hh: Tensor, state: tuple[Tensor, ...]
                ) -> tuple[tuple[Tensor, ...], Gates]:
        """The step after its two products: ``xi = W_ih x + b_ih``, ``hh = W_hh h + b_hh``."""
        _, c = state
        i, f, g, o = (xi + hh).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return (h, c), {"input": i, "forget": f, "cell": g, "output": o}
