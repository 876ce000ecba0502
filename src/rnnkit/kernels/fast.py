"""rnnkit's own fast path: RNN (tanh/relu), LSTM, GRU in both forms and LayerNormLSTM, every
stacking, direction, ``lengths`` and gate recording, with a hand-written backward.

This module is the kernel's front: :func:`why_not` says whether it serves a call, and
:func:`run` packs the sequences (:class:`rnnkit.kernels.plan.Plan`), decides ONCE per call
whether the recurrences run in C or in torch ops (:func:`backend`), and runs the loop over
layers and directions (:func:`rnnkit.kernels.stack.over_stack`) with one
:class:`torch.autograd.Function` per layer and direction, from the cell family's module:

* :mod:`rnnkit.kernels.lstm`, :mod:`rnnkit.kernels.layernorm_lstm`, :mod:`rnnkit.kernels.gru`
  (``reset_after`` and ``reset_before``), :mod:`rnnkit.kernels.rnn`;
* ``"c"`` (CPU float32, C kernels built): one C call for the whole sequence forward and one
  backward (:mod:`rnnkit.kernels.bindings`), then the weight gradients as one product over all
  steps (:func:`rnnkit.kernels.gemm.products_t`); gradients flowing back into recorded gates
  take the torch backward of that layer;
* ``"torch"`` (float64, GPU, no C compiler or ``RNNKIT_NATIVE=0``): the input projection of
  all steps as one product, per step one product with the recurrent weight
  (:class:`rnnkit.kernels.gemm.Fixed`) and the cell's elementwise math as in-place torch ops;
  the backward the same way in reverse time.

``layer.last_kernel.backend`` says which ran (``layer.last_kernel.runs == "fast:c"``).
Recorded gates are the kernels' own buffers, unpacked; they stay differentiable.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from rnnkit.kernels import gru, layernorm_lstm, lstm, native, rnn
from rnnkit.kernels.plan import Plan
from rnnkit.kernels.stack import Result, Stack, State, float_family, over_stack

# cell family -> direction(cell, X, state, plan, record, use_c) over packed rows
DIRECTIONS = {
    "rnn_tanh": rnn.direction,
    "rnn_relu": partial(rnn.direction, relu=True),
    "lstm": lstm.direction,
    "gru": gru.reset_after_direction,
    "gru_reset_before": gru.reset_before_direction,
    "layernorm_lstm": layernorm_lstm.direction,
}
MODES = tuple(DIRECTIONS)


def why_not(layer: Stack, x: Tensor, record: bool) -> str | None:
    return float_family(layer, x, MODES, f"the fast path has no kernel for {layer.cell_name}",
                        "the fast path")


def backend(stack: Stack, x: Tensor) -> str:
    """``"c"`` where the C kernels serve this call (CPU float32 input and weights, library
    built), else ``"torch"``."""
    return "c" if native.usable(x, *stack.parameters()) else "torch"


def run(stack: Stack, x: Tensor, state: State, lengths: Tensor | None, record: bool = False,
        how: str | None = None) -> Result:
    """The kernel (see :mod:`rnnkit.kernels`); ``how``: ``"c"`` or ``"torch"``
    (:func:`backend`)."""
    B, T, _ = x.shape
    use_c = (how or backend(stack, x)) == "c"
    plan = Plan.make(lengths, B, T, x.device)
    fn = DIRECTIONS[stack.mode]

    def direction(cell: Any, X: Tensor, s: tuple[Tensor, ...]):
        return fn(cell, X, s, plan, record, use_c)

    Y, finals, records = over_stack(stack, plan.pack(x), tuple(plan.sort(s) for s in state),
                                    direction, plan.reverse, record)
    if records is not None:
        records = [[{n: plan.unpack(v) for n, v in rec.items()} for rec in layer_records]
                   for layer_records in records]
    return plan.unpack(Y), tuple(plan.unsort(f) for f in finals), records
