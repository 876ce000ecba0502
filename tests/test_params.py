"""Parameter formulas against the Keras/torch conventions and against real modules."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rnnkit


def test_documented_keras_examples():
    assert rnnkit.param_formula("rnn", 6, 16).total == 368
    assert rnnkit.param_formula("rnn", 6, 16).formula == "(6 + 16 + 1) × 16 = 368"
    assert rnnkit.param_formula("lstm", 6, 16).formula == "4 × (6 + 16 + 1) × 16 = 1472"
    assert rnnkit.param_formula("gru", 6, 16).formula == "3 × (6 + 16 + 2) × 16 = 1152"
    assert rnnkit.param_formula("gru", 6, 16, reset_after=False).total == 3 * 23 * 16
    text = str(rnnkit.param_formula("lstm", 6, 16))
    assert "b_ih" in text and "b_hh" in text


@settings(max_examples=60, deadline=None)
@given(i=st.integers(1, 40), h=st.integers(1, 40), layers=st.integers(1, 3),
       bidir=st.booleans())
def test_torch_convention_equals_torch_nn(i, h, layers, bidir):
    for kind, cls in (("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU)):
        m = cls(i, h, num_layers=layers, bidirectional=bidir)
        f = rnnkit.param_formula(kind, i, h, convention="torch", num_layers=layers,
                                 bidirectional=bidir)
        assert f.total == sum(p.numel() for p in m.parameters())


@settings(max_examples=60, deadline=None)
@given(i=st.integers(1, 64), h=st.integers(1, 64))
def test_keras_convention_formulas(i, h):
    assert rnnkit.param_formula("rnn", i, h).total == (i + h + 1) * h
    assert rnnkit.param_formula("lstm", i, h).total == 4 * (i + h + 1) * h
    assert rnnkit.param_formula("gru", i, h).total == 3 * (i + h + 2) * h
    assert rnnkit.param_formula("gru", i, h, reset_after=False).total == 3 * (i + h + 1) * h
    assert rnnkit.param_formula("gru", i, h, convention="torch").total == 3 * (i + h + 2) * h


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True), (3, False)])
def test_count_params_equals_torch_convention(layers, bidir):
    for kind, layer in (("rnn", rnnkit.RNN(6, 16, num_layers=layers, bidirectional=bidir)),
                        ("lstm", rnnkit.LSTM(6, 16, num_layers=layers, bidirectional=bidir)),
                        ("gru", rnnkit.GRU(6, 16, num_layers=layers, bidirectional=bidir))):
        f = rnnkit.param_formula(kind, 6, 16, convention="torch", num_layers=layers,
                                 bidirectional=bidir)
        assert rnnkit.count_params(layer) == f.total
    g = rnnkit.GRU(6, 16, reset_after=False, num_layers=layers, bidirectional=bidir)
    f = rnnkit.param_formula("gru", 6, 16, convention="torch", reset_after=False,
                             num_layers=layers, bidirectional=bidir)
    assert rnnkit.count_params(g) == f.total


def test_bad_kind_and_convention():
    with pytest.raises(ValueError, match="kind must be one of"):
        rnnkit.param_formula("transformer", 6, 16)
    with pytest.raises(ValueError, match="convention must be"):
        rnnkit.param_formula("lstm", 6, 16, convention="jax")


class TwoLayerSimpleRNN(nn.Module):
    """The Keras example Sequential([SimpleRNN(16, return_sequences=True), SimpleRNN(8),
    Dense(1)]) on input shape (20, 6), ported."""

    def __init__(self):
        super().__init__()
        self.rnn1 = rnnkit.RNN(6, 16)
        self.rnn2 = rnnkit.RNN(16, 8)
        self.dense = nn.Linear(8, 1)

    def forward(self, x):
        y, _ = self.rnn1(x)
        _, h = self.rnn2(y)
        return self.dense(h[-1])


def test_summary_table():
    m = TwoLayerSimpleRNN()
    text = rnnkit.summary(m, (20, 6), print_fn=None)
    lines = text.splitlines()
    row1 = next(line for line in lines if line.startswith("rnn1 (RNN)"))
    assert "(None, 20, 16)" in row1 and row1.rstrip().endswith(f"{(6 + 16 + 2) * 16:,}")
    row2 = next(line for line in lines if line.startswith("rnn2 (RNN)"))
    assert "(None, 20, 8)" in row2 and row2.rstrip().endswith(f"{(16 + 8 + 2) * 8:,}")
    row3 = next(line for line in lines if line.startswith("dense (Linear)"))
    assert "(None, 1)" in row3 and row3.rstrip().endswith("9")
    total = (6 + 16 + 2) * 16 + (16 + 8 + 2) * 8 + 9
    assert f"Total params: {total:,}" in text


def test_summary_with_token_ids():
    m = nn.Sequential(nn.Embedding(50, 8))
    text = rnnkit.summary(m, (12,), dtype=torch.long, print_fn=None)
    assert "(None, 12, 8)" in text and "Total params: 400" in text
