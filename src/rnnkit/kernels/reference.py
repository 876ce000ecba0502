"""The reference kernel: the textbook loop, one ``cell.step`` per time step.

It serves every configuration (every cell form, gate recording, any lengths) and is the
ground truth every fast path is tested against. Variable lengths: a sequence's state stops
changing after its last real step and its outputs there are zero; the backward direction reads
each sequence reversed *within its own length*, so it starts at the last real step (the same
result as ``pack_padded_sequence`` + torch.nn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:
    from rnnkit.layers import Recurrent


def reverse_index(lengths: Tensor | None, B: int, T: int, device: torch.device) -> Tensor:
    """``(B, T)`` index that reverses each row within its length: ``t -> len - 1 - t`` for
    ``t < len``, padding positions stay in place. Applying it twice is the identity."""
    t = torch.arange(T, device=device).expand(B, T)
    if lengths is None:
        return T - 1 - t
    L = lengths.to(device).view(B, 1)
    return torch.where(t < L, L - 1 - t, t)


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``(B, T, F)`` reordered along time by ``index`` ``(B, T)``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def run(
    layer: Recurrent,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], list | None]:
    B, T, _ = x.shape
    D = layer.num_directions
    mask = None
    if lengths is not None:
        mask = torch.arange(T, device=x.device).view(1, T) < lengths.to(x.device).view(B, 1)
    rev = reverse_index(lengths, B, T, x.device) if D == 2 else None
    finals: list[list[Tensor]] = [[] for _ in state]
    records: list | None = [] if record else None
    inp = x
    for layer_idx in range(layer.num_layers):
        outs, layer_records = [], []
        for d in range(D):
            k = layer_idx * D + d
            cell = layer.cells[k]
            s = tuple(st[k] for st in state)
            seq = inp if d == 0 else gather_time(inp, rev)
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
            if d == 1:
                y = gather_time(y, rev)
            outs.append(y)
            for i, v in enumerate(s):
                finals[i].append(v)
            if record:
                rec = {}
                for name, vs in trace.items():
                    v = torch.stack(vs, 1)
                    if mask is not None:
                        v = v * mask.unsqueeze(-1).to(v.dtype)
                    rec[name] = gather_time(v, rev) if d == 1 else v
                layer_records.append(rec)
        inp = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if layer.dropout > 0 and layer.training and layer_idx < layer.num_layers - 1:
            inp = F.dropout(inp, layer.dropout, training=True)
        if records is not None:
            records.append(layer_records)
    return inp, tuple(torch.stack(f, 0) for f in finals), records
