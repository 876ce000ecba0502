"""Long-range tasks: data generators against their definitions and published baselines, metrics
against hand computations, training through the one trainer, the command's table."""

import math

import numpy as np
import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main
from rnnkit.tasks.longrange import (
    LongRangeModel,
    LongRangeTask,
    adding_data,
    adding_metrics,
    copy_baseline,
    copy_data,
    copy_metrics,
    digits_data,
    digits_metrics,
)
from rnnkit.train import TrainConfig, train


def test_adding_data_follows_the_definition_and_the_mean_scores_one_sixth():
    x, y = adding_data(20000, 50, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 50, 2) and y.shape == (20000,)
    values, marks = x[..., 0], x[..., 1]
    assert values.min() >= 0 and values.max() <= 1
    assert set(marks.unique().tolist()) == {0.0, 1.0}
    assert (marks[:, :25].sum(1) == 1).all() and (marks[:, 25:].sum(1) == 1).all()
    torch.testing.assert_close(y, (values * marks).sum(1))
    # predicting the mean: MSE = Var(U1 + U2) = 2/12 ≈ 0.167 (Le et al. 2015)
    assert float(((y - 1.0) ** 2).mean()) == pytest.approx(1 / 6, abs=0.005)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)


def test_adding_metrics_by_hand():
    y = torch.tensor([1.0, 0.5, 1.5, 0.2])
    pred = torch.tensor([1.03, 0.45, 1.5, 0.3])          # errors .03, -.05, 0, .1
    m = adding_metrics(pred, y)
    assert m["loss"] == pytest.approx((0.03**2 + 0.05**2 + 0 + 0.1**2) / 4, rel=1e-5)
    assert m["solved"] == pytest.approx(0.5)


def test_copy_data_and_the_memoryless_baseline():
    T = 30
    x, y = copy_data(500, T, torch.Generator().manual_seed(1))
    assert x.shape == (500, T + 20, 10) and y.shape == (500, T + 20)
    inp = x.argmax(-1)
    assert (x.sum(-1) == 1).all()
    sym = inp[:, :10]
    assert sym.min() >= 1 and sym.max() <= 8
    assert (inp[:, 10:T + 9] == 0).all() and (inp[:, T + 9] == 9).all()
    assert (inp[:, T + 10:] == 0).all()
    assert (y[:, :T + 10] == 0).all() and (y[:, T + 10:] == sym).all()
    # the memoryless strategy: blank with certainty, then uniform over the 8 symbols
    logits = torch.full((500, T + 20, 9), -1e9)
    logits[:, :T + 10, 0] = 0
    logits[:, T + 10:, 1:] = 0
    m = copy_metrics(logits, y)
    assert m["loss"] == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-5)
    assert m["loss"] == pytest.approx(copy_baseline(T), rel=1e-6)
    # solved: all 10 recalled symbols right, by hand
    perfect = torch.nn.functional.one_hot(y, 9).float()
    perfect[0, -1] = torch.roll(perfect[0, -1], 1)         # one wrong symbol in sequence 0
    assert copy_metrics(perfect, y)["solved"] == pytest.approx(499 / 500)


def test_digits_sequences_and_the_fixed_permutation():
    xtr, _, xte, yte = digits_data(False)
    assert xtr.shape[1:] == (64, 1) and len(xtr) + len(xte) == 1797
    assert len(xte) == pytest.approx(0.2 * 1797, abs=10)
    assert set(yte.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    d = load_digits()
    first = torch.tensor(d.data[0] / 16.0, dtype=torch.float32)
    assert any(torch.equal(first, row[:, 0]) for row in xtr[:5]) or \
        any(torch.equal(first, row[:, 0]) for row in xte[:5])
    ptr, _, pte, _ = digits_data(True)
    assert not torch.equal(ptr, xtr)
    # the same permutation for every image and every call
    perm = [int(np.where((xtr[:, :, 0] == ptr[:, k:k + 1, 0]).all(0))[0][0])
            for k in range(64) if xtr[:, :, 0].std(0)[k] > 0][:10]
    assert len(set(perm)) == len(perm)
    torch.testing.assert_close(digits_data(True)[2], pte)
    torch.testing.assert_close(pte.sort(1).values, xte.sort(1).values)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    m = digits_metrics(logits, torch.tensor([0, 0]))
    want = (-torch.log_softmax(logits, -1)[[0, 1], [0, 0]]).mean()
    assert m["loss"] == pytest.approx(float(want)) and m["solved"] == 0.5


def test_stream_resumes_exactly_and_task_errors():
    task = LongRangeTask("adding", 12, "gru", batch=8)
    s = task.batches(0, 1)
    next(s)
    state = s.state_dict()
    a = next(s)
    s2 = task.batches(0, 1)
    s2.load_state_dict(state)
    b = next(s2)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="problem must be one of"):
        LongRangeTask("parity", 10, "lstm")
    with pytest.raises(ValueError, match="digits task only"):
        LongRangeTask("adding", 10, "lstm", permute=True)
    with pytest.raises(ValueError, match="64"):
        LongRangeTask("digits", 100, "lstm")


def test_chrono_init_spreads_forget_biases_over_log_range():
    torch.manual_seed(0)
    m = LongRangeModel("lstm", 2, 200, 1, init="chrono", t_max=100)
    c = m.rnn.cells[0]
    f = c.bias_ih[200:400] + c.bias_hh[200:400]
    assert f.min() >= 0 and f.max() <= math.log(99) + 1e-6
    torch.testing.assert_close(c.bias_ih[:200] + c.bias_hh[:200], -f)
    g = LongRangeModel("gru", 2, 8, 1, init=1.0).rnn.cells[0]
    torch.testing.assert_close(g.bias_ih[8:16] + g.bias_hh[8:16], torch.ones(8))


def test_lstm_learns_the_adding_problem_at_length_10(tmp_path):
    task = LongRangeTask("adding", 10, "lstm", hidden=32, batch=32)
    res = train(task, TrainConfig(out=str(tmp_path / "run"), steps=400, lr=2e-2,
                                  eval_every=400, progress=False))
    assert res.metrics["loss"] < 0.01, res.metrics        # baseline 0.167
    assert res.metrics["solved"] > 0.4, res.metrics


def test_longrange_command_table_matches_the_saved_models(tmp_path, capsys):
    out = tmp_path / "lr"
    rc = main(["longrange", "--task", "copy", "--length", "5", "--cells", "rnn,gru",
               "--steps", "6", "--hidden", "8", "--eval-every", "3", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert (out / "curves.png").stat().st_size > 1000
    for cell in ("rnn", "gru"):
        task = LongRangeTask("copy", 5, cell, hidden=8)
        model = task.build_model()
        ckpt.load_weights(model, ckpt.resolve(out / cell / "last"))
        m = task.evaluate(model.eval())
        row = next(line for line in text.splitlines() if line.startswith(f"| {cell.upper()} "))
        cols = [c.strip() for c in row.strip("|").split("|")]
        assert float(cols[2]) == pytest.approx(m["loss"], abs=1e-4)
        assert cols[5] == "6"
    assert f"{copy_baseline(5):.4f}" in text
    assert main(["longrange", "--cells", "rnn,transformer", "--steps", "1"]) == 2
