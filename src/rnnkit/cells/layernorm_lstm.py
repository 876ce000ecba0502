r"""Layer-normalised LSTM (Ba et al. 2016), as in PyTorch's ``benchmarks/fastrnns/custom_lstms.py``
and haste, with optional recurrent dropout (Semeniuta et al. 2016) and zoneout (Krueger et al.
2016).

.. math::
    \hat a_t &= \mathrm{LN}(W_{ih} x_t;\ \gamma_{ih}, \beta_{ih})
              + \mathrm{LN}(W_{hh} h_{t-1};\ \gamma_{hh}, \beta_{hh})  &\text{(4H) gates}\\
    i_t, f_t, o_t &= \sigma(\cdot),\quad g_t = \tanh(\cdot)        &\text{blocks i, f, g, o}\\
    \hat c_t &= \mathrm{LN}(f_t \odot c_{t-1} + i_t \odot (m_t \odot g_t);\ \gamma_c, \beta_c)\\
    \hat h_t &= o_t \odot \tanh(\hat c_t)\\
    c_t &= d^c_t \odot c_{t-1} + (1 - d^c_t) \odot \hat c_t,\qquad
    h_t = d^h_t \odot h_{t-1} + (1 - d^h_t) \odot \hat h_t

``LN(v; γ, β) = (v - mean(v)) / sqrt(var(v) + ε) ⊙ γ + β`` over the last axis (``ε = 1e-5``,
``torch.nn.LayerNorm``'s). Recurrent dropout ``m_t`` (probability ``recurrent_dropout``, training
only) drops the cell *update* ``g_t``, never the memory; zoneout keeps each unit's previous
state with probability ``zoneout``: ``d ~ Bernoulli(zoneout)`` per step and unit in training,
``d = zoneout`` (the expectation) in eval, so eval is deterministic. With both at 0 the last
line is ``c_t = ĉ_t``, ``h_t = ĥ_t``.

Parameters (torch.nn's LSTM names where they mean the same): ``weight_ih`` ``(4H, I)``,
``weight_hh`` ``(4H, H)``, ``bias_ih`` = β_ih and ``bias_hh`` = β_hh ``(4H,)`` (the layer norms'
shifts are the gate biases), ``ln_ih_weight`` γ_ih and ``ln_hh_weight`` γ_hh ``(4H,)``,
``ln_c_weight`` γ_c and ``ln_c_bias`` β_c ``(H,)``. γ start at 1, β at 0 (nn.LayerNorm).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.cells.base import Cell, Gates

EPS = 1e-5


class LayerNormLSTMCell(Cell):
    """One LayerNormLSTM step. State ``(h, c)``; gates ``input``, ``forget``, ``cell``,
    ``output``."""

    num_gates = 4
    state_names = ("h", "c")
    gate_names = ("input", "forget", "cell", "output")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 recurrent_dropout: float = 0.0, zoneout: float = 0.0) -> None:
        for name, p in (("recurrent_dropout", recurrent_dropout), ("zoneout", zoneout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = float(zoneout)
        super().__init__(input_size, hidden_size, bias=bias)
        H = hidden_size
        self.ln_ih_weight = nn.Parameter(torch.ones(4 * H))
        self.ln_hh_weight = nn.Parameter(torch.ones(4 * H))
        self.ln_c_weight = nn.Parameter(torch.ones(H))
        self.ln_c_bias = nn.Parameter(torch.zeros(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights as torch.nn.LSTM's; layer-norm gains 1 and shifts (the biases) 0."""
        super().reset_parameters()
        for name, p in self.named_parameters():
            if name.startswith("ln_") or name.startswith("bias"):
                nn.init.constant_(p, 1.0 if name.endswith("weight") else 0.0)

    def draw(self, batch_size: int, like: Tensor) -> dict[str, Tensor | float]:
        """This step's random masks (training) or their expectations (eval), each ``(B, H)``
        or a float: ``drop`` (scales ``g``, already divided by ``1 - p``), ``zone``."""
        out: dict[str, Tensor | float] = {}
        shape = (batch_size, self.hidden_size)
        if self.recurrent_dropout and self.training:
            keep = 1.0 - self.recurrent_dropout
            out["drop"] = torch.bernoulli(like.new_full(shape, keep)).div_(keep)
        if self.zoneout:
            out["zone"] = (torch.bernoulli(like.new_full(shape, self.zoneout))
                           if self.training else self.zoneout)
        return out

    def step(self, x: Tensor, state: tuple[Tensor, ...],
             masks: dict[str, Tensor | float] | None = None) -> tuple[tuple[Tensor, ...], Gates]:
        h, c = state
        if masks is None:
            masks = self.draw(x.shape[0], x)
        H4 = (4 * self.hidden_size,)
        a = (F.layer_norm(x @ self.weight_ih.T, H4, self.ln_ih_weight, self.bias_ih, EPS)
             + F.layer_norm(h @ self.weight_hh.T, H4, self.ln_hh_weight, self.bias_hh, EPS))
        i, f, g, o = a.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        update = g * masks["drop"] if "drop" in masks else g
        c_new = F.layer_norm(f * c + i * update, (self.hidden_size,), self.ln_c_weight,
                             self.ln_c_bias, EPS)
        h_new = o * torch.tanh(c_new)
        if "zone" in masks:
            d = masks["zone"]
            c_new = d * c + (1 - d) * c_new
            h_new = d * h + (1 - d) * h_new
        return (h_new, c_new), {"input": i, "forget": f, "cell": g, "output": o}

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        return s
