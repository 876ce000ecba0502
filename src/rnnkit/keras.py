"""Weights to and from Keras (``layer.get_weights()`` / ``layer.set_weights()`` lists), and
whole Keras 3 ``.keras`` model files (:func:`from_keras`, at the end of this module).

Keras stores, per direction, ``kernel`` ``(I, G*H)``, ``recurrent_kernel`` ``(H, G*H)`` and
``bias``: transposed relative to torch.nn, with gate blocks in its own order:

* ``SimpleRNN``: one block, ``bias`` ``(H,)``;
* ``LSTM``: i, f, c, o (torch.nn: i, f, g, o — the same order), ``bias`` ``(4H,)``;
* ``GRU``: z, r, h (torch.nn: r, z, n); ``bias`` ``(2, 3H)`` (input row, recurrent row) with
  ``reset_after=True``, ``(3H,)`` with ``reset_after=False``.

Keras keeps one bias where torch.nn keeps two (except the default GRU). Loading puts Keras'
bias into ``b_ih`` and zeros ``b_hh``; exporting adds ``b_ih + b_hh``. ``Bidirectional``
layers list the forward layer's weights, then the backward layer's; stacked layers follow
each other. So for a model of rnnkit layers, the list is the concatenation, layer by layer,
of what Keras' ``get_weights()`` returns for the matching Keras layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.layers import GRU, LSTM, RNN, Recurrent

_GRU_FROM_KERAS = [1, 0, 2]  # rnnkit block k comes from Keras block _GRU_FROM_KERAS[k]


def _blocks(a: np.ndarray, G: int, order: list[int], axis: int) -> np.ndarray:
    parts = np.split(a, G, axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def _kind(layer: Recurrent) -> tuple[int, list[int]]:
    if isinstance(layer, GRU):
        return 3, _GRU_FROM_KERAS
    if isinstance(layer, LSTM):
        return 4, [0, 1, 2, 3]
    if isinstance(layer, RNN):
        return 1, [0]
    raise TypeError(f"Keras weights exist for RNN, LSTM and GRU layers, got {type(layer).__name__}")


def get_keras_weights(layer: Recurrent) -> list[np.ndarray]:
    """The list Keras' ``set_weights`` takes for the equivalent Keras layer(s)."""
    G, order = _kind(layer)
    inv = list(np.argsort(order))  # Keras block j comes from rnnkit block inv[j]
    out = []
    for cell in layer.cells:
        w_ih = cell.weight_ih.detach().cpu().numpy()
        w_hh = cell.weight_hh.detach().cpu().numpy()
        out += [_blocks(w_ih.T, G, inv, 1), _blocks(w_hh.T, G, inv, 1)]
        if not layer.bias:
            continue
        if isinstance(layer, GRU) and not layer.reset_after:
            out.append(_blocks(cell.bias_rzn.detach().cpu().numpy(), G, inv, 0))
        elif isinstance(layer, GRU):
            b = np.stack([cell.bias_ih.detach().cpu().numpy(), cell.bias_hh.detach().cpu().numpy()])
            out.append(_blocks(b, G, inv, 1))
        else:
            out.append(_blocks((cell.bias_ih + cell.bias_hh).detach().cpu().numpy(), G, inv, 0))
    return out


def load_keras_weights(layer: Recurrent, weights: list[np.ndarray]) -> Recurrent:
    """Copy a Keras ``get_weights()`` list into ``layer`` (in place); returns ``layer``."""
    G, order = _kind(layer)
    H = layer.hidden_size
    per_cell = 3 if layer.bias else 2
    expected = per_cell * len(layer.cells)
    if len(weights) != expected:
        raise ValueError(f"expected {expected} arrays ({per_cell} per layer and direction: kernel, "
                         f"recurrent_kernel{', bias' if layer.bias else ''}), got {len(weights)}")
    it = iter(weights)
    with torch.no_grad():
        for k, cell in enumerate(layer.cells):
            kernel, rec = np.asarray(next(it)), np.asarray(next(it))
            want_k = (cell.input_size, G * H)
            if kernel.shape != want_k or rec.shape != (H, G * H):
                raise ValueError(f"cell {k}: expected kernel {want_k} and recurrent_kernel "
                                 f"{(H, G * H)}, got {kernel.shape} and {rec.shape}")
            cell.weight_ih.copy_(torch.from_numpy(_blocks(kernel, G, order, 1).T.copy()))
            cell.weight_hh.copy_(torch.from_numpy(_blocks(rec, G, order, 1).T.copy()))
            if not layer.bias:
                continue
            b = np.asarray(next(it))
            if isinstance(layer, GRU) and layer.reset_after:
                if b.shape != (2, G * H):
                    raise ValueError(f"cell {k}: GRU(reset_after=True) bias must be "
                                     f"{(2, G * H)}, got {b.shape}")
                b = _blocks(b, G, order, 1)
                cell.bias_ih.copy_(torch.from_numpy(b[0].copy()))
                cell.bias_hh.copy_(torch.from_numpy(b[1].copy()))
                continue
            if b.shape != (G * H,):
                raise ValueError(f"cell {k}: bias must be {(G * H,)}, got {b.shape}")
            b = torch.from_numpy(_blocks(b, G, order, 0).copy())
            if isinstance(layer, GRU):
                cell.bias_rzn.copy_(b)
            else:
                cell.bias_ih.copy_(b)
                cell.bias_hh.zero_()
    return layer


# -- Keras 3 model files (.keras) ----------------------------------------------------------------
# A .keras file is a zip archive: config.json (the model's architecture), model.weights.h5 (the
# variables) and metadata.json. Keras' saving_lib stores a model's layers under
# layers/<key>/vars/0, 1..., where <key> is the layer's class name in snake case, numbered in
# the order of model.layers (dense, dense_1...; not the layer's own name); recurrent layers
# keep their variables in layers/<key>/cell/vars, Bidirectional in
# layers/<key>/forward_layer/cell/vars and .../backward_layer/cell/vars. Reading needs h5py
# only, not Keras.

SUPPORTED = ("InputLayer", "Embedding", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "Dense",
             "Dropout", "Masking")
_ACTIVATIONS = {
    "linear": lambda v: v, None: lambda v: v, "relu": torch.relu, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid, "softmax": lambda v: torch.softmax(v, -1),
}


def _cls(conf: dict) -> str:
    return conf.get("class_name", "?")


def _read_archive(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``config.json`` and every variable of ``model.weights.h5`` by its HDF5 path."""
    import io
    import json
    import zipfile

    try:
        import h5py
    except ImportError as e:  # pragma: no cover - installed with the extra
        raise ImportError("reading .keras files needs h5py: pip install 'rnnkit[keras]'") from e
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras 3 .keras archive (a zip file holding "
                         f"config.json and model.weights.h5)")
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        for need in ("config.json", "model.weights.h5"):
            if need not in names:
                raise ValueError(f"{path}: the archive has no {need} (found: "
                                 f"{', '.join(sorted(names))})")
        config = json.loads(z.read("config.json"))
        arrays: dict[str, np.ndarray] = {}
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
            f.visititems(lambda k, v: arrays.__setitem__(k, np.asarray(v))
                         if isinstance(v, h5py.Dataset) else None)
    return config, arrays


def _vars(arrays: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The variables under ``prefix/vars`` in their saved order (0, 1, 2...)."""
    pre = f"{prefix}/vars/"
    found = {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}
    return [found[k] for k in sorted(found, key=int)]


def _snake(name: str) -> str:
    """Keras' ``naming.to_snake_case``: ``SimpleRNN`` -> ``simple_rnn``."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weight_keys(layer_confs: list[dict], sequential: bool) -> list[str]:
    """Each layer's HDF5 group, as Keras' ``_save_container_state`` names it."""
    used: dict[str, int] = {}
    keys = []
    for lc in layer_confs:
        if sequential and _cls(lc) == "InputLayer":  # Sequential.layers leaves it out
            keys.append("")
            continue
        key = _snake(_cls(lc))
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys.append(f"layers/{key}")
    return keys


def _chain(config: dict, path: Path) -> list[dict]:
    """The layer configs in order, for a Sequential model or a Functional one whose layers
    form one chain."""
    kind, conf = _cls(config), config.get("config", {})
    if kind not in ("Sequential", "Functional", "Model"):
        raise ValueError(f"{path}: expected a Sequential or Functional model, got {kind}")
    layers = conf.get("layers", [])
    if kind != "Sequential":
        prev = None
        for layer in layers:
            srcs = []
            for node in layer.get("inbound_nodes", []):
                for a in node.get("args", []) if isinstance(node, dict) else []:
                    hist = a.get("config", {}).get("keras_history") if isinstance(a, dict) \
                        else None
                    if hist:
                        srcs.append(hist[0])
            name = layer["config"].get("name")
            if prev is not None and srcs != [prev]:
                raise ValueError(f"{path}: layer {name!r} takes {srcs or 'no inputs'}; only "
                                 f"models whose layers form one chain (each layer fed by the "
                                 f"one before) are read")
            prev = name
    return layers


def _recurrent(lc: dict, weights: list[np.ndarray], bidirectional: bool, name: str) -> Recurrent:
    kind, c = _cls(lc), lc["config"]
    H = int(c["units"])
    for key in ("stateful",):
        if c.get(key):
            raise ValueError(f"layer {name!r}: {kind}({key}=True) is not read; pass the state "
                             f"back yourself (out, st = layer(x, st))")
    act = c.get("activation", "tanh")
    if kind == "SimpleRNN" and act not in ("tanh", "relu"):
        raise ValueError(f"layer {name!r}: SimpleRNN(activation={act!r}) has no rnnkit "
                         f"equivalent (tanh or relu)")
    if kind in ("LSTM", "GRU") and (act != "tanh" or c.get("recurrent_activation",
                                                              "sigmoid") != "sigmoid"):
        raise ValueError(f"layer {name!r}: {kind} with activation={act!r}, recurrent_activation="
                         f"{c.get('recurrent_activation')!r}; rnnkit's {kind} is tanh/sigmoid")
    I = int(weights[0].shape[0])
    bias = bool(c.get("use_bias", True))
    kw: dict[str, Any] = {"bidirectional": bidirectional, "bias": bias}
    if kind == "SimpleRNN":
        layer: Recurrent = RNN(I, H, nonlinearity=act, **kw)
    elif kind == "LSTM":
        layer = LSTM(I, H, **kw)
    else:
        layer = GRU(I, H, reset_after=bool(c.get("reset_after", True)), **kw)
    try:
        load_keras_weights(layer, [w.astype(np.float32) for w in weights])
    except ValueError as e:
        raise ValueError(f"layer {name!r} ({kind}): {e}") from e
    return layer.eval()


class _Step(nn.Module):
    """One Keras layer: ``(x, lengths) -> (x, lengths)``, or the final ``(out, *state)``."""

    def __init__(self, kind: str, name: str, config: dict, keras_params: int) -> None:
        super().__init__()
        self.kind, self.keras_name, self.config = kind, name, config
        self.keras_params = keras_params

    def forward(self, x: Any, lengths: Tensor | None = None) -> tuple[Any, Tensor | None]:
        return _apply(self, x, lengths)

    def extra_repr(self) -> str:
        return f"Keras {self.kind} {self.keras_name!r}, {self.keras_params:,} Keras parameters"


class KerasModel(nn.Module):
    """A Keras model read from a ``.keras`` file, built of torch / rnnkit layers.

    ``forward(x, lengths=None)``: ``x`` ``(B, T, F)`` float or ``(B, T)`` int64 token ids (for
    a model starting with ``Embedding``), as the Keras model takes it. Masks (``Masking``,
    ``Embedding(mask_zero=True)``) become ``lengths`` ``(B,)`` (the count of unmasked steps:
    masked steps must come after a sequence's real ones, as with post-padding); ``lengths``
    given here overrides them. Returns what the last layer returns in Keras: a tensor, or with
    ``return_state=True`` the tuple ``(output, h[, c])`` (``Bidirectional``: forward states,
    then backward ones), each state ``(B, H)``. Outputs at masked time steps are zero (Keras
    repeats the last unmasked output there unless ``zero_output_for_mask``).

    ``keras_layers`` lists ``(name, class, Keras parameter count)``.
    """

    def __init__(self, steps: list[_Step], name: str = "keras") -> None:
        super().__init__()
        self.steps = nn.ModuleDict({s.keras_name.replace(".", "_"): s for s in steps})
        self.keras_model_name = name

    @property
    def keras_layers(self) -> list[tuple[str, str, int]]:
        return [(s.keras_name, s.kind, s.keras_params) for s in self.steps.values()]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Any:
        own_lengths = lengths is not None
        out: Any = x
        for i, s in enumerate(self.steps.values()):
            last = i == len(self.steps) - 1
            out, new_len = s(out, lengths)
            if not own_lengths:
                lengths = new_len
            if isinstance(out, tuple) and not last:
                raise ValueError(f"layer {s.keras_name!r} returns its state (return_state="
                                 f"True) but is not the last layer")
        return out


def _mask_lengths(mask: Tensor, name: str) -> Tensor:
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]
    if not bool((prefix == mask).all()):
        raise ValueError(f"layer {name!r}: the mask has gaps (masked steps before unmasked "
                         f"ones); rnnkit reads masks as lengths: pad at the end of each sequence")
    return lengths


def _apply(s: _Step, x: Any, lengths: Tensor | None) -> tuple[Any, Tensor | None]:
    c, k = s.config, s.kind
    if k in ("InputLayer", "Dropout"):
        return x, lengths
    if k == "Embedding":
        out = s.emb(x)
        if c.get("mask_zero"):
            lengths = _mask_lengths(x != 0, s.keras_name)
        return out, lengths
    if k == "Masking":
        m = (x != float(c.get("mask_value", 0.0))).any(-1)
        return x * m.unsqueeze(-1).to(x.dtype), _mask_lengths(m, s.keras_name)
    if k == "Dense":
        return _ACTIVATIONS[c.get("activation", "linear")](s.dense(x)), lengths
    # recurrent: SimpleRNN / LSTM / GRU, alone or in Bidirectional
    rnn: Recurrent = s.rnn
    back = bool(c.get("go_backwards")) and not rnn.bidirectional
    if back:
        if lengths is not None and bool((lengths != x.shape[1]).any()):
            raise ValueError(f"layer {s.keras_name!r}: go_backwards=True with a mask is not "
                             f"read; use Bidirectional, or no mask")
        x = x.flip(1)
    if lengths is not None and bool((lengths < 1).any()):
        raise ValueError(f"layer {s.keras_name!r}: a sequence is masked entirely (length 0)")
    y, st = rnn(x, lengths=lengths)
    parts = st if isinstance(st, tuple) else (st,)
    if s.return_sequences:
        out = y
        if rnn.bidirectional and s.merge != "concat":
            f, b = y.chunk(2, -1)
            out = {"sum": f + b, "mul": f * b, "ave": (f + b) / 2}[s.merge]
    else:
        if rnn.bidirectional:
            f, b = parts[0][0], parts[0][1]
            out = {"concat": torch.cat([f, b], -1), "sum": f + b, "mul": f * b,
                   "ave": (f + b) / 2}[s.merge]
        else:
            out = parts[0][0]
    if s.return_state:
        D = rnn.num_directions
        states = [p[d] for d in range(D) for p in parts]
        return (out, *states), lengths
    return out, lengths


def _keras_count(kind: str, conf: dict, weights: list[np.ndarray]) -> int:
    """Keras' own count: the saved variables' sizes (one bias per gate block; the default
    GRU's two)."""
    return int(sum(w.size for w in weights))


def from_keras(path: str | Path) -> KerasModel:
    """Read a Keras 3 ``.keras`` file (architecture and weights; Keras itself is not needed,
    h5py is) and return an equivalent :class:`KerasModel` of torch / rnnkit layers, in eval
    mode. Layers: ``InputLayer``, ``Embedding``, ``SimpleRNN``, ``LSTM``, ``GRU`` (both
    ``reset_after``), ``Bidirectional`` (``merge_mode`` concat, sum, mul, ave), ``Dense``,
    ``Dropout``, ``Masking``, in a Sequential model or a Functional chain; any other layer is
    a ValueError naming it."""
    path = Path(path)
    config, arrays = _read_archive(path)
    layer_confs = _chain(config, path)
    bad = [f"{lc['config'].get('name')} ({_cls(lc)})" for lc in layer_confs
           if _cls(lc) not in SUPPORTED]
    if bad:
        raise ValueError(f"{path}: cannot convert layer(s) {', '.join(bad)}; rnnkit reads "
                         f"{', '.join(SUPPORTED)}")
    steps = []
    keys = _weight_keys(layer_confs, _cls(config) == "Sequential")
    for lc, where in zip(layer_confs, keys, strict=True):
        kind, c = _cls(lc), lc["config"]
        name = c.get("name", kind.lower())
        if kind == "Bidirectional":
            inner = c["layer"]
            if c.get("merge_mode", "concat") not in ("concat", "sum", "mul", "ave"):
                raise ValueError(f"layer {name!r}: Bidirectional(merge_mode="
                                 f"{c.get('merge_mode')!r}) is not read (concat, sum, mul, ave)")
            if _cls(inner) not in ("SimpleRNN", "LSTM", "GRU"):
                raise ValueError(f"layer {name!r}: Bidirectional({_cls(inner)}) is not read")
            fw = _vars(arrays, f"{where}/forward_layer/cell")
            bw = _vars(arrays, f"{where}/backward_layer/cell")
            weights = fw + bw
            rnn = _recurrent(inner, weights, True, name)
            rc = inner["config"]
            s = _Step(kind, name, c, _keras_count(kind, c, weights))
            s.rnn = rnn
            s.return_sequences = bool(rc.get("return_sequences"))
            s.return_state = bool(rc.get("return_state"))
            s.merge = c.get("merge_mode", "concat")
        elif kind in ("SimpleRNN", "LSTM", "GRU"):
            weights = _vars(arrays, f"{where}/cell")
            s = _Step(kind, name, c, _keras_count(kind, c, weights))
            s.rnn = _recurrent(lc, weights, False, name)
            s.return_sequences = bool(c.get("return_sequences"))
            s.return_state = bool(c.get("return_state"))
            s.merge = "concat"
        elif kind == "Embedding":
            (table,) = _vars(arrays, where)
            s = _Step(kind, name, c, table.size)
            s.emb = nn.Embedding(*table.shape)
            with torch.no_grad():
                s.emb.weight.copy_(torch.from_numpy(table.astype(np.float32)))
        elif kind == "Dense":
            ws = _vars(arrays, where)
            if c.get("activation", "linear") not in _ACTIVATIONS:
                raise ValueError(f"layer {name!r}: Dense(activation={c.get('activation')!r}) "
                                 f"is not read ({', '.join(k for k in _ACTIVATIONS if k)})")
            s = _Step(kind, name, c, int(sum(w.size for w in ws)))
            kernel = ws[0]
            s.dense = nn.Linear(kernel.shape[0], kernel.shape[1], bias=len(ws) > 1)
            with torch.no_grad():
                s.dense.weight.copy_(torch.from_numpy(kernel.T.astype(np.float32)))
                if len(ws) > 1:
                    s.dense.bias.copy_(torch.from_numpy(ws[1].astype(np.float32)))
        else:
            s = _Step(kind, name, c, 0)
        steps.append(s)
    return KerasModel(steps, config.get("config", {}).get("name", "keras")).eval()
