"""Kernels run a whole recurrent layer stack over time. This module is the ONE place that picks
which kernel runs.

Every kernel has the same signature::

    run(stack, x, state, lengths, record) -> (output, state, records)

* ``stack``: a :class:`rnnkit.kernels.stack.Stack`, what the kernel knows of the layer (its
  ``cells`` hold the weights, indexed ``layer_index * num_directions + direction``);
* ``x`` ``(B, T, I)``, already validated;
* ``state``: a tuple with one tensor per state name (``h``, or ``h`` and ``c``), each
  ``(num_layers * D, B, H)``;
* ``lengths``: ``None`` or an int64 tensor ``(B,)`` with ``1 <= lengths <= T``;
* ``record``: when true, the kernel also returns ``records[layer][direction]``, a dict of
  ``(B, T, H)`` tensors: the state (``h``, ``c``) and every gate the cell names, zero past each
  sequence's length.

It returns ``output`` ``(B, T, D*H)`` (zero past each length) and the final state tuple, each
``(num_layers * D, B, H)``, holding each sequence's state at its own last step. The kernels
with several implementations (``fast``: C or torch; ``scan``: native, chunked or log) also
take ``how``, decided here once per call (:data:`BACKENDS`) and reported by
``layer.last_kernel.backend``. The reference, fast and scan kernels share one loop over layers
and directions (:func:`rnnkit.kernels.stack.over_stack`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.kernels import fast, fused, native, reference, scan
from rnnkit.kernels.auto_table import SOURCE as TABLE_SOURCE
from rnnkit.kernels.auto_table import TABLE
from rnnkit.kernels.stack import HasStack, Stack, as_stack

Layer = Stack | HasStack  # a Stack, or a layer that describes itself as one

KernelFn = Callable[..., tuple[Tensor, tuple[Tensor, ...], list | None]]

KERNELS: dict[str, KernelFn] = {
    "fused": fused.run,
    "fast": fast.run,
    "scan": scan.run,
    "reference": reference.run,
}
# The kernels that run one of several implementations: which one, decided once per call and
# passed to the kernel as ``how`` (fast: "c" or "torch"; scan: "native", "chunked" or "log").
BACKENDS: dict[str, Callable[[Stack, Tensor, bool], str]] = {
    "fast": fast.backend,  # "bf16" under CPU bf16 autocast where the CPU has AVX512-BF16
    "scan": lambda stack, x, record: scan.resolve(stack.scan, x),
}
CHOICES = ("auto", *KERNELS)


def why_not(name: str, layer: Layer, x: Tensor, record: bool) -> str | None:
    """Why kernel ``name`` cannot run this call (``None`` when it can)."""
    layer = as_stack(layer)
    if name == "fused":
        return fused.why_not(layer, x, record)
    if name == "fast":
        return fast.why_not(layer, x, record)
    if name == "scan":
        return scan.why_not(layer, x, record)
    return None


class Choice(str):
    """A kernel's name (compares equal to the plain string) that also says why it was chosen
    and, once it has run, which implementation ran: ``layer.last_kernel == "fast"``,
    ``layer.last_kernel.why``, ``layer.last_kernel.backend`` (``"c"`` or ``"torch"`` for the
    fast path, the algorithm for the scan, ``None`` for the others),
    ``layer.last_kernel.runs`` (``"fast:c"``)."""

    why: str
    backend: str | None

    def __new__(cls, name: str, why: str = "", backend: str | None = None) -> Choice:
        c = super().__new__(cls, name)
        c.why = why
        c.backend = backend
        return c

    @property
    def runs(self) -> str:
        """``"kernel:backend"`` (``"fast:c"``, ``"fast:torch"``, ``"scan:native"``), or the
        kernel's name where it has one implementation."""
        return str(self) if self.backend is None else f"{self}:{self.backend}"

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:  # copy.deepcopy, pickle
        return (Choice, (str(self), self.why, self.backend))


# -- the measured table behind kernel="auto" ----------------------------------------------------
MARGIN = 0.03  # the fast path only when measured at least 3% faster than fused
SIZE_CLASSES = ((384, "small"), (None, "large"))  # hidden <= 384: measured at 256; else at 512
TINY_ROWS = 32  # B * T at most this: "tiny" (a streamed chunk; measured at B = 1, T = 16)


def size_class(hidden: int, rows: int | None = None) -> str:
    """The table's size class of a call on ``rows = B * T`` rows of a layer of ``hidden`` units
    per direction: ``"tiny"`` for a few rows (where fixed costs per call decide), else by
    ``hidden``."""
    if rows is not None and rows <= TINY_ROWS:
        return "tiny"
    for top, name in SIZE_CLASSES:
        if top is None or hidden <= top:
            return name
    raise AssertionError


def _is_training(layer: Stack, x: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for p in layer.parameters()))


def table_key(layer: Layer, x: Tensor) -> tuple[str, str, str, str, str] | None:
    """``(device, dtype, mode, "train"|"infer", size class)``, the key of this call in
    :data:`rnnkit.kernels.auto_table.TABLE`. Under CPU bfloat16 autocast the dtype is
    ``bfloat16-autocast-<class>`` (:func:`rnnkit.kernels.native.bf16_class`: which of the
    two bf16 kernels wins depends on whether the CPU has AMX); other autocast: ``None``."""
    layer = as_stack(layer)
    dev = x.device.type
    if fast.bf16_autocast(x):
        dtype = f"bfloat16-autocast-{native.bf16_class()}"
    elif torch.is_autocast_enabled(dev) if dev in ("cpu", "cuda") else False:
        return None
    else:
        dtype = str(x.dtype).removeprefix("torch.")
    return (dev, dtype, layer.mode, "train" if _is_training(layer, x) else "infer",
            size_class(layer.hidden_size, x.shape[0] * x.shape[1]))


def measured(layer: Layer, x: Tensor) -> tuple[str, str] | None:
    """``(faster kernel, why)`` from the shipped table for this call, or ``None`` when the table
    has no row for it (another device, dtype, autocast, or a cell it did not measure)."""
    key = table_key(layer, x)
    times = TABLE.get("|".join(key)) if key is not None else None
    if not times:
        return None
    best = min(times, key=lambda k: (times[k], k))  # ties: by name, deterministic
    if best != "fused" and "fused" in times and times[best] > times["fused"] * (1 - MARGIN):
        best = "fused"  # within the margin: torch.nn bit for bit at no measurable cost
    other = {k: v for k, v in times.items() if k != best}
    vs = ", ".join(f"{times[k] * 1e3:.1f} ms {k}" for k in other)
    return best, (f"measured faster for {key[2]} {key[3]} {key[4]} on {key[0]} {key[1]} "
                  f"({times[best] * 1e3:.1f} ms {best} vs {vs}; {TABLE_SOURCE})")


def decide(layer: Layer, x: Tensor, lengths: Tensor | None, record: bool) -> Choice:
    """The kernel for this call and why (see :func:`select`)."""
    layer = as_stack(layer)
    wanted = layer.kernel
    if wanted != "auto":
        reason = why_not(wanted, layer, x, record)
        if reason is not None:
            raise ValueError(f"kernel={wanted!r} cannot run this call: {reason}")
        return Choice(wanted, f"kernel={wanted!r} was asked for")
    ragged = lengths is not None and x.device.type == "cpu" and bool(
        (lengths != x.shape[1]).any())
    can = {name: why_not(name, layer, x, record) is None for name in KERNELS}
    if ragged and can["fast"]:
        return Choice("fast", "sequences of different lengths on CPU: the fast path shrinks the "
                              "batch as they end (torch.nn's packed CPU kernel runs outside "
                              "oneDNN, slower)")
    if can["fast"] and fast.bf16_autocast(x) and layer.mode in fast.BF16_DIRECTIONS:
        why = fast.bf16_why_not(layer, x, record)
        if why is None:
            m = measured(layer, x) if can["fused"] else None
            if m is not None:  # "fast" here is the bfloat16 kernel
                return Choice(*m)
            return Choice("fast", "bf16 autocast on a CPU with AVX512-BF16, no measured row for "
                                  "this CPU class: rnnkit's bfloat16 kernel (float32 "
                                  "accumulation and cell state; 5.6x torch.nn's at LSTM 1x512 "
                                  "on a CPU without AMX, python bench/kernels.py --only bf16)")
        return Choice("fast", f"bf16 autocast without the bfloat16 kernel ({why}): rnnkit's "
                              "float32 fast path")
    if can["fused"] and can["fast"]:
        m = measured(layer, x)
        if m is not None:
            return Choice(*m)
        return Choice("fused", "no measured row for this call (device, dtype, autocast or size): "
                               "torch.nn's fused vendor kernel")
    order = ("fused", "fast", "scan", "reference")
    for i, name in enumerate(order):
        if can[name]:
            nots = "; ".join(f"not {k}: {why_not(k, layer, x, record)}" for k in order[:i])
            return Choice(name, "the first kernel that can serve the call"
                          + (f" ({nots})" if nots else ""))
    raise AssertionError("the reference kernel serves every configuration")


def select(layer: Layer, x: Tensor, lengths: Tensor | None, record: bool) -> Choice:
    """Name of the kernel that runs this call (a :class:`Choice`: also says why).

    ``kernel="auto"``: where both torch.nn's fused vendor kernel (oneDNN on CPU, cuDNN on GPU)
    and rnnkit's own fast path (:mod:`rnnkit.kernels.fast`) can serve the call, the one
    measured faster for its device, dtype, cell, training or inference and size class, from the
    table ``python bench/kernels.py --only auto --write-table`` measured and ships as
    :mod:`rnnkit.kernels.auto_table` (deterministic: a lookup, no timing at run time); fused
    where the table has no row (other devices, autocast). Otherwise the one that can serve:
    fused, else the fast path, else the parallel scan (:mod:`rnnkit.kernels.scan`) for cells
    linear in their state (minGRU, minLSTM), else the reference loop over the cells. Sequences
    of different lengths on CPU go to the fast path, which shrinks the active batch as
    sequences end (``python bench/kernels.py --only lengths``). Both fused and fast equal
    torch.nn within 1e-5 in float32; ``kernel="fused"`` is torch.nn bit for bit. An explicit
    choice that cannot serve the call is an error, never a silent fallback.
    """
    return decide(layer, x, lengths, record)


def explain(layer: Layer, x: Tensor, lengths: Tensor | None = None,
            record: bool = False) -> str:
    """Which kernel ``layer`` runs on ``x`` ``(B, T, I)`` (in the current grad/autocast mode)
    and why, with what each other kernel says about the call: a few lines of text."""
    layer = as_stack(layer)
    c = decide(layer, x, lengths, record)
    lines = [f"{layer.layer_name} ({layer.cell_name}, hidden {layer.hidden_size}, "
             f"{'training' if _is_training(layer, x) else 'inference'}, {x.device.type} "
             f"{str(x.dtype).removeprefix('torch.')}): kernel={layer.kernel!r} runs {c!s}",
             f"  why: {c.why}"]
    for name in KERNELS:
        if name != c:
            r = why_not(name, layer, x, record)
            lines.append(f"  {name}: {'could run' if r is None else r}")
    return "\n".join(lines)


def run(
    layer: Layer,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], list | None, Choice]:
    """Select a kernel and run it; also returns the kernel's name (a :class:`Choice`)."""
    stack = as_stack(layer)
    name = select(stack, x, lengths, record)
    if name in BACKENDS:  # which implementation: decided here, once, for the whole call
        name = Choice(name, name.why, BACKENDS[name](stack, x, record))
        out, new_state, records = KERNELS[name](stack, x, state, lengths, record, name.backend)
    else:
        out, new_state, records = KERNELS[name](stack, x, state, lengths, record)
    return out, new_state, records, name
