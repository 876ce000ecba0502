"""One time step at a time: the stateful step API for generation and streaming.

A :class:`Stepper` runs a unidirectional layer stack for ONE time step, ``x`` ``(B, I)`` ->
``h`` ``(B, H)`` of the last layer, carrying the state in the layer's own format (``h``, or
``(h, c)``, each ``(num_layers, B, H)``). It is inference only (no autograd, dropout off).

Calling the whole layer on a ``(B, 1, I)`` input costs the layer's per-call overhead at every
step (for torch.nn's oneDNN kernel at batch 1 that is most of the time). The stepper instead
prepares everything once, while the weights stay unchanged:

* for LSTM on CPU float32, the whole stack's step is ONE C call
  (``lstm_stack_step`` in ``csrc/lstm.c``): the weights are packed once with each
  unit's four gates side by side, so the threads split the units and apply the cell as soon as
  their products are done; at batch 1 a step is memory bound (it reads every weight once);
* otherwise, per layer, ``W_ih`` and ``W_hh`` reordered once for oneDNN
  (:class:`gemm.Fixed`), their biases folded into the products, and the cell's own equations
  (``cell.combine``, or ``cell.step`` for cells whose reset gate acts before the recurrent
  product).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.stack import Stack


class Stepper:
    """``stepper(x, state) -> (h_top, state)`` for a unidirectional ``layer``.

    Args:
        layer: a unidirectional stack (:class:`rnnkit.kernels.stack.Stack`, from
            :meth:`rnnkit.layers.Recurrent.describe_stack`).
        batch: rows ``B`` per step (the buffers are sized for it).

    ``x`` ``(B, I)``; ``state`` ``None`` (zeros) or the layer's state format; returns the last
    layer's new ``h`` ``(B, H)`` and the new state (fresh tensors, safe to keep).
    The stepper snapshots the weights: build a new one after they change
    (:meth:`rnnkit.layers.Recurrent.stepper` does that for you).
    """

    def __init__(self, layer: Stack, batch: int = 1) -> None:
        if layer.bidirectional:
            raise ValueError("a bidirectional layer cannot run one step at a time: its backward "
                             "direction needs the whole sequence")
        self.stack, self.B = layer, batch
        self.L, self.H = layer.num_layers, layer.hidden_size
        self.n_state = len(layer.state_names)
        p = next(iter(layer.parameters()))
        self.device, self.dtype = p.device, p.dtype
        self.version = _weights_version(layer)
        self.split = [hasattr(c, "combine") and getattr(c, "reset_after", True)
                      for c in layer.cells]
        self.native = (layer.mode == "lstm" and all(self.split)
                       and native.usable(p) and p.is_contiguous())
        self.mats, self.biases = [], []
        with torch.no_grad():
            if self.native:  # W_ih, W_hh, bias per layer, packed for the C step
                packs = [[native.pack_units(c.weight_ih), native.pack_units(c.weight_hh),
                          native.pack_units(c.weight_hh.new_zeros(4 * self.H) if c.bias_ih is None
                                            else c.bias_ih + c.bias_hh)] for c in layer.cells]
                self.packs = bindings.StackWeights(*zip(*packs, strict=True), I=layer.input_size,
                                            H=self.H)
            for cell, split in zip(layer.cells, self.split, strict=True):
                if self.native or not split:
                    self.mats.append(None)
                    self.biases.append(None)
                else:  # two products: the cell's equations need W_hh h + b_hh on its own
                    self.mats.append((gemm.Fixed(cell.weight_ih.detach().t(), batch),
                                      gemm.Fixed(cell.weight_hh.detach().t(), batch)))
                    self.biases.append((cell.bias_ih, cell.bias_hh))

    def fresh(self) -> bool:
        """Whether the layer's weights are still those the stepper was built from."""
        return _weights_version(self.stack) == self.version

    @torch.no_grad()
    def __call__(self, x: Tensor, state: Tensor | tuple[Tensor, ...] | None = None
                 ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        B, H = self.B, self.H
        if x.dim() != 2 or x.shape[0] != B or x.shape[1] != self.stack.input_size:
            raise ValueError(f"Stepper expects x of shape ({B}, {self.stack.input_size}), got "
                             f"{tuple(x.shape)}")
        if state is None:
            old = tuple(x.new_zeros(self.L, B, H) for _ in range(self.n_state))
        else:
            old = (state,) if isinstance(state, Tensor) else tuple(state)
            want = (self.L, B, H)
            if len(old) != self.n_state or any(tuple(s.shape) != want for s in old):
                names = " and ".join(self.stack.state_names)
                raise ValueError(f"Stepper expects the state as {names}, each of shape {want}, "
                                 f"got {[tuple(s.shape) for s in old]}")
        x = x.to(self.dtype).contiguous()  # (the C step reads rows as they lie in memory)
        old = tuple(s.to(self.dtype).contiguous() for s in old)
        new = tuple(torch.empty_like(s) for s in old)
        if self.native:
            bindings.lstm_stack_step(x, self.packs, old[0], old[1], new[0], new[1], B)
            return new[0][-1], new
        inp = x
        for k, cell in enumerate(self.stack.cells):
            st = tuple(s[k] for s in old)
            if self.split[k]:
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


def _weights_version(layer: Stack) -> tuple:
    return bindings.versions(layer.parameters())
