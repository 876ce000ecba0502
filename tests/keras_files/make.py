"""Write the `.keras` files in this folder with real Keras (run once; the files are committed).

    python -m venv /tmp/kv && /tmp/kv/bin/pip install torch==2.13.0 keras h5py
    KERAS_BACKEND=torch /tmp/kv/bin/python tests/keras_files/make.py

Each model of the Keras-interop issue is built with Keras' default (random) initialisers under a
fixed seed, saved with ``model.save`` and run by Keras on an input that is stored beside it:
``NAME.keras`` holds the model, ``NAME.npz`` the input ``x``, Keras' output ``y`` and the Keras
version that wrote them. tests/test_keras_file.py checks rnnkit's outputs against ``y``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np


def models() -> dict[str, tuple[keras.Model, np.ndarray]]:
    """The issue's three models, each with an input other than any used to build it."""
    L = keras.layers
    rng = np.random.default_rng(6)
    return {
        # the notes' own model: Input((20, 6)) → SimpleRNN(16, seq) → SimpleRNN(8) → Dense(1)
        "notes_simple_rnn": (keras.Sequential([
            keras.Input((20, 6)), L.SimpleRNN(16, return_sequences=True), L.SimpleRNN(8),
            L.Dense(1)]), rng.normal(size=(3, 20, 6)).astype(np.float32)),
        # a text classifier: Embedding(mask_zero) → Bidirectional(LSTM) → Dense(softmax)
        "text_bilstm": (keras.Sequential([
            keras.Input((None,), dtype="int32"), L.Embedding(30, 8, mask_zero=True),
            L.Bidirectional(L.LSTM(6)), L.Dense(2, activation="softmax")]),
            np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0]], dtype=np.int32)),
        # a stacked GRU in the original (reset-before) form
        "stacked_gru_reset_before": (keras.Sequential([
            keras.Input((10, 3)), L.GRU(8, return_sequences=True, reset_after=False),
            L.GRU(4, reset_after=False), L.Dense(1)]),
            rng.normal(size=(2, 10, 3)).astype(np.float32)),
    }


def main() -> None:
    keras.utils.set_random_seed(0)
    here = Path(__file__).parent
    for name, (model, x) in models().items():
        model.save(here / f"{name}.keras")
        y = model.predict(x, verbose=0)
        np.savez(here / f"{name}.npz", x=x, y=y, keras_version=keras.__version__,
                 backend=keras.backend.backend())
        print(f"{name}: x {x.shape} -> y {y.shape}")


if __name__ == "__main__":
    main()
