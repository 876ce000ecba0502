r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

Their gates read only the input ``x_t``, never ``h_{t-1}``, so each step is a *linear*
recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` whose coefficients are known for all steps at once:
training runs over the whole sequence with a parallel scan (:mod:`rnnkit.kernels.scan`), and
streaming/generation runs one :meth:`step` at a time; both compute the same values.

minGRU::

    z_t = σ(W_z x_t + b_z)                    update gate
    h̃_t = g(W_h x_t + b_h)                    candidate
    h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t      a_t = 1 - z_t,  b_t = z_t ⊙ h̃_t

minLSTM::

    f_t = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i),  h̃_t = g(W_h x_t + b_h)
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)      normalised: f' + i' = 1
    h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t

``g(v) = v + 1/2`` for ``v >= 0`` and ``σ(v)`` otherwise: the paper's positive, continuous
activation, which keeps ``h`` positive so the log-space scan can be used (``log g`` is
:func:`log_g`). Weights: ``weight_ih`` ``(G*H, I)`` stacking the blocks ``z, h`` (minGRU,
``G = 2``) or ``f, i, h`` (minLSTM, ``G = 3``), ``bias_ih`` ``(G*H,)``; no recurrent weights.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnkit.cells.base import Cell, Gates


def g(v: Tensor) -> Tensor:
    """The paper's positive activation: ``v + 1/2`` for ``v >= 0``, ``σ(v)`` below."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """``log g(v)`` computed stably: ``log(v + 1/2)`` for ``v >= 0``, ``-softplus(-v)`` below."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


class _MinCell(Cell):
    """Shared: input-only weights, the coefficients ``a, b`` and one step ``a ⊙ h + b``."""

    state_names = ("h",)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, bias=bias)
        self.weight_hh = None  # the gates never read h_{t-1}
        self.bias_hh = None

    def linear_hh(self, h: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} has no recurrent weights")

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Gates]:
        """``x`` ``(..., I)`` -> ``a``, ``b`` ``(..., H)`` with ``h_t = a ⊙ h_{t-1} + b``, and
        the gate values."""
        raise NotImplementedError

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log a``, ``log b`` ``(..., H)``, computed without forming ``a`` or ``b``."""
        raise NotImplementedError

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Gates]:
        (h,) = state
        a, b, gates = self.coefficients(x)
        return (a * h + b,), gates


class MinGRUCell(_MinCell):
    """One minGRU step. State ``h``; gates ``update`` (z) and ``candidate`` (h̃)."""

    num_gates = 2
    gate_names = ("update", "candidate")

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Gates]:
        k, v = self.linear_ih(x).chunk(2, dim=-1)
        z, h_tilde = torch.sigmoid(k), g(v)
        return 1 - z, z * h_tilde, {"update": z, "candidate": h_tilde}

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.linear_ih(x).chunk(2, dim=-1)
        return -F.softplus(k), -F.softplus(-k) + log_g(v)  # log(1 - z), log z + log h̃


class MinLSTMCell(_MinCell):
    """One minLSTM step. State ``h``; gates ``forget`` (f'), ``input`` (i'), ``candidate``."""

    num_gates = 3
    gate_names = ("forget", "input", "candidate")

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Gates]:
        kf, ki, v = self.linear_ih(x).chunk(3, dim=-1)
        # f' = f / (f + i) = σ(log f - log i), with log f = -softplus(-kf)
        f_norm = torch.sigmoid(F.softplus(-ki) - F.softplus(-kf))
        i_norm = 1 - f_norm
        h_tilde = g(v)
        return f_norm, i_norm * h_tilde, {"forget": f_norm, "input": i_norm,
                                          "candidate": h_tilde}

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kf, ki, v = self.linear_ih(x).chunk(3, dim=-1)
        d = F.softplus(-kf) - F.softplus(-ki)  # log i - log f
        return -F.softplus(d), -F.softplus(-d) + log_g(v)
