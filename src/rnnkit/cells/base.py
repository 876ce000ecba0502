"""What every recurrent cell shares: parameters in torch.nn's layout, one step, its gates.

A cell computes one time step. Its weights are stored exactly as ``torch.nn``'s cells store
them, gate blocks stacked along the first axis:

* ``weight_ih`` ``(G*H, I)`` and ``weight_hh`` ``(G*H, H)``, where ``G`` is the number of gate
  blocks (RNN 1, GRU 3 in order r, z, n; LSTM 4 in order i, f, g, o);
* ``bias_ih`` and ``bias_hh`` ``(G*H,)`` when ``bias=True``.

so weights copy one-to-one to and from ``torch.nn.RNNCell``/``LSTMCell``/``GRUCell`` and the
layers (``weight_ih_l0`` ...). Every cell is initialised like torch.nn: each weight and bias
uniform in ``[-1/sqrt(H), 1/sqrt(H)]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

Gates = dict[str, Tensor]


class Cell(nn.Module):
    """Base class: holds ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``.

    Subclasses set ``num_gates``, ``state_names`` (``("h",)`` or ``("h", "c")``), ``gate_names``
    and implement :meth:`step`. ``sums_products``: the cell's ``combine(xi, hh, state)``
    reads only ``xi + hh`` (LSTM, RNN; not GRU, whose reset gate scales ``hh``'s part), so a
    caller may fold any product into either argument.
    """

    num_gates: int = 1
    state_names: tuple[str, ...] = ("h",)
    gate_names: tuple[str, ...] = ()
    sums_products: bool = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        gh = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gh))
            self.bias_hh = nn.Parameter(torch.empty(gh))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    # The two affine maps of the equations, ``W_ih x + b_ih`` and ``W_hh h + b_hh``: (B, G*H).
    def linear_ih(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def linear_hh(self, h: Tensor) -> Tensor:
        return nn.functional.linear(h, self.weight_hh, self.bias_hh)

    def zero_state(self, batch_size: int, like: Tensor) -> tuple[Tensor, ...]:
        """All-zero state: one ``(B, H)`` tensor per name in ``state_names``."""
        z = like.new_zeros(batch_size, self.hidden_size)
        return tuple(z.clone() for _ in self.state_names)

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Gates]:
        """One time step: ``x`` ``(B, I)``, ``state`` a tuple of ``(B, H)``.

        Returns the new state tuple and the gate values of this step, each ``(B, H)``.
        """
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        state: Tensor | tuple[Tensor, ...] | None = None,
        return_gates: bool = False,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Gates]:
        """``x`` ``(B, I)``; ``state`` like ``torch.nn``'s cells (``h`` or ``(h, c)``, ``(B, H)``).

        Returns the new state in the same form, and with ``return_gates=True`` also a dict
        of gate values, each ``(B, H)``.
        """
        if x.dim() != 2 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        if state is None:
            st = self.zero_state(x.shape[0], x)
        else:
            st = (state,) if isinstance(state, Tensor) else tuple(state)
        new, gates = self.step(x, st)
        out = new[0] if len(new) == 1 else new
        return (out, gates) if return_gates else out

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"
