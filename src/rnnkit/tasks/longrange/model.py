"""One recurrent layer and a linear readout, with the keep gate initialised so that the cell
remembers at the start."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.layers import CELLS
from rnnkit.tasks.common import one_of

LONGRANGE_CELLS = ("rnn", "lstm", "gru")


def init_keep_gate(layer: nn.Module, how: str | float, t_max: int) -> None:
    """Initialise the bias of the gate that keeps the state — LSTM's forget gate, GRU's update
    gate — so that at initialisation the cell remembers rather than forgets:

    * ``"chrono"`` (Tallec & Ollivier 2018): ``b ~ log U(1, t_max - 1)``, so unit k starts
      with a memory of about ``e^b`` steps, spread over the range the task needs (LSTM: input
      gate bias ``-b``);
    * a number: that constant bias (1.0: Gers et al. 2000; Jozefowicz et al. 2015);
    * ``"torch"``: leave torch.nn's initialisation (every bias ~ U(-1/√H, 1/√H)).

    The bias sits in ``bias_ih`` (``bias_hh`` of that block set to 0). RNN layers have no gate
    and are left alone."""
    if how == "torch" or getattr(layer, "mode", "").startswith("rnn"):
        return
    H = layer.hidden_size
    with torch.no_grad():
        for c in layer.cells:  # gate blocks: LSTM i, f, g, o; GRU r, z, n
            if how == "chrono":
                b = torch.log(torch.empty(H).uniform_(1.0, max(float(t_max) - 1, 2.0)))
            else:
                b = torch.full((H,), float(how))
            c.bias_ih[H:2 * H] = b
            c.bias_hh[H:2 * H] = 0.0
            if how == "chrono" and layer.mode == "lstm":
                c.bias_ih[:H] = -b
                c.bias_hh[:H] = 0.0


def parse_init(v: str) -> str | float:
    """``--init`` value: ``chrono``, ``torch`` or a number."""
    if v in ("chrono", "torch"):
        return v
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"--init must be 'chrono', 'torch' or a number, got {v!r}") from None


class LongRangeModel(nn.Module):
    """One recurrent layer and a linear readout: ``x`` ``(B, T, I)`` -> ``(B, T, O)``; the
    keep gate initialised by :func:`init_keep_gate` (``init``, ``t_max``)."""

    def __init__(self, cell: str, n_in: int, hidden: int, n_out: int,
                 init: str | float = "chrono", t_max: int = 100) -> None:
        super().__init__()
        one_of("cell", cell, LONGRANGE_CELLS)
        self.rnn = CELLS[cell](n_in, hidden)
        self.head = nn.Linear(hidden, n_out)
        init_keep_gate(self.rnn, init, t_max)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)
        return self.head(y)
