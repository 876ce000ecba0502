"""What a kernel knows of the layer it runs, and the one loop over its layers and directions.

:class:`Stack` lists exactly what the kernels read of a recurrent layer
(:meth:`rnnkit.layers.Recurrent.describe_stack` makes it): the cells, the cell family
(``mode``), the sizes, dropout and training, bias, the state names, the kernel asked for and,
for minGRU/minLSTM, the scan. The kernels never see the layer itself.

:func:`over_stack` is the loop every sequence kernel (reference, fast, scan) runs: per layer
and direction it hands the direction's input (reversed within each sequence's length for the
backward direction), cell and initial state to the kernel's own ``direction`` function, puts
the outputs back in forward time, joins the directions, applies inter-layer dropout in
training, and collects the final states and the recordings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True, eq=False)
class Stack:
    """A recurrent layer stack as the kernels see it.

    ``cells`` holds ``num_layers * num_directions`` cells, indexed
    ``layer * num_directions + direction`` (forward first); ``mode`` names the family
    (``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``, ``"gru_reset_before"``,
    ``"layernorm_lstm"``, ``"mingru"``, ``"minlstm"``); ``cell_name`` is its name in messages
    (``"GRU(reset_after=False)"``), ``layer_name`` the layer's class name; ``kernel`` the
    kernel asked for (``"auto"`` or a name); ``scan`` the minGRU/minLSTM scan (``"auto"``
    elsewhere).
    """

    cells: Sequence[Any]
    mode: str
    cell_name: str
    layer_name: str
    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    dropout: float
    training: bool
    bias: bool
    state_names: tuple[str, ...]
    kernel: str = "auto"
    scan: str = "auto"
    own_kernel_only: bool = False  # a layer's ``needs_own_kernel``: options torch.nn lacks

    @property
    def bidirectional(self) -> bool:
        return self.num_directions == 2

    def parameters(self) -> Iterator[Tensor]:
        """The cells' parameters, in the layer's order (a cell without submodules read from its
        own table: a streamed chunk checks them every time, and ``Module.parameters()``
        costs several times more)."""
        for c in self.cells:
            if c._modules:
                yield from c.parameters()
            else:
                yield from (p for p in c._parameters.values() if p is not None)


class HasStack(Protocol):
    """Anything that describes itself as a :class:`Stack` (a recurrent layer)."""

    def describe_stack(self) -> Stack: ...


def as_stack(layer: Stack | HasStack) -> Stack:
    """``layer`` itself when it is a :class:`Stack`, else its description."""
    return layer if isinstance(layer, Stack) else layer.describe_stack()


State = tuple[Tensor, ...]  # one tensor per state name
# a kernel's result: output, final state, records[layer][direction] (or None)
Result = tuple[Tensor, State, list | None]
# direction(cell, input, initial state) -> (output, final state, recordings or None)
Direction = Callable[[Any, Tensor, State], tuple[Tensor, State, dict[str, Tensor] | None]]


def over_stack(stack: Stack, x: Tensor, state: State, direction: Direction,
               reverse: Callable[[Tensor], Tensor], record: bool) -> Result:
    """Run ``direction`` for every layer and direction of ``stack``.

    ``x``: the first layer's input in the kernel's own layout (``(B, T, I)``, or packed rows
    ``(N, I)``); ``state``: one tensor ``(L * D, B, H)`` per state name; ``reverse``: an
    involution of that layout that reverses each sequence within its length. ``direction``
    gets the cell, the input in its own time order and the cell's initial state, and returns
    its output, its final state and (when ``record``) its recordings, all in that order.

    Returns the last layer's output (directions joined on the last dim), the final states
    (each ``(L * D, B, H)``) and ``records[layer][direction]`` (``None`` unless ``record``),
    the outputs and recordings in forward time.
    """
    D = stack.num_directions
    finals: list[list[Tensor]] = [[] for _ in state]
    records: list | None = [] if record else None
    inp = x
    for layer_idx in range(stack.num_layers):
        outs, layer_records = [], []
        for d in range(D):
            k = layer_idx * D + d
            seq = inp if d == 0 else reverse(inp)
            y, fin, rec = direction(stack.cells[k], seq, tuple(s[k] for s in state))
            outs.append(y if d == 0 else reverse(y))
            for i, v in enumerate(fin):
                finals[i].append(v)
            if record:
                layer_records.append({n: v if d == 0 else reverse(v) for n, v in rec.items()})
        inp = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if stack.dropout > 0 and stack.training and layer_idx < stack.num_layers - 1:
            inp = F.dropout(inp, stack.dropout, training=True)
        if records is not None:
            records.append(layer_records)
    return inp, tuple(torch.stack(f, 0) for f in finals), records


def float_family(stack: Stack, x: Tensor, modes: Sequence[str], not_family: str,
                 kernel: str) -> str | None:
    """A float32/float64 kernel's ``why_not``: ``not_family`` where ``stack.mode`` is not one
    of ``modes``, else why ``x``'s dtype cannot run, else ``None``."""
    if stack.mode not in modes:
        return not_family
    if x.dtype not in (torch.float32, torch.float64):
        return f"{kernel} runs float32/float64, got {x.dtype}"
    return None


def time_mask(lengths: Tensor | None, B: int, T: int, device: torch.device) -> Tensor | None:
    """``(B, T)`` bool, true at each sequence's real steps (``None`` without lengths)."""
    if lengths is None:
        return None
    return torch.arange(T, device=device).view(1, T) < lengths.to(device).view(B, 1)


def reverse_index(lengths: Tensor | None, B: int, T: int, device: torch.device) -> Tensor:
    """``(B, T)`` index that reverses each row within its length: ``t -> len - 1 - t`` for
    ``t < len``, padding positions stay in place. Applying it twice is the identity."""
    t = torch.arange(T, device=device).expand(B, T)
    if lengths is None:
        return T - 1 - t
    L = lengths.to(device).view(B, 1)
    return torch.where(t < L, L - 1 - t, t)


def time_reversal(stack: Stack, lengths: Tensor | None, x: Tensor) -> Callable[[Tensor], Tensor]:
    """For :func:`over_stack` on batch-first ``(B, T, F)`` tensors like ``x``: each sequence
    reversed within its length (only a bidirectional stack calls it)."""
    B, T = x.shape[:2]
    rev = reverse_index(lengths, B, T, x.device) if stack.num_directions == 2 else None
    return lambda v: gather_time(v, rev)


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``(B, T, F)`` reordered along time by ``index`` ``(B, T)``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
