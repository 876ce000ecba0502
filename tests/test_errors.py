"""Bad input gets a ValueError naming what was expected and what was given."""

from pathlib import Path

import pytest
import torch

import rnnkit


@pytest.fixture(params=["rnn", "lstm", "gru"])
def layer(request):
    cls = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[request.param]
    return cls(5, 4, num_layers=2, bidirectional=True)


def test_rank_two_input_says_add_batch_dimension(layer):
    with pytest.raises(ValueError, match=r"\(B, T, 5\).*got rank 2.*add a batch dimension"):
        layer(torch.randn(7, 5))


def test_rank_four_input(layer):
    with pytest.raises(ValueError, match=r"rank 3.*got rank 4"):
        layer(torch.randn(2, 3, 7, 5))


def test_wrong_feature_size(layer):
    with pytest.raises(ValueError, match=r"expects 5 input features.*got 3"):
        layer(torch.randn(2, 7, 3))


def test_integer_input_says_use_embedding(layer):
    with pytest.raises(ValueError, match=r"floating-point.*torch.int64.*use an embedding"):
        layer(torch.randint(0, 5, (2, 7, 5)))


@pytest.mark.parametrize("lengths,msg", [
    ([0, 3], r"every length in \[1, 7\].*min 0"),
    ([3, -1], r"every length in \[1, 7\].*min -1"),
    ([8, 3], r"every length in \[1, 7\].*max 8"),
    ([3, 3, 3], r"lengths of shape \(2,\).*got shape \(3,\)"),
    ([[3, 3]], r"lengths of shape \(2,\).*got shape \(1, 2\)"),
    ([2.0, 3.0], r"integer lengths, got torch.float32"),
])
def test_bad_lengths(layer, lengths, msg):
    with pytest.raises(ValueError, match=msg):
        layer(torch.randn(2, 7, 5), lengths=torch.tensor(lengths))


def test_wrong_state_shape(layer):
    x = torch.randn(2, 7, 5)
    bad = torch.zeros(2, 2, 4)  # should be (num_layers*D = 4, B = 2, H = 4)
    st = (bad, bad) if isinstance(layer, rnnkit.LSTM) else bad
    with pytest.raises(ValueError, match=r"state h of shape \(4, 2, 4\).*got \(2, 2, 4\)"):
        layer(x, st)


def test_lstm_state_must_be_pair():
    layer = rnnkit.LSTM(5, 4)
    with pytest.raises(ValueError, match=r"a tuple \(h, c\)"):
        layer(torch.randn(2, 3, 5), torch.zeros(1, 2, 4))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="kernel must be one of"):
        rnnkit.LSTM(5, 4, kernel="cudnn9")
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        rnnkit.GRU(5, 0)
    with pytest.raises(ValueError, match="dropout must be in"):
        rnnkit.GRU(5, 4, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity must be"):
        rnnkit.RNN(5, 4, nonlinearity="sigmoid")


def test_from_torch_wrong_class():
    with pytest.raises(TypeError, match=r"expects a torch.nn.LSTM, got GRU"):
        rnnkit.LSTM.from_torch(torch.nn.GRU(3, 4))


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """The default ``--out`` (``runs/<task>-<date>-<time>``) is claimed by creating it: a
    second run in the same second gets ``-2`` (two README runs once collided there)."""
    import time

    from rnnkit.tasks.spec import new_run_folder

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261204-120000")
    got = [new_run_folder("lm", tmp_path / "runs") for _ in range(3)]
    assert [Path(g).name for g in got] == ["lm-20261204-120000", "lm-20261204-120000-2",
                                           "lm-20261204-120000-3"]
    assert all(Path(g).is_dir() for g in got)
