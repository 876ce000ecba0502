"""Recurrent layers: run a cell over time, with stacking, direction, lengths and state.

``RNN``, ``LSTM`` and ``GRU`` take batch-first input and return torch.nn-shaped state:

    outputs, state = layer(x, state=None, lengths=None)

* ``x`` ``(B, T, I)``; ``outputs`` ``(B, T, D*H)`` with ``D = 2`` if bidirectional else 1;
* ``state``: ``h`` (RNN, GRU) or ``(h, c)`` (LSTM), each ``(num_layers*D, B, H)``, exactly as
  torch.nn lays it out (layer-major, forward direction before backward);
* ``lengths`` ``(B,)``: real length of each sequence. Outputs past it are zero, the final
  state is the state at each sequence's own last step, and the backward direction starts at
  that step: what ``pack_padded_sequence`` + torch.nn gives, without packing anything.

Which code runs is chosen in one place, :func:`rnnkit.kernels.select`, from ``kernel=``:
``"auto"`` (of torch.nn's fused kernel and rnnkit's own fast path the one measured faster for
the call, from a shipped table; else the one that can serve, the parallel scan or the reference
loop), or one of them by name. ``layer.last_kernel`` names the one that ran last (its ``.why``
says why; :func:`rnnkit.kernels.explain` tells before running). ``layer.stepper()`` runs one
time step at a time (generation, streaming).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rnnkit import kernels
from rnnkit.cells import Cell, GRUCell, LSTMCell, RNNCell
from rnnkit.cells.layernorm_lstm import LayerNormLSTMCell
from rnnkit.cells.minrnn import MinGRUCell, MinLSTMCell
from rnnkit.kernels.scan import SCANS
from rnnkit.kernels.stack import Stack
from rnnkit.kernels.step import Stepper

State = Tensor | tuple[Tensor, Tensor]


class Recurrent(nn.Module):
    """Base of the recurrent layers. Subclasses set ``mode`` and :meth:`make_cell`."""

    mode: str = ""
    torch_class: ClassVar[type[nn.RNNBase] | None] = None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout applies between stacked layers; with num_layers=1 it does nothing",
                stacklevel=2,
            )
        if kernel not in kernels.CHOICES:
            raise ValueError(f"kernel must be one of {kernels.CHOICES}, got {kernel!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dropout = float(dropout)
        self.bias = bias
        self.kernel = kernel
        self.last_kernel: str | None = None
        self._recorders: list[Any] = []  # set by rnnkit.record(); see inspect/record.py
        D = self.num_directions
        self.cells = nn.ModuleList(
            self.make_cell(input_size if k < D else hidden_size * D) for k in range(num_layers * D)
        )

    # -- what subclasses define -------------------------------------------------------------
    def make_cell(self, input_size: int) -> Cell:
        raise NotImplementedError

    def describe_cell(self) -> str:
        return type(self).__name__

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.cells[0].state_names

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    def describe_stack(self) -> Stack:
        """What the kernels read of this layer (:class:`rnnkit.kernels.stack.Stack`), as it is
        now (train/eval mode included)."""
        return Stack(cells=self.cells, mode=self.mode, cell_name=self.describe_cell(),
                     layer_name=type(self).__name__, input_size=self.input_size,
                     hidden_size=self.hidden_size, num_layers=self.num_layers,
                     num_directions=self.num_directions, dropout=self.dropout,
                     training=self.training, bias=self.bias, state_names=self.state_names,
                     kernel=self.kernel, scan=getattr(self, "scan", "auto"),
                     own_kernel_only=getattr(self, "needs_own_kernel", False))

    # -- running ----------------------------------------------------------------------------
    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Run the stack over ``x`` ``(B, T, I)``; see the module docstring for shapes."""
        x = self._check_input(x)
        B, T, _ = x.shape
        lengths = self._check_lengths(lengths, B, T, x.device)
        st = self._check_state(state, B, x)
        if B == 0:  # an empty batch: empty outputs and states, with or without lengths
            out = x.new_zeros(0, T, self.output_size)
            empty = tuple(s.new_zeros(s.shape) for s in st)
            return out, (empty[0] if len(empty) == 1 else empty)
        record = bool(self._recorders)
        out, new_state, records, name = kernels.run(self.describe_stack(), x, st, lengths,
                                                    record)
        self.last_kernel = name
        for rec in self._recorders:
            rec.add(self, records, name, lengths)
        return out, (new_state[0] if len(new_state) == 1 else new_state)

    STEPPERS = 4  # steppers kept per layer (one per batch size, the most recently used)

    def stepper(self, batch: int = 1, verify: bool = False) -> Stepper:
        """A :class:`rnnkit.kernels.step.Stepper` for ``batch`` rows: one time step per call,
        ``(B, I)`` -> ``(B, H)``, or a chunk (:meth:`~rnnkit.kernels.step.Stepper.run`),
        inference only; built once and rebuilt when the weights change (generation,
        streaming). ``verify``: also compare the weights' bytes (``Stepper.fresh(deep=True)``,
        one pass over them), which catches writes no version counter sees. At most
        :data:`STEPPERS` batch sizes are kept, whatever the number of calls or sessions; a
        kept one that serves ``batch`` rows too (:meth:`Stepper.serves`) is reused."""
        cache = self.__dict__.setdefault("_steppers", {})
        st = cache.pop(batch, None)
        if st is None:
            wider = [b for b, s in cache.items() if s.serves(batch)]
            st = cache.pop(min(wider)) if wider else None
        if st is None or not st.fresh(deep=verify):
            st = Stepper(self.describe_stack(), batch)
        cache[batch] = st  # most recently used last
        while len(cache) > self.STEPPERS:
            del cache[next(iter(cache))]
        return st

    def _check_input(self, x: Tensor) -> Tensor:
        cls = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{cls} expects a torch.Tensor of shape (B, T, {self.input_size}), "
                            f"got {type(x).__name__}")
        if x.dim() != 3:
            hint = (" — add a batch dimension, e.g. x.unsqueeze(0)" if x.dim() == 2 else "")
            raise ValueError(f"{cls} expects input of shape (B, T, {self.input_size}) "
                             f"(rank 3, batch first), got rank {x.dim()} shape "
                             f"{tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise ValueError(f"{cls} expects floating-point input (B, T, {self.input_size}), "
                             f"got {x.dtype}: for token ids, use an embedding first "
                             f"(torch.nn.Embedding)")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{cls} expects {self.input_size} input features (last dim), "
                             f"got {x.shape[-1]} in shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{cls} expects at least one time step, got shape {tuple(x.shape)}")
        w = next(self.parameters(), None)
        if w is not None and x.dtype != w.dtype and not torch.is_autocast_enabled(
                x.device.type):
            raise ValueError(f"{cls} has {w.dtype} weights but got {x.dtype} input: convert one "
                             f"to the other (x.to({w.dtype}) or layer.to({x.dtype})), or run "
                             f"under torch.autocast")
        return x

    def _check_lengths(self, lengths: Any, B: int, T: int, device: torch.device) -> Tensor | None:
        if lengths is None:
            return None
        cls = type(self).__name__
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise ValueError(f"{cls} expects lengths of shape ({B},) (one per sequence), "
                             f"got shape {tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(f"{cls} expects integer lengths, got {lengths.dtype}")
        if B == 0:
            return lengths.to(device=device, dtype=torch.long)
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo <= 0 or hi > T:
            raise ValueError(f"{cls} expects every length in [1, {T}] (T = {T} time steps), "
                             f"got min {lo} and max {hi}")
        return lengths.to(device=device, dtype=torch.long)

    def _check_state(self, state: State | None, B: int, x: Tensor) -> tuple[Tensor, ...]:
        n = len(self.state_names)
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if state is None:
            z = x.new_zeros(shape)
            return tuple(z for _ in range(n))
        cls = type(self).__name__
        parts = (state,) if isinstance(state, Tensor) else tuple(state)
        form = "a tuple (h, c)" if n == 2 else "a tensor h"
        if len(parts) != n or not all(isinstance(p, Tensor) for p in parts):
            raise ValueError(f"{cls} expects state as {form}, each of shape {shape}, "
                             f"got {len(parts)} item(s)")
        for name, p in zip(self.state_names, parts, strict=True):
            if tuple(p.shape) != shape:
                raise ValueError(f"{cls} expects state {name} of shape {shape} "
                                 f"(num_layers*directions, B, H), got {tuple(p.shape)}")
        return tuple(p.to(dtype=x.dtype) for p in parts)

    # -- weights to and from torch.nn -------------------------------------------------------
    def torch_names(self) -> list[tuple[str, str]]:
        """Pairs ``(torch.nn parameter name, rnnkit parameter name)``."""
        pairs = []
        for k, cell in enumerate(self.cells):
            layer_idx, d = divmod(k, self.num_directions)
            sfx = f"l{layer_idx}" + ("_reverse" if d else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if getattr(cell, name, None) is not None:
                    pairs.append((f"{name}_{sfx}", f"cells.{k}.{name}"))
        return pairs

    def _torch_kwargs(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_torch(cls, m: nn.RNNBase, kernel: str = "auto") -> Recurrent:
        """A layer with the configuration and (copied) weights of a torch.nn RNN/LSTM/GRU.

        ``m`` must be batch-first-agnostic (rnnkit is always batch first) and have no
        ``proj_size``.
        """
        if cls.torch_class is None or not isinstance(m, cls.torch_class):
            raise TypeError(f"{cls.__name__}.from_torch expects a torch.nn."
                            f"{cls.torch_class.__name__ if cls.torch_class else '?'}, "
                            f"got {type(m).__name__}")
        if getattr(m, "proj_size", 0):
            raise ValueError("rnnkit layers have no proj_size; got a torch.nn.LSTM with "
                             f"proj_size={m.proj_size}")
        extra: dict[str, Any] = {}
        if isinstance(m, nn.RNN) and not isinstance(m, nn.LSTM | nn.GRU):
            extra["nonlinearity"] = m.nonlinearity
        layer = cls(m.input_size, m.hidden_size, num_layers=m.num_layers,
                    bidirectional=m.bidirectional, dropout=m.dropout, bias=m.bias,
                    kernel=kernel, **extra)
        layer.to(device=next(m.parameters()).device, dtype=next(m.parameters()).dtype)
        src = dict(m.named_parameters())
        dst = dict(layer.named_parameters())
        with torch.no_grad():
            for tname, rname in layer.torch_names():
                dst[rname].copy_(src[tname])
        layer.train(m.training)
        return layer

    def to_torch(self) -> nn.RNNBase:
        """A torch.nn RNN/LSTM/GRU (``batch_first=True``) holding a copy of these weights."""
        if self.torch_class is None or self.mode not in ("rnn_tanh", "rnn_relu", "lstm", "gru"):
            raise ValueError(f"torch.nn has no equivalent of {self.describe_cell()}")
        p = next(self.parameters())
        m = self.torch_class(self.input_size, self.hidden_size, num_layers=self.num_layers,
                             bias=self.bias, batch_first=True, dropout=self.dropout,
                             bidirectional=self.bidirectional, device=p.device, dtype=p.dtype,
                             **self._torch_kwargs())
        src = dict(self.named_parameters())
        dst = dict(m.named_parameters())
        with torch.no_grad():
            for tname, rname in self.torch_names():
                dst[tname].copy_(src[rname])
        m.train(self.training)
        return m

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self.bias:
            s += ", bias=False"
        return s + f", kernel={self.kernel!r}"


class RNN(Recurrent):
    r"""Elman RNN stack: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` per layer.

    Args: ``input_size``, ``hidden_size``; keyword-only ``nonlinearity`` (``"tanh"`` or
    ``"relu"``), ``num_layers``, ``bidirectional``, ``dropout`` (between layers), ``bias``,
    ``kernel``. Input ``(B, T, I)``, output ``(B, T, D*H)``, state ``h`` ``(L*D, B, H)``.
    """

    torch_class = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 **kwargs: Any) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = f"rnn_{nonlinearity}"
        super().__init__(input_size, hidden_size, **kwargs)

    def make_cell(self, input_size: int) -> Cell:
        return RNNCell(input_size, self.hidden_size, self.nonlinearity, bias=self.bias)

    def describe_cell(self) -> str:
        return f"RNN({self.nonlinearity})"

    def _torch_kwargs(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}


class LSTM(Recurrent):
    r"""LSTM stack (gates i, f, g, o; cell state ``c``), see :class:`rnnkit.cells.LSTMCell`.

    Input ``(B, T, I)``, output ``(B, T, D*H)``, state ``(h, c)``, each ``(L*D, B, H)``.
    """

    mode = "lstm"
    torch_class = nn.LSTM

    def make_cell(self, input_size: int) -> Cell:
        return LSTMCell(input_size, self.hidden_size, bias=self.bias)


class GRU(Recurrent):
    r"""GRU stack (gates r, z, n), see :class:`rnnkit.cells.GRUCell`.

    ``reset_after=True`` (default) is torch.nn's/cuDNN's/Keras' default form and runs on the
    fused kernel; ``reset_after=False`` is Cho et al. 2014's form and runs on rnnkit's own code.
    Input ``(B, T, I)``, output ``(B, T, D*H)``, state ``h`` ``(L*D, B, H)``.
    """

    torch_class = nn.GRU

    def __init__(self, input_size: int, hidden_size: int, *, reset_after: bool = True,
                 **kwargs: Any) -> None:
        self.reset_after = reset_after
        self.mode = "gru" if reset_after else "gru_reset_before"
        super().__init__(input_size, hidden_size, **kwargs)

    def make_cell(self, input_size: int) -> Cell:
        return GRUCell(input_size, self.hidden_size, bias=self.bias, reset_after=self.reset_after)

    def describe_cell(self) -> str:
        return "GRU" if self.reset_after else "GRU(reset_after=False)"

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class LayerNormLSTM(Recurrent):
    r"""LSTM with layer norm on the input and recurrent gate pre-activations and on the cell
    state (custom_lstms.py / haste), optional ``recurrent_dropout`` and ``zoneout``; see
    :class:`rnnkit.cells.layernorm_lstm.LayerNormLSTMCell`. Runs on rnnkit's fast path.

    Input ``(B, T, I)``, output ``(B, T, D*H)``, state ``(h, c)``, each ``(L*D, B, H)``.
    """

    mode = "layernorm_lstm"

    def __init__(self, input_size: int, hidden_size: int, *, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0, **kwargs: Any) -> None:
        self.recurrent_dropout, self.zoneout = recurrent_dropout, zoneout
        super().__init__(input_size, hidden_size, **kwargs)

    def make_cell(self, input_size: int) -> Cell:
        return LayerNormLSTMCell(input_size, self.hidden_size, bias=self.bias,
                                 recurrent_dropout=self.recurrent_dropout, zoneout=self.zoneout)


class _MinRNN(Recurrent):
    """Base of minGRU/minLSTM: ``scan`` picks the algorithm over time (see
    :mod:`rnnkit.kernels.scan`): ``"auto"`` (default) is ``"native"``, one C pass over time
    per sequence, on CPU float32 where the C kernels build, else ``"chunked"``, the parallel
    chunked scan; ``"log"`` is the paper's log-space scan. State ``h`` ``(L*D, B, H)``."""

    cell_class: ClassVar[type[Cell]]

    def __init__(self, input_size: int, hidden_size: int, *, scan: str = "auto",
                 **kwargs: Any) -> None:
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(map(repr, SCANS))}, got {scan!r}")
        self.scan = scan
        super().__init__(input_size, hidden_size, **kwargs)

    def make_cell(self, input_size: int) -> Cell:
        return self.cell_class(input_size, self.hidden_size, bias=self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.scan == "auto" else f", scan={self.scan!r}")


class MinGRU(_MinRNN):
    r"""minGRU stack (Feng et al. 2024): ``h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ g(W_h x_t + b_h)``,
    ``z_t = σ(W_z x_t + b_z)``; trains with a parallel scan over time (``kernel="auto"`` picks
    ``"scan"``), ``kernel="reference"`` runs it step by step. Input ``(B, T, I)``, output
    ``(B, T, D*H)``, state ``h`` ``(L*D, B, H)``.
    """

    mode = "mingru"
    cell_class = MinGRUCell


class MinLSTM(_MinRNN):
    r"""minLSTM stack (Feng et al. 2024): ``h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(W_h x_t + b_h)`` with
    ``f' = f / (f + i)``, ``i' = i / (f + i)``; see :class:`MinGRU` for kernels and shapes."""

    mode = "minlstm"
    cell_class = MinLSTMCell


# The layer families by name, as every task's ``--cell`` flag spells them.
CELLS: dict[str, type[Recurrent]] = {
    "rnn": RNN, "lstm": LSTM, "gru": GRU, "layernorm_lstm": LayerNormLSTM, "mingru": MinGRU,
    "minlstm": MinLSTM,
}
