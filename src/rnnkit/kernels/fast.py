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

import sys
from functools import partial
from typing import Any

import torch
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
# cell family -> its direction on the bfloat16 C kernels (csrc/bf16.c), for bf16 autocast
BF16_DIRECTIONS = {
    "lstm": lstm.direction_bf16,
    "rnn_tanh": rnn.direction_bf16,
    "rnn_relu": partial(rnn.direction_bf16, relu=True),
    "gru": gru.reset_after_direction_bf16,
}
_NOTICED: set[str] = set()  # the one-line notices already printed in this process


def bf16_autocast(x: Tensor) -> bool:
    """Whether this call runs under CPU autocast to bfloat16 (``--precision bf16``)."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def bf16_why_not(stack: Stack, x: Tensor, record: bool) -> str | None:
    """Why the bfloat16 C kernels cannot serve this bf16-autocast call (``None``: they can)."""
    if stack.mode not in BF16_DIRECTIONS:
        return f"no bfloat16 kernel for {stack.cell_name}"
    if record:
        return "recording gates runs in float32"
    if not native.bf16_capable():
        return "this CPU (or compiler) has no AVX512-BF16 instructions"
    if not all(p.device.type == "cpu" and p.dtype == torch.float32 for p in stack.parameters()):
        return "the bfloat16 kernels take float32 CPU weights"
    return None


def notice(key: str, text: str) -> None:
    """Print ``text`` to stderr once per process (one line)."""
    if key not in _NOTICED:
        _NOTICED.add(key)
        print(f"rnnkit: {text}", file=sys.stderr)


def why_not(layer: Stack, x: Tensor, record: bool) -> str | None:
    if bf16_autocast(x) and x.dtype == torch.bfloat16 and layer.mode in MODES:
        return None  # autocast's bfloat16 activations: the bfloat16 kernel, or float32
    return float_family(layer, x, MODES, f"the fast path has no kernel for {layer.cell_name}",
                        "the fast path")


def backend(stack: Stack, x: Tensor, record: bool = False) -> str:
    """``"bf16"`` under CPU bfloat16 autocast where the bfloat16 C kernels serve the call
    (:func:`bf16_why_not`; where they cannot, the call runs in float32 with a one-line notice),
    else ``"c"`` where the C kernels serve this call (CPU float32 input and weights, library
    built), else ``"torch"``."""
    if bf16_autocast(x):
        why = bf16_why_not(stack, x, record)
        if why is None:
            return "bf16"
        if stack.mode in MODES:
            notice(f"bf16:{stack.mode}:{why}", f"bf16 autocast: {stack.cell_name} runs in "
                   f"float32 on rnnkit's fast path ({why})")
    x32 = x.float() if x.dtype == torch.bfloat16 else x
    return "c" if native.usable(x32, *stack.parameters()) else "torch"


def run(stack: Stack, x: Tensor, state: State, lengths: Tensor | None, record: bool = False,
        how: str | None = None) -> Result:
    """The kernel (see :mod:`rnnkit.kernels`); ``how``: ``"bf16"``, ``"c"`` or ``"torch"``
    (:func:`backend`)."""
    B, T, _ = x.shape
    how = how or backend(stack, x, record)
    use_c = how == "c"
    plan = Plan.make(lengths, B, T, x.device)
    fn = BF16_DIRECTIONS[stack.mode] if how == "bf16" else DIRECTIONS[stack.mode]
    if how != "bf16" and bf16_autocast(x):  # bf16 autocast without a bf16 kernel: float32
        w = next(stack.parameters())
        with torch.autocast("cpu", enabled=False):
            return _run(stack, x.to(w.dtype), tuple(s.to(w.dtype) for s in state), plan,
                        record, fn, use_c)
    return _run(stack, x, state, plan, record, fn, use_c)


def _run(stack: Stack, x: Tensor, state: State, plan: Plan, record: bool, fn: Any,
         use_c: bool) -> Result:
    def direction(cell: Any, X: Tensor, s: tuple[Tensor, ...]):
        return fn(cell, X, s, plan, record, use_c)

    Y, finals, records = over_stack(stack, plan.pack(x), tuple(plan.sort(s) for s in state),
                                    direction, plan.reverse, record)
    if records is not None:
        records = [[{n: plan.unpack(v) for n, v in rec.items()} for rec in layer_records]
                   for layer_records in records]
    return plan.unpack(Y), tuple(plan.unsort(f) for f in finals), records
