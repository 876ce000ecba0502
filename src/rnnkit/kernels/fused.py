"""torch.nn's fused vendor kernels (oneDNN on CPU, cuDNN on GPU), called the way
``torch.nn.RNN``/``LSTM``/``GRU`` call them, on the weights the rnnkit cells own.

They cannot expose gate values and know only torch.nn's cell forms.
"""

from __future__ import annotations

from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.kernels.stack import Stack

_VF_FN = {
    "rnn_tanh": _VF.rnn_tanh,
    "rnn_relu": _VF.rnn_relu,
    "lstm": _VF.lstm,
    "gru": _VF.gru,
}


def why_not(layer: Stack, x: Tensor, record: bool) -> str | None:
    if record:
        return "the fused kernel cannot expose gate values for recording"
    if layer.mode not in _VF_FN:
        return f"torch.nn has no fused kernel for {layer.cell_name}"
    if layer.own_kernel_only:
        return "this layer uses options torch.nn's kernel lacks"
    return None


def flat_weights(layer: Stack) -> list[Tensor]:
    """Weights in torch.nn's ``_flat_weights`` order: per layer and direction
    ``w_ih, w_hh[, b_ih, b_hh]``."""
    out: list[Tensor] = []
    for cell in layer.cells:
        out += [cell.weight_ih, cell.weight_hh]
        if layer.bias:
            out += [cell.bias_ih, cell.bias_hh]
    return out


def run(
    layer: Stack,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], None]:
    fn = _VF_FN[layer.mode]
    weights = flat_weights(layer)
    args = (layer.bias, layer.num_layers, float(layer.dropout), layer.training,
            layer.bidirectional)
    hx: Tensor | tuple[Tensor, ...] = state if layer.mode == "lstm" else state[0]
    T = x.shape[1]
    if lengths is None or bool((lengths == T).all()):
        res = fn(x, hx, weights, *args, True)
        return res[0], tuple(res[1:]), None
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(s.index_select(1, order) for s in state)
    res = fn(packed.data, packed.batch_sizes, hx if layer.mode == "lstm" else hx[0],
             weights, *args)
    out, _ = pad_packed_sequence(
        PackedSequence(res[0], packed.batch_sizes, order, unorder),
        batch_first=True, total_length=T,
    )
    return out, tuple(s.index_select(1, unorder) for s in res[1:]), None
