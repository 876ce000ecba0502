"""rnnkit: recurrent sequence models that read like their equations, match torch.nn exactly,
and run fast."""

from typing import Any

import rnnkit.runtime  # noqa: F401  (first: sets GOMP_SPINCOUNT before torch loads)
from rnnkit import keras
from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.inspect.params import ParamFormula, count_params, param_formula
from rnnkit.inspect.record import record
from rnnkit.inspect.summary import summary
from rnnkit.keras import from_keras
from rnnkit.layers import GRU, LSTM, RNN, LayerNormLSTM, MinGRU, MinLSTM, Recurrent
from rnnkit.runtime import keep_freed_memory

__version__ = "0.1.0"


def export_onnx(model: Any, example_inputs: Any, path: Any, **kw: Any) -> Any:
    """Export ``model`` (rnnkit layers, or a module built of them) to ONNX; see
    :func:`rnnkit.export.export_onnx` (needs ``pip install 'rnnkit[onnx]'``)."""
    from rnnkit.export import export_onnx as _export

    return _export(model, example_inputs, path, **kw)


def load(run_dir: str) -> Any:
    """The trained model of a run folder, whatever its task (see :func:`rnnkit.tasks.load`):
    ``rnnkit.load("runs/sms").predict(["..."])``, ``rnnkit.load("runs/lm").sample("def ")``."""
    from rnnkit.tasks import load as load_run

    return load_run(run_dir)


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
    "export_onnx",
    "from_keras",
    "keep_freed_memory",
    "keras",
    "load",
    "param_formula",
    "record",
    "summary",
]
