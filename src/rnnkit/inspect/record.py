"""Record every hidden state, cell state and gate of every rnnkit layer in a model.

    with rnnkit.record(model) as rec:
        out = model(x)
    rec["lstm"].gates["forget"]      # (L*D, B, T, H): layer-major, forward before backward
    rec["lstm"][0]["forget"]         # layer 0, directions concatenated: (B, T, D*H)
    rec["lstm"][0, 1]["h"]           # layer 0, backward direction: (B, T, H)
    rec.kernel                       # 'reference': the kernel that ran while recording

Names are the model's module names (``""`` when ``model`` is itself a layer; ``rec.only`` is
the record of the single recorded layer). Tensors are time-aligned (the backward direction is
re-reversed), zero past each sequence's length, and detached unless ``detach=False``. The
fused torch.nn kernel cannot expose gates, so while recording the layers run on a kernel that
can (``rec.kernel`` says which; the outputs are the same up to float rounding, and bit for bit
when the layer already ran that kernel). If a layer runs several times inside the block,
``rec[name]`` is its last call and ``rec.history[name]`` holds every call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnnkit import kernels
from rnnkit.layers import Recurrent


@dataclass
class LayerRecord:
    """What one call of one layer recorded. ``records[layer_index][direction]`` maps a name
    (``h``, ``c``, and each gate the cell names) to a ``(B, T, H)`` tensor."""

    records: list[list[dict[str, Tensor]]]
    kernel: str
    lengths: Tensor | None
    state_names: tuple[str, ...]
    would_run: str | None = None  # the kernel this call would have used without recording

    @property
    def num_layers(self) -> int:
        return len(self.records)

    @property
    def num_directions(self) -> int:
        return len(self.records[0])

    @property
    def names(self) -> tuple[str, ...]:
        """Recorded names: states first (``h``, ``c``), then the cell's gates."""
        return tuple(self.records[0][0])

    def stacked(self, name: str) -> Tensor:
        """``name`` for every layer and direction: ``(L*D, B, T, H)`` (torch.nn's state order)."""
        if name not in self.names:
            raise KeyError(f"no recorded {name!r}; recorded: {', '.join(self.names)}")
        return torch.stack([d[name] for layer in self.records for d in layer])

    @property
    def gates(self) -> dict[str, Tensor]:
        """Gate name -> ``(L*D, B, T, H)``."""
        return {n: self.stacked(n) for n in self.names if n not in self.state_names}

    @property
    def states(self) -> dict[str, Tensor]:
        """``h`` (and ``c``) -> ``(L*D, B, T, H)``."""
        return {n: self.stacked(n) for n in self.state_names}

    def __getitem__(self, key: int | str | tuple[int, int]) -> dict[str, Tensor] | Tensor:
        """``[i]``: layer ``i``'s dict, directions concatenated ``(B, T, D*H)``;
        ``[i, d]``: one direction ``(B, T, H)``; ``[name]``: :meth:`stacked`."""
        if isinstance(key, str):
            return self.stacked(key)
        if isinstance(key, tuple):
            i, d = key
            return self.records[i][d]
        dirs = self.records[key]
        if len(dirs) == 1:
            return dirs[0]
        return {n: torch.cat([d[n] for d in dirs], dim=-1) for n in dirs[0]}

    def __repr__(self) -> str:
        h = self.records[0][0]["h"]
        B, T, H = h.shape
        return (f"LayerRecord({self.num_layers} layer(s) x {self.num_directions} direction(s), "
                f"B={B}, T={T}, H={H}: {', '.join(self.names)}; kernel {self.kernel!r})")


@dataclass
class Recording:
    """The recorder attached by :func:`record`; indexable by module name."""

    layer_names: dict[nn.Module, str]
    detach: bool = True
    history: dict[str, list[LayerRecord]] = field(default_factory=dict)

    def add(self, layer: Recurrent, records: list | None, kernel: str,
            lengths: Tensor | None) -> None:
        """Called by :meth:`rnnkit.layers.Recurrent.forward` after each recorded call."""
        if records is None:
            raise RuntimeError(f"kernel {kernel!r} returned no records while recording")
        if self.detach:
            records = [[{n: v.detach() for n, v in d.items()} for d in lay] for lay in records]
        B, T, _ = records[0][0]["h"].shape
        h = records[0][0]["h"]
        probe = h.new_empty(B, T, layer.input_size)
        try:  # what would have run without recording (names a fused kernel we bypassed)
            would = kernels.select(layer, probe, lengths, False)
        except ValueError:
            would = None
        rec = LayerRecord(records, kernel, lengths, tuple(layer.state_names), would)
        self.history.setdefault(self.layer_names[layer], []).append(rec)

    def __getitem__(self, name: str) -> LayerRecord:
        if name not in self.history:
            known = ", ".join(repr(n) for n in self.layer_names.values())
            ran = ", ".join(repr(n) for n in self.history) or "none"
            raise KeyError(f"no recording for layer {name!r}; rnnkit layers in the model: "
                           f"{known}; recorded so far: {ran}")
        return self.history[name][-1]

    def __contains__(self, name: object) -> bool:
        return name in self.history

    def __iter__(self) -> Iterator[str]:
        return iter(self.history)

    def __len__(self) -> int:
        return len(self.history)

    @property
    def only(self) -> LayerRecord:
        """The record of the single recorded layer (error if there are several)."""
        if len(self.history) != 1:
            raise ValueError(f"rec.only needs exactly one recorded layer, got "
                             f"{len(self.history)}: {list(self.history)}")
        return next(iter(self.history.values()))[-1]

    @property
    def kernels(self) -> dict[str, str]:
        """Layer name -> the kernel that ran its last recorded call."""
        return {n: recs[-1].kernel for n, recs in self.history.items()}

    @property
    def kernel(self) -> str | None:
        """The kernel that ran while recording (``None`` before any call)."""
        names = sorted({r.kernel for recs in self.history.values() for r in recs})
        return None if not names else names[0] if len(names) == 1 else "mixed: " + ", ".join(names)

    def __repr__(self) -> str:
        parts = []
        for name, recs in self.history.items():
            r = recs[-1]
            note = (f"recording ran on the {r.kernel} path instead of {r.would_run}"
                    if r.would_run not in (None, r.kernel) else f"ran on {r.kernel}")
            parts.append(f"{name or '<model>'!s}: {', '.join(r.names)} ({note})")
        body = "; ".join(parts) if parts else "nothing recorded yet"
        return f"Recording({body})"


@contextmanager
def record(model: nn.Module, *, detach: bool = True) -> Iterator[Recording]:
    """Attach a recorder to every rnnkit layer in ``model`` for the ``with`` block.

    Detaches on exit, also on exceptions. ``detach=False`` keeps the recorded tensors in the
    autograd graph. Raises ``ValueError`` if ``model`` holds no rnnkit layer.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"record expects a torch.nn.Module holding rnnkit layers, "
                         f"got {type(model).__name__}")
    layers = {m: n for n, m in model.named_modules() if isinstance(m, Recurrent)}
    if not layers:
        raise ValueError(f"record found no rnnkit layer (RNN, LSTM, GRU) in "
                         f"{type(model).__name__}")
    rec = Recording(layers, detach=detach)
    for layer in layers:
        layer._recorders.append(rec)
    try:
        yield rec
    finally:
        for layer in layers:
            layer._recorders[:] = [r for r in layer._recorders if r is not rec]
