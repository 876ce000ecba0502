"""Recurrent cells, one file per family, each written as its equations."""

from rnnkit.cells.base import Cell, Gates
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.rnn import RNNCell

__all__ = ["Cell", "GRUCell", "Gates", "LSTMCell", "RNNCell"]
