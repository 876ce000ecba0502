"""rnnkit: recurrent sequence models that read like their equations, match torch.nn exactly,
and run fast."""

from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.inspect.params import ParamFormula, count_params, param_formula
from rnnkit.inspect.record import record
from rnnkit.inspect.summary import summary
from rnnkit.kernels.memory import keep_freed_memory
from rnnkit.layers import GRU, LSTM, RNN, LayerNormLSTM, MinGRU, MinLSTM, Recurrent

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "LayerNormLSTM",
    "MinGRU",
    "MinLSTM",
    "ParamFormula",
    "RNNCell",
    "Recurrent",
    "count_params",
    "keep_freed_memory",
    "param_formula",
    "record",
    "summary",
]
