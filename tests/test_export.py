"""ONNX export: onnxruntime's outputs equal PyTorch's (rnnkit's layers, already tested against
torch.nn) at batch sizes and lengths other than the export example's; the step graph run step
by step equals the whole sequence; unsupported configurations fail at export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.export import export_onnx, export_onnx_step, run_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FAMILIES = [
    ("rnn", rnnkit.RNN, {}),
    ("rnn_relu", rnnkit.RNN, {"nonlinearity": "relu"}),
    ("lstm", rnnkit.LSTM, {}),
    ("gru", rnnkit.GRU, {}),
    ("gru_reset_before", rnnkit.GRU, {"reset_after": False}),
    ("layernorm_lstm", rnnkit.LayerNormLSTM, {}),
    ("mingru", rnnkit.MinGRU, {}),
    ("minlstm", rnnkit.MinLSTM, {}),
]
IDS = [f[0] for f in FAMILIES]


def _states(st):
    return st if isinstance(st, tuple) else (st,)


def _close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        w = w.detach().numpy() if isinstance(w, torch.Tensor) else w
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def _check(got, layer, *args):
    """onnxruntime's outputs ``got`` against ``layer(*args)`` within 1e-5. LayerNormLSTM's
    three layer norms amplify float32 rounding (rnnkit's own float32 kernels differ from a
    float64 run by up to ~1e-4 on some 50-step inputs), so there onnxruntime is compared with
    a float64 run of the reference loop: within 1e-5 + 1e-5 relative, or at most twice as far
    from it as rnnkit's own float32 kernel is."""
    with torch.no_grad():
        out, st = layer(*args)
        want = [out, *_states(st)]
        if not isinstance(layer, rnnkit.LayerNormLSTM):
            return _close(got, want)
        exact = copy.deepcopy(layer).double()
        exact.kernel = "reference"
        a64 = [a.double() if torch.is_tensor(a) and a.is_floating_point() else
               tuple(t.double() for t in a) if isinstance(a, tuple) else a for a in args]
        out64, st64 = exact(*a64)
    assert len(got) == len(want)
    for g, w, w64 in zip(got, want, [out64, *_states(st64)], strict=True):
        own = float((w.double() - w64).abs().max())
        err = float(np.abs(g - w64.numpy()).max())
        assert np.allclose(g, w64.numpy(), atol=1e-5, rtol=1e-5) or err <= 2 * own, (err, own)


def _layer(cls, kw, layers, bi):
    torch.manual_seed(layers * 10 + bi)
    layer = cls(5, 6, num_layers=layers, bidirectional=bi, **kw).eval()
    if cls is rnnkit.LayerNormLSTM:  # gains/shifts away from their 1/0 start
        with torch.no_grad():
            for n, p in layer.named_parameters():
                if n.split(".")[-1].startswith(("ln_", "bias")):
                    p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("name,cls,kw", FAMILIES, ids=IDS)
@pytest.mark.parametrize("layers,bi", [(1, False), (2, False), (1, True), (2, True)])
def test_whole_sequence_equals_pytorch(tmp_path, name, cls, kw, layers, bi):
    layer = _layer(cls, kw, layers, bi)
    ex = torch.randn(2, 4, 5)
    path_l = export_onnx(layer, (ex, None, torch.tensor([4, 3])), tmp_path / "len.onnx")
    path_n = export_onnx(layer, (ex,), tmp_path / "plain.onnx")
    n = layer.num_layers * layer.num_directions
    path_s = export_onnx(layer, (ex, tuple(torch.zeros(n, 2, 6) for _ in layer.state_names),
                                 torch.tensor([4, 3])), tmp_path / "state.onnx")
    g = torch.Generator().manual_seed(1)
    for B, T in ((5, 11), (1, 3)):
        x = torch.randn(B, T, 5, generator=g)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        got = run_onnx(path_l, x, lengths)
        _check(got, layer, x, None, lengths)
        assert float(np.abs(got[0][B - 1, lengths[-1]:]).max(initial=0)) == 0.0  # zeros past
        _check(run_onnx(path_n, x), layer, x)
        init = tuple(torch.randn(n, B, 6, generator=g) for _ in layer.state_names)
        _check(run_onnx(path_s, x, lengths, *init), layer, x,
               init[0] if len(init) == 1 else init, lengths)


@pytest.mark.parametrize("name,cls,kw", FAMILIES, ids=IDS)
@pytest.mark.parametrize("layers", [1, 2])
def test_step_graph_50_steps_equals_whole_sequence(tmp_path, name, cls, kw, layers):
    layer = _layer(cls, kw, layers, False)
    path = export_onnx_step(layer, tmp_path / "step.onnx")
    B, T = 3, 50
    x = torch.randn(B, T, 5)
    state = [np.zeros((layers, B, 6), np.float32) for _ in layer.state_names]
    ys = []
    for t in range(T):
        y, *state = run_onnx(path, x[:, t], *state)
        ys.append(y)
    _check([np.stack(ys, 1), *state], layer, x)


def test_model_built_of_layers(tmp_path):
    """A module holding rnnkit layers exports as a whole: embedding, GRU with lengths, head."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.rnn = rnnkit.GRU(8, 6, num_layers=2, bidirectional=True)
            self.head = torch.nn.Linear(12, 3)

        def forward(self, ids, lengths):
            out, h = self.rnn(self.emb(ids), lengths=lengths)
            return self.head(torch.cat([h[-2], h[-1]], -1)), out

    net = Net().eval()
    path = export_onnx(net, (torch.randint(0, 20, (2, 5)), torch.tensor([5, 2])),
                       tmp_path / "net.onnx", input_names=["ids", "lengths"],
                       output_names=["logits", "out"])
    ids, lengths = torch.randint(0, 20, (7, 13)), torch.randint(1, 14, (7,))
    with torch.no_grad():
        _close(run_onnx(path, ids=ids, lengths=lengths), list(net(ids, lengths)))


def test_unsupported_is_an_error_at_export(tmp_path):
    bi = rnnkit.LSTM(4, 3, bidirectional=True)
    with pytest.raises(ValueError, match="no streaming step"):
        export_onnx_step(bi, tmp_path / "s.onnx")
    with pytest.raises(ValueError, match="float32"):
        export_onnx(rnnkit.GRU(4, 3).double(), (torch.zeros(1, 2, 4, dtype=torch.float64),),
                    tmp_path / "d.onnx")
    with pytest.raises(ValueError, match=r"torch\.nn\.LSTM"):
        export_onnx(torch.nn.Sequential(torch.nn.LSTM(4, 3)), (torch.zeros(1, 2, 4),),
                    tmp_path / "t.onnx")
    with pytest.raises(ValueError, match="expects 4 input features"):
        export_onnx(rnnkit.GRU(4, 3), (torch.zeros(1, 2, 5),), tmp_path / "f.onnx")
    assert not list(tmp_path.iterdir())


def test_export_of_a_saved_classify_run(tmp_path, capsys):
    """`rnnkit train classify` on a tiny table, then `rnnkit export RUN --onnx`: onnxruntime's
    logits equal the loaded model's at other batch sizes and lengths (with padding)."""
    import argparse
    import csv
    import random

    from rnnkit.cli import main
    from rnnkit.export_cli import register
    from rnnkit.tasks import classify

    rng = random.Random(0)
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for _ in range(80):
            y = rng.random() < 0.5
            words = [rng.choice(["the", "film", "was", "a", "story"]) for _ in range(4)]
            w.writerow(["pos" if y else "neg", " ".join([*words, "good" if y else "bad"])])
    run = tmp_path / "run"
    assert main(["train", "classify", "--data", str(path), "--out", str(run), "--epochs", "1",
                 "--hidden", "8", "--embed", "8", "--quiet", "--batch-size", "16",
                 "--bidirectional", "--layers", "2", "--cell", "lstm"]) == 0
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(run), "--onnx", str(tmp_path / "clf.onnx")])
    assert args.func(args) == 0
    assert "max |diff|" in capsys.readouterr().out

    clf = classify.load(run)
    texts = ["the film was good", "bad", "a story the film was a story was bad good"]
    ids = [clf.encode(t) for t in texts]
    T = max(len(i) for i in ids)
    batch = torch.tensor([i + [0] * (T - len(i)) for i in ids])
    lengths = torch.tensor([len(i) for i in ids])
    with torch.no_grad():
        want = clf.model(batch, lengths)
    (got,) = run_onnx(tmp_path / "clf.onnx", ids=batch, lengths=lengths)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: __import__("rnnkit.tasks.lm.model", fromlist=["x"]).CharLM(30, "lstm", 12, 2, 8),
    lambda: __import__("rnnkit.tasks.lm.model", fromlist=["x"]).CharLM(30, "mingru", 12, 1, 8),
    lambda: __import__("rnnkit.tasks.longrange.model", fromlist=["x"]).LongRangeModel(
        "gru", 2, 8, 1),
    lambda: __import__("rnnkit.tasks.classify.model", fromlist=["x"]).Classifier(
        40, 3, cell="gru", embed=8, hidden=8, pool="attention"),
    lambda: __import__("rnnkit.tasks.classify.model", fromlist=["x"]).Classifier(
        40, 3, cell="layernorm_lstm", embed=8, hidden=8, pool="max", bidirectional=True),
], ids=["lm_lstm", "lm_mingru", "longrange_gru", "classify_attention", "classify_lnlstm_bi"])
def test_every_task_model(tmp_path, make):
    from rnnkit.export_cli import _example, _flat

    torch.manual_seed(0)
    model = make().eval()
    g = torch.Generator().manual_seed(0)
    args, ins, outs = _example(model, 2, 5, g)
    path = export_onnx(model, args, tmp_path / "m.onnx", input_names=ins, output_names=outs)
    args, _, _ = _example(model, 6, 17, g)
    with torch.no_grad():
        want = model(*args)
    _close(run_onnx(path, *_flat(args)), [want] if torch.is_tensor(want) else _flat(want))


def test_exported_in_eval_mode(tmp_path):
    """A model in training mode is exported as in eval mode (zoneout = its expectation) and
    left in training mode."""
    layer = rnnkit.LayerNormLSTM(4, 5, num_layers=2, dropout=0.3, zoneout=0.2)
    assert layer.training
    path = export_onnx(layer, (torch.zeros(2, 3, 4),), tmp_path / "z.onnx")
    assert layer.training
    x = torch.randn(3, 8, 4)
    layer.eval()
    _check(run_onnx(path, x), layer, x)
