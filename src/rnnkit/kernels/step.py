"""One time step at a time: the stateful step API for generation and streaming.

A :class:`Stepper` runs a unidirectional layer stack for ONE time step, ``x`` ``(B, I)`` ->
``h`` ``(B, H)`` of the last layer, carrying the state in the layer's own format (``h``, or
``(h, c)``, each ``(num_layers, B, H)``). It is inference only (no autograd, dropout off).

Calling the whole layer on a ``(B, 1, I)`` input costs the layer's per-call overhead at every
step (for torch.nn's oneDNN kernel at batch 1 that is most of the time). The stepper instead
prepares everything once, while the weights stay unchanged:

* per layer, ``[W_ih | W_hh]`` as ONE matrix, reordered for oneDNN (:class:`gemm.Fixed`), so
  a step is one product per layer on ``[x_t | h_{t-1}]`` kept in a preallocated buffer;
* the summed bias folded into that product;
* for LSTM on CPU float32 the elementwise rest of the step in one C call
  (:mod:`rnnkit.kernels.native`); other cells run their own equations (``cell.combine``, or
  ``cell.step`` for cells whose reset gate acts before the recurrent product).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rnnkit.kernels import gemm, native

if TYPE_CHECKING:
    from rnnkit.layers import Recurrent


class Stepper:
    """``stepper(x, state) -> (h_top, state)`` for a unidirectional ``layer``.

    Args:
        layer: an :class:`rnnkit.layers.Recurrent` with ``bidirectional=False``.
        batch: rows ``B`` per step (the buffers are sized for it).

    ``x`` ``(B, I)``; ``state`` ``None`` (zeros) or the layer's state format; returns the last
    layer's new ``h`` ``(B, H)`` and the new state (fresh tensors, safe to keep).
    The stepper snapshots the weights: build a new one after they change
    (:meth:`rnnkit.layers.Recurrent.stepper` does that for you).
    """

    def __init__(self, layer: Recurrent, batch: int = 1) -> None:
        if layer.bidirectional:
            raise ValueError("a bidirectional layer cannot run one step at a time: its backward "
                             "direction needs the whole sequence")
        self.layer, self.B = layer, batch
        self.L, self.H = layer.num_layers, layer.hidden_size
        self.n_state = len(layer.state_names)
        p = next(layer.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.version = _weights_version(layer)
        self.split = [hasattr(c, "combine") and getattr(c, "reset_after", True)
                      for c in layer.cells]
        self.native = (layer.mode == "lstm" and all(self.split)
                       and native.usable(p) and p.is_contiguous())
        self.mats, self.biases, self.xh = [], [], []
        with torch.no_grad():
            for cell, split in zip(layer.cells, self.split, strict=True):
                if not split:
                    self.mats.append(None)
                    self.biases.append(None)
                    self.xh.append(None)
                    continue
                I = cell.input_size
                if self.native:  # one product: [x | h] @ [W_ih | W_hh]^T + (b_ih + b_hh)
                    w = torch.cat([cell.weight_ih, cell.weight_hh], 1)
                    self.mats.append(gemm.Fixed(w.t(), batch))
                    b = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
                    self.biases.append(b)
                    self.xh.append(torch.zeros(batch, I + self.H, device=self.device,
                                               dtype=self.dtype))
                else:  # two products: the cell's equations need W_hh h + b_hh on its own
                    self.mats.append((gemm.Fixed(cell.weight_ih.detach().t(), batch),
                                      gemm.Fixed(cell.weight_hh.detach().t(), batch)))
                    self.biases.append((cell.bias_ih, cell.bias_hh))
                    self.xh.append(None)
        self.tc = torch.empty(batch, self.H, device=self.device, dtype=self.dtype)

    def fresh(self) -> bool:
        """Whether the layer's weights are still those the stepper was built from."""
        return _weights_version(self.layer) == self.version

    @torch.no_grad()
    def __call__(self, x: Tensor, state: Tensor | tuple[Tensor, ...] | None = None
                 ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        B, H = self.B, self.H
        if x.dim() != 2 or x.shape[0] != B or x.shape[1] != self.layer.input_size:
            raise ValueError(f"Stepper expects x of shape ({B}, {self.layer.input_size}), got "
                             f"{tuple(x.shape)}")
        if state is None:
            old = tuple(x.new_zeros(self.L, B, H) for _ in range(self.n_state))
        else:
            old = (state,) if isinstance(state, Tensor) else tuple(state)
        new = tuple(torch.empty_like(s) for s in old)
        inp = x
        for k, cell in enumerate(self.layer.cells):
            st = tuple(s[k] for s in old)
            if self.native:
                xh = self.xh[k]
                I = cell.input_size
                xh[:, :I] = inp
                xh[:, I:] = st[0]
                pre = self.mats[k].product(xh, self.biases[k])
                c_prev = st[1].contiguous()
                native.lib().lstm_forward(pre.data_ptr(), pre.data_ptr(), c_prev.data_ptr(),
                                          new[1][k].data_ptr(), self.tc.data_ptr(),
                                          new[0][k].data_ptr(), B, H)
            elif self.split[k]:
                m_ih, m_hh = self.mats[k]
                b_ih, b_hh = self.biases[k]
                out, _ = cell.combine(m_ih.product(inp, b_ih), m_hh.product(st[0], b_hh), st)
                for s, v in zip(new, out, strict=True):
                    s[k] = v
            else:
                out, _ = cell.step(inp, st)
                for s, v in zip(new, out, strict=True):
                    s[k] = v
            inp = new[0][k]
        return inp, (new[0] if self.n_state == 1 else new)


def _weights_version(layer: Recurrent) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in layer.parameters())
