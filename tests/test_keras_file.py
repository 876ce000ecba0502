"""rnnkit.from_keras reads Keras 3 ``.keras`` files. The files are written here by hand in the
Keras 3 layout (a zip of config.json, metadata.json and model.weights.h5 with
``layers/<name>/[cell/]vars/<i>``) with h5py, and the outputs are checked against a NumPy
transcription of Keras' layers (keras/src/layers/rnn/*.py, the backend's masked ``rnn`` loop).
Files that Keras itself wrote, with its outputs, are committed under ``tests/keras_files`` and
checked too; with Keras installed, the same models are also built, saved and run here."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit

h5py = pytest.importorskip("h5py")


# -- writing .keras files by hand ---------------------------------------------------------------
def _layer(cls, **config):
    return {"module": "keras.layers", "class_name": cls, "config": config,
            "registered_name": None}


def write_keras(path, layers, weights, functional=False):
    """``layers``: layer configs; ``weights``: {h5 group path: [arrays]}."""
    if functional:
        prev = None
        for lc in layers:
            lc["inbound_nodes"] = [] if prev is None else [{"args": [{
                "class_name": "__keras_tensor__",
                "config": {"shape": [None], "dtype": "float32",
                           "keras_history": [prev, 0, 0]}}], "kwargs": {}}]
            prev = lc["config"]["name"]
    cfg = {"module": "keras", "class_name": "Functional" if functional else "Sequential",
           "config": {"name": "model", "trainable": True, "layers": layers},
           "registered_name": None}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("vars")
        for group, arrays in weights.items():
            g = f.create_group(f"{group}/vars")
            for i, a in enumerate(arrays):
                g.create_dataset(str(i), data=np.asarray(a, np.float32))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        z.writestr("config.json", json.dumps(cfg))
        z.writestr("model.weights.h5", buf.getvalue())
    return path


def rnn_conf(cls, name, units, **kw):
    base = {"name": name, "units": units, "return_sequences": False, "return_state": False,
            "go_backwards": False, "stateful": False, "use_bias": True,
            "activation": "tanh", "dropout": 0.0, "recurrent_dropout": 0.0}
    if cls != "SimpleRNN":
        base["recurrent_activation"] = "sigmoid"
    if cls == "GRU":
        base["reset_after"] = True
    base.update(kw)
    return _layer(cls, **base)


def rnn_weights(cls, I, H, rng, reset_after=True):
    G = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[cls]
    b = (2, G * H) if cls == "GRU" and reset_after else (G * H,)
    return [rng.normal(size=(I, G * H)) * 0.5, rng.normal(size=(H, G * H)) * 0.5,
            rng.normal(size=b) * 0.5]


# -- Keras' layers in NumPy (float64) -------------------------------------------------------------
def sig(a):
    return 1 / (1 + np.exp(-a))


def np_rnn(cls, w, x, mask=None, reset_after=True, go_backwards=False, return_sequences=False,
           act="tanh"):
    """Keras' recurrence for one layer: masked steps keep the state and repeat the last
    output. Returns (output, [states])."""
    K, R, b = w
    B, T, _ = x.shape
    H = R.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    if mask is None:
        mask = np.ones((B, T), bool)
    if go_backwards:
        x, mask = x[:, ::-1], mask[:, ::-1]
    outs, y = [], np.zeros((B, H))
    for t in range(T):
        xt = x[:, t]
        if cls == "SimpleRNN":
            a = xt @ K + b + h @ R
            hn, cn = (np.tanh(a) if act == "tanh" else np.maximum(a, 0)), c
        elif cls == "LSTM":
            i, f, cc, o = np.split(xt @ K + h @ R + b, 4, -1)
            cn = sig(f) * c + sig(i) * np.tanh(cc)
            hn = sig(o) * np.tanh(cn)
        else:
            bi, br = (b[0], b[1]) if reset_after else (b, 0)
            xz, xr, xh = np.split(xt @ K + bi, 3, -1)
            inner = h @ R + br if reset_after else h @ R[:, :2 * H]
            z, r = sig(xz + inner[:, :H]), sig(xr + inner[:, H:2 * H])
            hh = np.tanh(xh + (r * inner[:, 2 * H:] if reset_after else (r * h) @ R[:, 2 * H:]))
            hn, cn = z * h + (1 - z) * hh, c
        m = mask[:, t, None]
        h, c = np.where(m, hn, h), np.where(m, cn, c)
        y = np.where(m, hn, y)
        outs.append(y)
    seq = np.stack(outs, 1)
    states = [h, c] if cls == "LSTM" else [h]
    return (seq if return_sequences else y), states


def dense(x, w, act=None):
    y = x @ w[0] + w[1]
    if act == "softmax":
        e = np.exp(y - y.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return {"relu": lambda v: np.maximum(v, 0), "sigmoid": sig}.get(act, lambda v: v)(y)


def close(ours, ref, atol=1e-5):
    np.testing.assert_allclose(ours.detach().numpy(), ref, atol=atol, rtol=0)


# -- the models of the issue ---------------------------------------------------------------------
def test_the_notes_two_layer_simple_rnn(tmp_path):
    """Input((20, 6)) → SimpleRNN(16, return_sequences=True) → SimpleRNN(8) → Dense(1)."""
    rng = np.random.default_rng(0)
    w1, w2 = rnn_weights("SimpleRNN", 6, 16, rng), rnn_weights("SimpleRNN", 16, 8, rng)
    wd = [rng.normal(size=(8, 1)), rng.normal(size=(1,))]
    path = write_keras(tmp_path / "notes.keras", [
        _layer("InputLayer", name="input_layer", batch_shape=[None, 20, 6]),
        rnn_conf("SimpleRNN", "rnn_a", 16, return_sequences=True),   # weights are stored by
        rnn_conf("SimpleRNN", "rnn_b", 8),                           # class name, not by name
        _layer("Dense", name="out", units=1, activation="linear", use_bias=True),
    ], {"layers/simple_rnn/cell": w1, "layers/simple_rnn_1/cell": w2, "layers/dense": wd})
    model = rnnkit.from_keras(path)
    x = rng.normal(size=(4, 20, 6))
    y1, _ = np_rnn("SimpleRNN", w1, x, return_sequences=True)
    y2, _ = np_rnn("SimpleRNN", w2, y1)
    close(model(torch.tensor(x, dtype=torch.float32)), dense(y2, wd))
    assert [k for _, _, k in model.keras_layers] == [0, 368, 200, 9]   # Keras' summary: 577
    table = rnnkit.summary(model, (20, 6), print_fn=None)
    assert "rnn_b (SimpleRNN)" in table and "Total params: 601 (Keras counts 577)" in table
    row = next(r for r in table.splitlines() if "rnn_a" in r)
    assert row.split()[-2:] == ["384", "368"]      # torch.nn's count, then Keras'


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_embedding_bidirectional_lstm_classifier_with_mask(tmp_path, merge):
    """Embedding(mask_zero=True) → Bidirectional(LSTM(6)) → Dense(3, softmax), padded texts."""
    rng = np.random.default_rng(1)
    V, E, H = 12, 5, 6
    emb = rng.normal(size=(V, E))
    fw, bw = rnn_weights("LSTM", E, H, rng), rnn_weights("LSTM", E, H, rng)
    D = 2 * H if merge == "concat" else H
    wd = [rng.normal(size=(D, 3)), rng.normal(size=(3,))]
    lstm = rnn_conf("LSTM", "forward_lstm", H)
    path = write_keras(tmp_path / "clf.keras", [
        _layer("InputLayer", name="ids", batch_shape=[None, None]),
        _layer("Embedding", name="embedding", input_dim=V, output_dim=E, mask_zero=True),
        _layer("Bidirectional", name="bidirectional", merge_mode=merge, layer=lstm,
               backward_layer=rnn_conf("LSTM", "backward_lstm", H, go_backwards=True)),
        _layer("Dropout", name="dropout", rate=0.5),
        _layer("Dense", name="dense", units=3, activation="softmax", use_bias=True),
    ], {"layers/embedding": [emb], "layers/bidirectional/forward_layer/cell": fw,
        "layers/bidirectional/backward_layer/cell": bw, "layers/dense": wd})
    model = rnnkit.from_keras(path)
    ids = rng.integers(1, V, size=(5, 9))
    lengths = np.array([9, 1, 4, 7, 2])
    ids[np.arange(9)[None] >= lengths[:, None]] = 0
    x, mask = emb[ids], ids != 0
    yf, _ = np_rnn("LSTM", fw, x, mask)
    yb, _ = np_rnn("LSTM", bw, x, mask, go_backwards=True)
    v = np.concatenate([yf, yb], -1) if merge == "concat" else yf + yb
    close(model(torch.tensor(ids)), dense(v, wd, "softmax"))
    n_lstm = 4 * (E + H + 1) * H
    assert [k for _, _, k in model.keras_layers] == [0, V * E, 2 * n_lstm, 0, D * 3 + 3]


def test_stacked_gru_reset_before(tmp_path):
    """GRU(8, return_sequences=True, reset_after=False) → GRU(4, reset_after=False) → Dense."""
    rng = np.random.default_rng(2)
    w1 = rnn_weights("GRU", 3, 8, rng, reset_after=False)
    w2 = rnn_weights("GRU", 8, 4, rng, reset_after=False)
    wd = [rng.normal(size=(4, 2)), rng.normal(size=(2,))]
    path = write_keras(tmp_path / "gru.keras", [
        _layer("InputLayer", name="input_layer", batch_shape=[None, 10, 3]),
        rnn_conf("GRU", "gru", 8, return_sequences=True, reset_after=False),
        rnn_conf("GRU", "gru_1", 4, reset_after=False),
        _layer("Dense", name="dense", units=2, activation="relu", use_bias=True),
    ], {"layers/gru/cell": w1, "layers/gru_1/cell": w2, "layers/dense": wd})
    model = rnnkit.from_keras(path)
    x = rng.normal(size=(3, 10, 3))
    y1, _ = np_rnn("GRU", w1, x, reset_after=False, return_sequences=True)
    y2, _ = np_rnn("GRU", w2, y1, reset_after=False)
    close(model(torch.tensor(x, dtype=torch.float32)), dense(y2, wd, "relu"))
    assert model.keras_layers[1][2] == 3 * (3 + 8 + 1) * 8


def test_masking_gru_return_state_functional(tmp_path):
    """A Functional chain: Input → Masking → GRU(5, return_sequences, return_state)."""
    rng = np.random.default_rng(3)
    w = rnn_weights("GRU", 4, 5, rng)
    path = write_keras(tmp_path / "state.keras", [
        _layer("InputLayer", name="x", batch_shape=[None, None, 4]),
        _layer("Masking", name="masking", mask_value=0.0),
        rnn_conf("GRU", "gru", 5, return_sequences=True, return_state=True),
    ], {"layers/gru/cell": w}, functional=True)
    model = rnnkit.from_keras(path)
    x = rng.normal(size=(3, 7, 4))
    lengths = np.array([7, 3, 5])
    x[np.arange(7)[None] >= lengths[:, None]] = 0.0
    seq, (h,) = np_rnn("GRU", w, x, x.any(-1), return_sequences=True)
    out, h_ours = model(torch.tensor(x, dtype=torch.float32))
    close(h_ours, h)
    valid = np.arange(7)[None] < lengths[:, None]
    np.testing.assert_allclose(out.detach().numpy()[valid], seq[valid], atol=1e-5)
    assert float(out.detach()[~torch.tensor(valid)].abs().max()) == 0.0  # zero when masked


def test_go_backwards(tmp_path):
    rng = np.random.default_rng(4)
    w = rnn_weights("LSTM", 3, 4, rng)
    path = write_keras(tmp_path / "back.keras", [
        rnn_conf("LSTM", "lstm", 4, go_backwards=True, return_sequences=True)],
        {"layers/lstm/cell": w})
    x = rng.normal(size=(2, 6, 3))
    ref, _ = np_rnn("LSTM", w, x, go_backwards=True, return_sequences=True)
    close(rnnkit.from_keras(path)(torch.tensor(x, dtype=torch.float32)), ref)


def test_clear_errors(tmp_path):
    rng = np.random.default_rng(5)
    path = write_keras(tmp_path / "conv.keras", [
        _layer("InputLayer", name="input_layer", batch_shape=[None, 10, 3]),
        _layer("Conv1D", name="conv1d", filters=4, kernel_size=3),
        rnn_conf("GRU", "gru", 4),
        _layer("Attention", name="attn")], {})
    with pytest.raises(ValueError, match=r"conv1d \(Conv1D\), attn \(Attention\)"):
        rnnkit.from_keras(path)
    path = write_keras(tmp_path / "gap.keras", [
        _layer("Masking", name="masking", mask_value=0.0), rnn_conf("GRU", "gru", 4)],
        {"layers/gru/cell": rnn_weights("GRU", 3, 4, rng)})
    x = torch.ones(1, 5, 3)
    x[0, 1] = 0.0                                    # a masked step before unmasked ones
    with pytest.raises(ValueError, match="gaps"):
        rnnkit.from_keras(path)(x)
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a Keras 3 \.keras archive"):
        rnnkit.from_keras(tmp_path / "plain.zip")


KERAS_FILES = Path(__file__).parent / "keras_files"


@pytest.mark.parametrize("name", ["notes_simple_rnn", "text_bilstm", "stacked_gru_reset_before"])
def test_files_written_by_real_keras(name):
    """Files saved by Keras itself (tests/keras_files/make.py, Keras 3 on the torch backend) and
    Keras' own outputs on a stored input: rnnkit reads each file and gives Keras' output."""
    ref = np.load(KERAS_FILES / f"{name}.npz")
    assert str(ref["keras_version"]).startswith("3.")
    model = rnnkit.from_keras(KERAS_FILES / f"{name}.keras")
    close(model(torch.tensor(ref["x"])), ref["y"])


def test_with_real_keras(tmp_path):
    """The issue's three models built, saved and run by Keras itself (where installed)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")  # the engine that is installed
    keras = pytest.importorskip("keras", reason="Keras is not installed (pip install keras): "
                                "the files Keras wrote under tests/keras_files stand in for it")
    sys.path.insert(0, str(KERAS_FILES))
    try:
        from make import models
    finally:
        sys.path.remove(str(KERAS_FILES))
    keras.utils.set_random_seed(1)
    for name, (m, x) in models().items():
        path = tmp_path / f"{name}.keras"
        m.save(path)
        close(rnnkit.from_keras(path)(torch.tensor(x)), m.predict(x, verbose=0))
