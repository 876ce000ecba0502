"""Keras weights in and out, checked against a NumPy transcription of Keras' cell code
(keras/src/layers/rnn/{simple_rnn,lstm,gru}.py: kernel (I, G*H), gate order z, r, h for GRU)."""

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.keras import get_keras_weights, load_keras_weights

I, H, B, T = 5, 4, 3, 6


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def keras_run(kind, weights, x, reset_after=True):
    """Keras' recurrence, written from its source, for one direction."""
    kernel, rk = weights[0], weights[1]
    bias = weights[2]
    h = np.zeros((x.shape[0], H))
    c = np.zeros((x.shape[0], H))
    outs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        if kind == "rnn":
            h = np.tanh(xt @ kernel + bias + h @ rk)
        elif kind == "lstm":
            z = xt @ kernel + h @ rk + bias
            i, f, cc, o = np.split(z, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
            h = sigmoid(o) * np.tanh(c)
        else:
            in_b, rec_b = (bias[0], bias[1]) if reset_after else (bias, None)
            x_z, x_r, x_h = np.split(xt @ kernel + in_b, 3, axis=-1)
            if reset_after:
                inner = h @ rk + rec_b
            else:
                inner = h @ rk[:, : 2 * H]
            z = sigmoid(x_z + inner[:, :H])
            r = sigmoid(x_r + inner[:, H:2 * H])
            if reset_after:
                rh = r * inner[:, 2 * H:]
            else:
                rh = (r * h) @ rk[:, 2 * H:]
            hh = np.tanh(x_h + rh)
            h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, 1)


def random_keras_weights(kind, reset_after, rng, bidirectional=False):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    ws = []
    for _ in range(2 if bidirectional else 1):
        ws += [rng.normal(size=(I, G * H)), rng.normal(size=(H, G * H)) * 0.5]
        shape = (2, G * H) if kind == "gru" and reset_after else (G * H,)
        ws.append(rng.normal(size=shape))
    return [w.astype(np.float32) for w in ws]


LAYERS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}


@pytest.mark.parametrize("kind,reset_after", [("rnn", True), ("lstm", True), ("gru", True),
                                              ("gru", False)])
def test_keras_weights_give_keras_outputs(kind, reset_after):
    rng = np.random.default_rng(0)
    ws = random_keras_weights(kind, reset_after, rng)
    kw = {"reset_after": reset_after} if kind == "gru" else {}
    layer = load_keras_weights(LAYERS[kind](I, H, **kw), ws)
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    ours = layer(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(ours, keras_run(kind, ws, x.astype(np.float64), reset_after),
                               atol=1e-5)
    back = get_keras_weights(layer)
    for a, b in zip(back, ws, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bidirectional_matches_keras_bidirectional_wrapper():
    rng = np.random.default_rng(1)
    ws = random_keras_weights("gru", True, rng, bidirectional=True)
    layer = load_keras_weights(rnnkit.GRU(I, H, bidirectional=True), ws)
    x = rng.normal(size=(B, T, I))
    fwd = keras_run("gru", ws[:3], x)
    bwd = keras_run("gru", ws[3:], x[:, ::-1])[:, ::-1]  # go_backwards, re-reversed by Keras
    ours = layer(torch.from_numpy(x).float())[0].detach().numpy()
    np.testing.assert_allclose(ours, np.concatenate([fwd, bwd], -1), atol=1e-5)


def test_export_sums_torch_biases():
    layer = rnnkit.LSTM(I, H)
    ws = get_keras_weights(layer)
    x = np.random.default_rng(2).normal(size=(B, T, I))
    ours = layer(torch.from_numpy(x).float())[0].detach().numpy()
    np.testing.assert_allclose(ours, keras_run("lstm", ws, x), atol=1e-5)
    assert ws[2].shape == (4 * H,)  # one bias, as Keras has


def test_wrong_shapes_are_named():
    layer = rnnkit.LSTM(I, H)
    with pytest.raises(ValueError, match=r"expected 3 arrays.*got 2"):
        load_keras_weights(layer, [np.zeros((I, 4 * H)), np.zeros((H, 4 * H))])
    with pytest.raises(ValueError, match=r"expected kernel \(5, 16\).*got \(5, 12\)"):
        load_keras_weights(layer, [np.zeros((I, 12)), np.zeros((H, 16)), np.zeros(16)])


@pytest.mark.parametrize("kind,reset_after", [("rnn", True), ("lstm", True), ("gru", True),
                                              ("gru", False)])
def test_weights_move_both_ways_with_real_keras(kind, reset_after):
    """Keras itself (torch backend): its layer's weights give its outputs in rnnkit, and rnnkit's
    own weights, exported, give rnnkit's outputs in Keras."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="Keras is not installed (pip install keras)")
    cls = {"rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
    kw = {"reset_after": reset_after} if kind == "gru" else {}
    keras.utils.set_random_seed(3)
    k_layer = cls[kind](H, return_sequences=True, **kw)
    x = np.random.default_rng(4).normal(size=(B, T, I)).astype(np.float32)
    k_out = keras.ops.convert_to_numpy(k_layer(x))
    layer = load_keras_weights(LAYERS[kind](I, H, **kw), k_layer.get_weights())
    np.testing.assert_allclose(layer(torch.from_numpy(x))[0].detach().numpy(), k_out, atol=1e-5)
    ours = LAYERS[kind](I, H, **kw)                 # torch.nn-initialised, two biases per gate
    k_layer.set_weights(get_keras_weights(ours))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(k_layer(x)),
                               ours(torch.from_numpy(x))[0].detach().numpy(), atol=1e-5)
