"""Weights to and from Keras (``layer.get_weights()`` / ``layer.set_weights()`` lists).

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

import numpy as np
import torch

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
