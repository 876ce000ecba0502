"""ONNX export of rnnkit layers and of any model built from them, with dynamic batch and time
axes, ``lengths`` as an input, and the streaming step as a graph of its own.

    export_onnx(model, (x, lengths), "model.onnx")     # whole sequence: (B, T, I) -> ...
    export_onnx_step(layer, "step.onnx")                # one step: x (B, I), state -> y, state
    run_onnx("model.onnx", x=..., lengths=...)          # onnxruntime, numpy in and out

How: the model is traced by ``torch.onnx.export`` (the TorchScript exporter that ships with
torch; the recurrent layers' Python time loops cannot be traced with a dynamic time axis).
While tracing, every rnnkit layer stands as one placeholder node; afterwards each placeholder
becomes real ONNX: the ``RNN`` / ``LSTM`` / ``GRU`` operators for those families (their
``sequence_lens`` input is ``lengths``: outputs past a sequence's length are zero, the final
state is the state at its last step, the backward direction starts there, as in rnnkit), and a
``Scan`` over time for LayerNormLSTM, MinGRU and MinLSTM (``ReverseSequence`` reverses each
sequence within its length for the backward direction). The Scan bodies' sigmoid is written
as ``1 / (1 + exp(-v))`` and their tanh evaluated in float64 and rounded back (onnxruntime's
float32 ones are approximations, and LayerNormLSTM carries their extra rounding from step to
step), so a step of the graph is as close to a float64 step as PyTorch's float32. The graph
is checked with ``onnx.checker`` (full check, shapes inferred).

Shapes, for a layer (batch first, as everywhere in rnnkit): ``x`` ``(B, T, I)``, ``lengths``
``(B,)`` int64, state ``h`` (and ``c``) ``(L*D, B, H)``; ``output`` ``(B, T, D*H)``, ``h_n``
(``c_n``) ``(L*D, B, H)``. The step graph: ``x`` ``(B, I)``, ``h`` (``c``) ``(L, B, H)`` ->
``y`` ``(B, H)``, ``h_n`` (``c_n``) ``(L, B, H)``.

The graph is the model in eval mode (``export_onnx`` switches it there while tracing and back
after): dropout off, LayerNormLSTM's zoneout its expectation. Not exported (a ``ValueError``
at export, never a wrong graph): float64 or half weights (export float32), a step graph of a
bidirectional layer (the backward direction needs the whole sequence), ``torch.nn``
recurrent modules and recurrent layers other than rnnkit's six families, a layer being
recorded by ``rnnkit.record``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.layers import GRU, LSTM, RNN, LayerNormLSTM, MinGRU, MinLSTM, Recurrent

OPSET = 17
DOMAIN = "rnnkit.export"
_LIVE: dict[int, Recurrent] = {}  # placeholder key -> layer, during one export


def _need_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise ImportError("ONNX export needs the onnx package: pip install 'rnnkit[onnx]'") from e
    return onnx


# -- what can be exported ----------------------------------------------------------------------
def why_not(layer: Recurrent) -> str | None:
    """Why ``layer`` cannot be exported as it is (``None`` when it can)."""
    name = type(layer).__name__
    if type(layer) not in (RNN, LSTM, GRU, LayerNormLSTM, MinGRU, MinLSTM):
        return f"{name} is not one of rnnkit's exportable families (RNN, LSTM, GRU, " \
               f"LayerNormLSTM, MinGRU, MinLSTM)"
    p = next(layer.parameters())
    if p.dtype != torch.float32:
        return f"{name} has {p.dtype} weights; export float32 (model.float())"
    if layer.training:
        rand = []
        if layer.dropout and layer.num_layers > 1:
            rand.append(f"dropout={layer.dropout} between layers")
        if isinstance(layer, LayerNormLSTM) and layer.recurrent_dropout:
            rand.append(f"recurrent_dropout={layer.recurrent_dropout}")
        if isinstance(layer, LayerNormLSTM) and layer.zoneout:
            rand.append(f"zoneout={layer.zoneout} (random in training)")
        if rand:
            return f"{name} is in training mode with {', '.join(rand)}: call model.eval() first"
    if layer._recorders:
        return f"{name} is being recorded (rnnkit.record): export outside the record block"
    return None


# -- tracing: each layer becomes one placeholder node --------------------------------------------
class _Placeholder(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, *rest: Any) -> Any:  # rest: tensors..., key, n_len, n_st
        # Only the shapes matter while tracing: the node is replaced by real ONNX (_lower).
        key = rest[-3]
        layer = _LIVE[key]
        B, T, _ = x.shape
        out = x.new_zeros(B, T, layer.output_size)
        n = layer.num_layers * layer.num_directions
        return (out, *(x.new_zeros(n, B, layer.hidden_size) for _ in layer.state_names))

    @staticmethod
    def symbolic(g: Any, x: Any, *rest: Any) -> Any:
        *tensors, key, has_len, has_state = rest
        layer = _LIVE[key]
        n = len(layer.state_names)
        outs = g.op(f"{DOMAIN}::Recurrent", x, *tensors, key_i=key, has_lengths_i=int(has_len),
                    has_state_i=int(has_state), outputs=1 + n)
        with contextlib.suppress(Exception):  # shapes for the tracer's own shape inference
            outs[0].setType(x.type().with_sizes([None, None, layer.output_size]))
            for o in outs[1:]:
                o.setType(x.type().with_sizes([layer.num_layers * layer.num_directions, None,
                                               layer.hidden_size]))
        return outs


def _placeholder_forward(layer: Recurrent, key: int):
    def forward(x: Tensor, state: Any = None, lengths: Tensor | None = None) -> Any:
        layer._check_input(x)
        tensors: list[Tensor] = []
        if lengths is not None:
            if not torch.jit.is_tracing() or not isinstance(lengths, Tensor):
                layer._check_lengths(lengths, x.shape[0], x.shape[1], x.device)
            tensors.append(torch.as_tensor(lengths).to(torch.int64))
        if state is not None:
            layer._check_state(state, x.shape[0], x)
            tensors += [state] if isinstance(state, Tensor) else list(state)
        outs = _Placeholder.apply(x, *tensors, key, lengths is not None, state is not None)
        out, *new = outs
        return out, (new[0] if len(new) == 1 else tuple(new))
    return forward


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[dict[int, Recurrent]]:
    layers = [m for m in model.modules() if isinstance(m, Recurrent)]
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            raise ValueError(f"export_onnx exports rnnkit's recurrent layers; the model holds a "
                             f"torch.nn.{type(m).__name__}: convert it with "
                             f"rnnkit.{type(m).__name__}.from_torch(...)")
    for layer in layers:
        reason = why_not(layer)
        if reason is not None:
            raise ValueError(f"cannot export to ONNX: {reason}")
    _LIVE.clear()
    try:
        for key, layer in enumerate(layers):
            _LIVE[key] = layer
            layer.__dict__["forward"] = _placeholder_forward(layer, key)
        yield dict(_LIVE)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
        _LIVE.clear()


# -- building ONNX -----------------------------------------------------------------------------
class _Builder:
    """Collects nodes (and, for the main graph, initializers) with unique names."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{self.prefix}{hint}_{self.n}"

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        arr = np.asarray(value.detach().cpu().numpy() if isinstance(value, Tensor) else value,
                         dtype=dtype)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, *v: int) -> str:
        return self.const(list(v), "i", np.int64)

    def op(self, kind: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        outs = [self.name(kind.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(kind, list(inputs), outs, name=self.name(kind),
                                           **attrs))
        return outs[0] if n_out == 1 else outs


class _Body(_Builder):
    """A subgraph (Scan body): constants are Constant nodes inside it."""

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float32) -> str:
        from onnx import helper, numpy_helper

        arr = np.asarray(value.detach().cpu().numpy() if isinstance(value, Tensor) else value,
                         dtype=dtype)
        name = self.name(hint)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name + "_node",
                                           value=numpy_helper.from_array(arr, name + "_value")))
        return name


_ONNX_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}  # ONNX iofc / zrh blocks


def _blocks(w: Tensor, order: list[int]) -> Tensor:
    parts = w.detach().chunk(len(order), dim=0)
    return torch.cat([parts[i] for i in order], 0)


def _native(b: _Builder, layer: Recurrent, x: str, lengths: str | None,
            state: list[str] | None) -> tuple[str, list[str]]:
    """RNN / LSTM / GRU as ONNX's own operators, one per stacked layer."""
    kind = "lstm" if isinstance(layer, LSTM) else "gru" if isinstance(layer, GRU) else "rnn"
    order, D, H, G = _ONNX_ORDER[kind], layer.num_directions, layer.hidden_size, len(
        _ONNX_ORDER[kind])
    seq = b.op("Transpose", [x], perm=[1, 0, 2])                       # (T, B, I)
    lens = b.op("Cast", [lengths], to=6) if lengths is not None else ""  # int32
    finals: list[list[str]] = [[] for _ in layer.state_names]
    attrs: dict[str, Any] = {"hidden_size": H,
                             "direction": "bidirectional" if D == 2 else "forward"}
    if kind == "gru":
        attrs["linear_before_reset"] = int(layer.reset_after)
    if kind == "rnn":
        attrs["activations"] = ["Tanh" if layer.nonlinearity == "tanh" else "Relu"] * D
    for li in range(layer.num_layers):
        cells = [layer.cells[li * D + d] for d in range(D)]
        W = torch.stack([_blocks(c.weight_ih, order) for c in cells])   # (D, G*H, In)
        R = torch.stack([_blocks(c.weight_hh, order) for c in cells])   # (D, G*H, H)
        biases = []
        for c in cells:
            zero = torch.zeros(G * H)
            if kind == "gru" and not layer.reset_after:
                bi = _blocks(c.bias_rzn, order) if c.bias_rzn is not None else zero
                biases.append(torch.cat([bi, zero]))
            elif c.bias_ih is not None:
                biases.append(torch.cat([_blocks(c.bias_ih, order), _blocks(c.bias_hh, order)]))
            else:
                biases.append(torch.cat([zero, zero]))
        ins = [seq, b.const(W, "W"), b.const(R, "R"), b.const(torch.stack(biases), "B"), lens]
        if state is not None:
            for s in state:
                ins.append(b.op("Slice", [s, b.ints(li * D), b.ints(li * D + D), b.ints(0)]))
        while ins[-1] == "":
            ins.pop()
        outs = b.op(kind.upper(), ins, n_out=1 + len(finals), **attrs)
        y = b.op("Transpose", [outs[0]], perm=[0, 2, 1, 3])             # (T, B, D, H)
        seq = b.op("Reshape", [y, b.ints(0, 0, -1)])                    # (T, B, D*H)
        for i, f in enumerate(outs[1:]):
            finals[i].append(f)
    out = b.op("Transpose", [seq], perm=[1, 0, 2])
    return out, [f[0] if len(f) == 1 else b.op("Concat", f, axis=0) for f in finals]


_PRECISE = True  # activations as accurate as torch's (False: onnxruntime's float32 ones)


def _act(b: _Builder, kind: str, v: str) -> str:
    """``Sigmoid`` / ``Tanh`` of float32 ``v`` as accurate as torch's: onnxruntime's float32
    kernels are approximations (tanh up to 5.5 ulp off, torch's 0.56; sigmoid about 1e-7
    absolute, thousands of ulp where it is small, torch's within 2 ulp), and a LayerNormLSTM's
    layer norms carry that extra rounding on from step to step. Sigmoid is written as torch
    computes it, ``1 / (1 + exp(-v))`` (onnxruntime's ``Exp`` is accurate); tanh is evaluated
    in float64 and rounded back (the float32 nearest the true value; float64 sigmoid would be
    too, but costs ~2x the whole graph's time, float64 tanh ~1.3x)."""
    if not _PRECISE:
        return b.op(kind, [v])
    if kind == "Sigmoid":
        return b.op("Reciprocal", [b.op("Add", [b.const(1.0), b.op("Exp", [b.op("Neg", [v])])])])
    return b.op("Cast", [b.op(kind, [b.op("Cast", [v], to=11)])], to=1)


def _g(b: _Builder, v: str) -> str:
    """minRNN's activation: ``v + 1/2`` for ``v >= 0``, ``sigmoid(v)`` below."""
    pos = b.op("GreaterOrEqual", [v, b.const(0.0)])
    return b.op("Where", [pos, b.op("Add", [v, b.const(0.5)]), _act(b, "Sigmoid", v)])


def _layer_norm(b: _Builder, v: str, gamma: Tensor, beta: Tensor | None) -> str:
    """torch.nn.LayerNorm over the last axis (ε = 1e-5)."""
    shift = beta if beta is not None else torch.zeros_like(gamma)
    return b.op("LayerNormalization", [v, b.const(gamma), b.const(shift)], axis=-1,
                epsilon=1e-5)


def _split(b: _Builder, v: str, n: int, H: int) -> list[str]:
    return b.op("Split", [v, b.ints(*[H] * n)], n_out=n, axis=-1)


def _scanned(b: _Builder, layer: Recurrent, x: str, lengths: str | None,
             state: list[str] | None) -> tuple[str, list[str]]:
    """LayerNormLSTM / MinGRU / MinLSTM: input products for all steps at once, then a Scan
    over time carrying the state; masked with ``lengths``."""
    from onnx import TensorProto, helper

    D, H, n_st = layer.num_directions, layer.hidden_size, len(layer.state_names)
    seq = b.op("Transpose", [x], perm=[1, 0, 2])                       # (T, B, I)
    mask = None
    if lengths is not None:
        T = b.op("Gather", [b.op("Shape", [seq]), b.ints(0)], axis=0)
        t = b.op("Range", [b.const(0, dtype=np.int64), T, b.const(1, dtype=np.int64)])
        less = b.op("Less", [b.op("Unsqueeze", [t, b.ints(1)]),
                             b.op("Unsqueeze", [lengths, b.ints(0)])])  # (T, B)
        mask = b.op("Unsqueeze", [less, b.ints(2)])                      # (T, B, 1) bool
    batch = b.op("Gather", [b.op("Shape", [seq]), b.ints(1)], axis=0)    # (1,)
    zeros = b.op("ConstantOfShape", [b.op("Concat", [batch, b.ints(H)], axis=0)],
                 value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    finals: list[list[str]] = [[] for _ in range(n_st)]
    for li in range(layer.num_layers):
        ys = []
        for d in range(D):
            k = li * D + d
            cell = layer.cells[k]
            inp = seq
            if d == 1 and lengths is not None:
                inp = b.op("ReverseSequence", [seq, lengths], time_axis=0, batch_axis=1)
            xw = b.op("MatMul", [inp, b.const(cell.weight_ih.detach().T, "W")])  # (T, B, G*H)
            if isinstance(layer, LayerNormLSTM):
                xw = _layer_norm(b, xw, cell.ln_ih_weight, cell.bias_ih)
                scan_in = [xw]
            else:
                if cell.bias_ih is not None:
                    xw = b.op("Add", [xw, b.const(cell.bias_ih)])
                scan_in = _min_coefficients(b, layer, xw, H)           # a, b: (T, B, H)
            if mask is not None:
                scan_in.append(mask)
            init = []
            for i in range(n_st):
                if state is None:
                    init.append(zeros)
                else:
                    row = b.op("Slice", [state[i], b.ints(k), b.ints(k + 1), b.ints(0)])
                    init.append(b.op("Squeeze", [row, b.ints(0)]))
            body = _scan_body(b.prefix + f"l{k}_", layer, cell, n_in=len(scan_in),
                              masked=mask is not None)
            rev = int(d == 1 and lengths is None)
            outs = b.op("Scan", init + scan_in, n_out=n_st + 1, body=body,
                        num_scan_inputs=len(scan_in), scan_input_directions=[rev] * len(scan_in),
                        scan_output_directions=[rev])
            y = outs[-1]                                                # (T, B, H)
            if d == 1 and lengths is not None:
                y = b.op("ReverseSequence", [y, lengths], time_axis=0, batch_axis=1)
            ys.append(y)
            for i in range(n_st):
                finals[i].append(b.op("Unsqueeze", [outs[i], b.ints(0)]))
        seq = ys[0] if D == 1 else b.op("Concat", ys, axis=2)
    out = b.op("Transpose", [seq], perm=[1, 0, 2])
    return out, [f[0] if len(f) == 1 else b.op("Concat", f, axis=0) for f in finals]


def _min_coefficients(b: _Builder, layer: Recurrent, xw: str, H: int) -> list[str]:
    """``h_t = a_t ⊙ h_{t-1} + b_t``: ``a``, ``b`` for all steps (see cells/minrnn.py)."""
    if isinstance(layer, MinGRU):
        k, v = _split(b, xw, 2, H)
        z = _act(b, "Sigmoid", k)
        return [b.op("Sub", [b.const(1.0), z]), b.op("Mul", [z, _g(b, v)])]
    kf, ki, v = _split(b, xw, 3, H)
    sp = [b.op("Softplus", [b.op("Neg", [u])]) for u in (ki, kf)]
    f = _act(b, "Sigmoid", b.op("Sub", sp))
    return [f, b.op("Mul", [b.op("Sub", [b.const(1.0), f]), _g(b, v)])]


def _scan_body(prefix: str, layer: Recurrent, cell: Any, n_in: int, masked: bool) -> Any:
    from onnx import TensorProto, helper

    b = _Body(prefix)
    n_st = len(layer.state_names)
    st = [b.name(f"s{i}") for i in range(n_st)]
    xs = [b.name(f"x{i}") for i in range(n_in)]
    H = layer.hidden_size
    if isinstance(layer, LayerNormLSTM):
        h, c = st
        ha = _layer_norm(b, b.op("MatMul", [h, b.const(cell.weight_hh.detach().T)]),
                         cell.ln_hh_weight, cell.bias_hh)
        i, f, g, o = _split(b, b.op("Add", [xs[0], ha]), 4, H)
        i, f, o = (_act(b, "Sigmoid", u) for u in (i, f, o))
        g = _act(b, "Tanh", g)
        pre = b.op("Add", [b.op("Mul", [f, c]), b.op("Mul", [i, g])])
        cn = _layer_norm(b, pre, cell.ln_c_weight, cell.ln_c_bias)
        hn = b.op("Mul", [o, _act(b, "Tanh", cn)])
        if cell.zoneout:  # eval: the expectation d = zoneout
            dz, keep = b.const(cell.zoneout), b.const(1.0 - cell.zoneout)
            cn = b.op("Add", [b.op("Mul", [dz, c]), b.op("Mul", [keep, cn])])
            hn = b.op("Add", [b.op("Mul", [dz, h]), b.op("Mul", [keep, hn])])
        new = [hn, cn]
    else:
        new = [b.op("Add", [b.op("Mul", [xs[0], st[0]]), xs[1]])]
    if masked:
        m = xs[-1]
        new = [b.op("Where", [m, nv, ov]) for nv, ov in zip(new, st, strict=True)]
        y = b.op("Where", [m, new[0], b.const(0.0)])
    else:
        y = b.op("Identity", [new[0]])
    outs = [b.op("Identity", [v]) for v in new] + [y]

    def vi(n: str, t: int = TensorProto.FLOAT) -> Any:
        return helper.make_tensor_value_info(n, t, None)

    inputs = [vi(n) for n in st] + [vi(n) for n in xs[:n_in - masked]]
    if masked:
        inputs.append(vi(xs[-1], TensorProto.BOOL))
    return helper.make_graph(b.nodes, prefix + "body", inputs, [vi(n) for n in outs])


def _lower(model_proto: Any, layers: dict[int, Recurrent]) -> None:
    """Replace every placeholder node by real ONNX (in place)."""
    from onnx import helper

    g = model_proto.graph
    new_nodes = []
    for node in g.node:
        if node.domain != DOMAIN:
            new_nodes.append(node)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        layer = layers[a["key"]]
        ins = list(node.input)
        x, rest = ins[0], ins[1:]
        lengths = rest.pop(0) if a["has_lengths"] else None
        state = rest if a["has_state"] else None
        b = _Builder(f"{node.name or 'rec'}_{a['key']}/".replace(":", "_"))
        fn = _native if isinstance(layer, RNN | LSTM | GRU) else _scanned
        out, finals = fn(b, layer, x, lengths, state)
        for src, dst in zip([out, *finals], node.output, strict=True):
            b.op("Identity", [src])
            b.nodes[-1].output[0] = dst
        new_nodes += b.nodes
        g.initializer.extend(b.inits)
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [o for o in model_proto.opset_import if o.domain != DOMAIN]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep)


# -- the public calls --------------------------------------------------------------------------
def _default_axes(names: Sequence[str], values: Sequence[Tensor], outputs: bool,
                  ) -> dict[str, dict[int, str]]:
    axes = {}
    for n, v in zip(names, values, strict=True):
        if v.dim() == 0:
            continue
        d = {0: "batch"}
        if v.dim() >= (3 if outputs else 2):
            d[1] = "time"
        axes[n] = d
    return axes


def _flat(v: Any) -> list[Tensor]:
    if isinstance(v, Tensor):
        return [v]
    if isinstance(v, list | tuple):
        return [t for x in v for t in _flat(x)]
    raise ValueError(f"export_onnx handles models whose outputs are tensors or tuples of "
                     f"tensors, got {type(v).__name__}")


def export_onnx(model: nn.Module, example_inputs: Tensor | tuple[Any, ...], path: str | Path,
                *, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None,
                dynamic_axes: dict[str, dict[int, str]] | None = None,
                opset: int = OPSET, check: bool = True) -> Path:
    """Export ``model`` (an rnnkit layer or any module built from them) to ``path``.

    ``example_inputs``: a tensor or a tuple of positional tensors (``None`` for an argument
    left out); the graph does not depend on their sizes. Inputs are named ``input_names``
    (default ``input0``, ``input1``...; for a bare layer ``x``, ``lengths``, ``h``/``c``
    after the calling form); outputs ``output_names``. ``dynamic_axes`` defaults to axis 0
    of every input and output as ``batch`` and axis 1 as ``time`` (inputs of rank >= 2,
    outputs of rank >= 3); a bare layer's state ``(L*D, B, H)`` has ``batch`` on axis 1.
    Returns the path; raises ``ValueError`` for what cannot be exported (module docstring).
    """
    onnx = _need_onnx()
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with _tracing(model) as live, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped, args, in_names, out_names, axes = _signature(model, args, input_names,
                                                                   output_names, dynamic_axes)
            f = io.BytesIO()
            torch.onnx.export(wrapped, args, f, dynamo=False, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, opset_version=opset,
                              custom_opsets={DOMAIN: 1}, do_constant_folding=True)
    finally:
        model.train(was_training)
    return _save(onnx, f.getvalue(), live, path, check)


def _save(onnx: Any, graph: bytes, live: dict[int, Recurrent], path: str | Path, check: bool
          ) -> Path:
    """The traced ``graph`` with rnnkit's placeholder nodes lowered to ONNX operators,
    checked (``onnx.checker``, full check) when ``check``, written to ``path``."""
    proto = onnx.load_from_string(graph)
    _lower(proto, live)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


class _LayerCall(nn.Module):
    """A bare layer as ``(x, lengths?, *state?) -> (output, *state)`` for the exporter."""

    def __init__(self, layer: Recurrent, has_len: bool, has_state: bool) -> None:
        super().__init__()
        self.layer, self.has_len, self.has_state = layer, has_len, has_state

    def forward(self, x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        lengths = rest[0] if self.has_len else None
        st = rest[self.has_len:]
        state = (st[0] if len(st) == 1 else tuple(st)) if self.has_state else None
        out, new = self.layer(x, state, lengths)
        return (out, *((new,) if isinstance(new, Tensor) else new))


def _signature(model: nn.Module, args: tuple[Any, ...], input_names: Sequence[str] | None,
               output_names: Sequence[str] | None, dynamic_axes: dict | None
               ) -> tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict]:
    if isinstance(model, Recurrent):
        x = args[0]
        state = args[1] if len(args) > 1 else None
        lengths = args[2] if len(args) > 2 else None
        st = [] if state is None else ([state] if isinstance(state, Tensor) else list(state))
        names = model.state_names
        flat = (x, *([lengths] if lengths is not None else []), *st)
        in_names = list(input_names or ["x", *(["lengths"] if lengths is not None else []),
                                        *(names if st else [])])
        out_names = list(output_names or ["output", *(f"{n}_n" for n in names)])
        axes = dynamic_axes
        if axes is None:
            axes = {"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "output": {
                0: "batch", 1: "time"}}
            axes.update({n: {1: "batch"} for n in names})
            axes.update({f"{n}_n": {1: "batch"} for n in names})
            axes = {k: v for k, v in axes.items() if k in in_names + out_names}
        return _LayerCall(model, lengths is not None, bool(st)), flat, in_names, out_names, axes
    flat_args = tuple(a for a in args if a is not None)
    if len(flat_args) != len(args):
        raise ValueError("leave optional arguments out at the end of example_inputs, not as None")
    with torch.no_grad():
        outs = _flat(model(*args))
    flat_in = _flat(args)  # a tuple argument (an LSTM state) is one input per tensor
    in_names = list(input_names or [f"input{i}" for i in range(len(flat_in))])
    out_names = list(output_names or [f"output{i}" for i in range(len(outs))])
    if len(in_names) != len(flat_in):
        raise ValueError(f"input_names: expected {len(flat_in)} names (one per example input "
                         f"tensor), got {len(in_names)}")
    axes = dynamic_axes
    if axes is None:
        axes = {**_default_axes(in_names, flat_in, False),
                **_default_axes(out_names, outs, True)}
    return model, args, in_names, out_names, axes


class _StepCall(nn.Module):
    def __init__(self, layer: Recurrent) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        out, new = self.layer(x.unsqueeze(1), state[0] if len(state) == 1 else tuple(state))
        return (out[:, 0], *((new,) if isinstance(new, Tensor) else new))


def export_onnx_step(layer: Recurrent, path: str | Path, *, check: bool = True) -> Path:
    """The streaming step of ``layer`` as its own graph: ``x`` ``(B, I)`` and the state
    ``h`` (``c``) ``(L, B, H)`` in, ``y`` ``(B, H)`` (the top layer's output) and ``h_n``
    (``c_n``) out; batch is dynamic. Feed ``h_n`` back as ``h`` for the next step; start from
    zeros. A bidirectional layer has no step (ValueError)."""
    if not isinstance(layer, Recurrent):
        raise ValueError(f"export_onnx_step takes an rnnkit layer, got {type(layer).__name__}")
    if layer.bidirectional:
        raise ValueError(f"{type(layer).__name__}(bidirectional=True) has no streaming step: its "
                         f"backward direction needs the whole sequence; export it with "
                         f"export_onnx instead")
    onnx = _need_onnx()
    names = list(layer.state_names)
    p = next(layer.parameters())
    x = torch.zeros(2, layer.input_size, dtype=p.dtype)
    st = tuple(torch.zeros(layer.num_layers, 2, layer.hidden_size, dtype=p.dtype) for _ in names)
    was_training = layer.training
    layer.eval()
    try:
        with _tracing(layer) as live, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = io.BytesIO()
            out_names = ["y", *(f"{n}_n" for n in names)]
            axes = {"x": {0: "batch"}, "y": {0: "batch"},
                    **{n: {1: "batch"} for n in names + out_names[1:]}}
            torch.onnx.export(_StepCall(layer), (x, *st), f, dynamo=False,
                              input_names=["x", *names], output_names=out_names,
                              dynamic_axes=axes, opset_version=OPSET,
                              custom_opsets={DOMAIN: 1})
    finally:
        layer.train(was_training)
    return _save(onnx, f.getvalue(), live, path, check)


def run_onnx(path: str | Path, *args: Any, **feeds: Any) -> list[np.ndarray]:
    """Run an exported graph with onnxruntime (CPU): inputs by position or by name (tensors
    or arrays); returns the outputs as NumPy arrays, in the graph's order."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover
        raise ImportError("run_onnx needs onnxruntime: pip install 'rnnkit[onnx]'") from e
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(args) > len(names):
        raise ValueError(f"{path} takes {len(names)} inputs ({', '.join(names)}), got "
                         f"{len(args)}")
    given = dict(zip(names, args, strict=False)) | feeds
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"{path} needs inputs {names}; missing {missing}")
    arr = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v))
           for k, v in given.items()}
    return sess.run(None, arr)
