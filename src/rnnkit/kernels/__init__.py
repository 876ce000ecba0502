"""Kernels run a whole recurrent layer stack over time. This module is the ONE place that picks
which kernel runs.

Every kernel has the same signature::

    run(layer, x, state, lengths, record) -> (output, state, records)

* ``layer``: an :class:`rnnkit.layers.Recurrent` (its ``cells`` hold the weights, indexed
  ``layer_index * num_directions + direction``);
* ``x`` ``(B, T, I)``, already validated;
* ``state``: a tuple with one tensor per state name (``h``, or ``h`` and ``c``), each
  ``(num_layers * D, B, H)``;
* ``lengths``: ``None`` or an int64 tensor ``(B,)`` with ``1 <= lengths <= T``;
* ``record``: when true, the kernel also returns ``records[layer][direction]``, a dict of
  ``(B, T, H)`` tensors: the state (``h``, ``c``) and every gate the cell names, zero past each
  sequence's length.

It returns ``output`` ``(B, T, D*H)`` (zero past each length) and the final state tuple, each
``(num_layers * D, B, H)``, holding each sequence's state at its own last step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor

from rnnkit.kernels import fast, fused, reference, scan

if TYPE_CHECKING:
    from rnnkit.layers import Recurrent

KernelFn = Callable[..., tuple[Tensor, tuple[Tensor, ...], list | None]]

KERNELS: dict[str, KernelFn] = {
    "fused": fused.run,
    "fast": fast.run,
    "scan": scan.run,
    "reference": reference.run,
}
CHOICES = ("auto", *KERNELS)


def why_not(name: str, layer: Recurrent, x: Tensor, record: bool) -> str | None:
    """Why kernel ``name`` cannot run this call (``None`` when it can)."""
    if name == "fused":
        return fused.why_not(layer, x, record)
    if name == "fast":
        return fast.why_not(layer, x, record)
    if name == "scan":
        return scan.why_not(layer, x, record)
    return None


def select(layer: Recurrent, x: Tensor, lengths: Tensor | None, record: bool) -> str:
    """Name of the kernel that runs this call.

    ``kernel="auto"``: torch.nn's fused vendor kernel (oneDNN on CPU, cuDNN on GPU) whenever it
    can serve the configuration, else rnnkit's own fast path (:mod:`rnnkit.kernels.fast`)
    where it supports the cell, else the parallel scan (:mod:`rnnkit.kernels.scan`) for cells
    linear in their state (minGRU, minLSTM), else the reference loop over the cells. One
    exception: sequences of different lengths on CPU go to the fast path, which shrinks the
    active batch as sequences end, because torch.nn's CPU kernel runs a packed batch outside
    oneDNN, in a slower loop (``python bench/kernels.py --only lengths`` measures both). An
    explicit choice that cannot serve the call is an error, never a silent fallback.
    """
    wanted = layer.kernel
    if wanted != "auto":
        reason = why_not(wanted, layer, x, record)
        if reason is not None:
            raise ValueError(f"kernel={wanted!r} cannot run this call: {reason}")
        return wanted
    ragged = lengths is not None and x.device.type == "cpu" and bool(
        (lengths != x.shape[1]).any())
    for name in ("fused", "fast", "scan", "reference"):
        if name == "fused" and ragged and why_not("fast", layer, x, record) is None:
            continue
        if why_not(name, layer, x, record) is None:
            return name
    raise AssertionError("the reference kernel serves every configuration")


def run(
    layer: Recurrent,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], list | None, str]:
    """Select a kernel and run it; also returns the kernel's name."""
    name = select(layer, x, lengths, record)
    out, new_state, records = KERNELS[name](layer, x, state, lengths, record)
    return out, new_state, records, name
