"""The reference kernel: the textbook loop, one ``cell.step`` per time step.

It serves every configuration (every cell form, gate recording, any lengths) and is the
ground truth every fast path is tested against. Variable lengths: a sequence's state stops
changing after its last real step and its outputs there are zero; the backward direction reads
each sequence reversed *within its own length*, so it starts at the last real step (the same
result as ``pack_padded_sequence`` + torch.nn). The loop over layers and directions is
:func:`rnnkit.kernels.stack.over_stack`; this module is the loop over time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels.stack import (
    Result,
    Stack,
    State,
    gather_time,
    over_stack,
    reverse_index,
    time_mask,
    time_reversal,
)

__all__ = ["gather_time", "reverse_index", "run"]


def run(stack: Stack, x: Tensor, state: State, lengths: Tensor | None,
        record: bool = False) -> Result:
    """The kernel (see :mod:`rnnkit.kernels`)."""
    B, T, _ = x.shape
    mask = time_mask(lengths, B, T, x.device)

    def direction(cell: Any, seq: Tensor, s: tuple[Tensor, ...]):
        ys: list[Tensor] = []
        trace: dict[str, list[Tensor]] = {}
        for t in range(T):
            new, gates = cell.step(seq[:, t], s)
            if mask is not None:
                m = mask[:, t, None]
                new = tuple(torch.where(m, n, o) for n, o in zip(new, s, strict=True))
            s = new
            ys.append(s[0])
            if record:
                for name, v in zip(cell.state_names, s, strict=True):
                    trace.setdefault(name, []).append(v)
                for name, v in gates.items():
                    trace.setdefault(name, []).append(v)
        y = torch.stack(ys, 1)
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        rec = None
        if record:
            rec = {}
            for name, vs in trace.items():
                v = torch.stack(vs, 1)
                rec[name] = v if mask is None else v * mask.unsqueeze(-1).to(v.dtype)
        return y, s, rec

    return over_stack(stack, x, state, direction, time_reversal(stack, lengths, x), record)
