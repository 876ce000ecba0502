"""A trained sequence classifier from Python::

    model = rnnkit.load("runs/motions")            # or rnnkit.tasks.sequences.load
    model.predict([x])                              # x: (T, F) or frames (T, H, W, C)
    session = model.stream()                        # unidirectional models
    for v in sensor:                                # one measurement vector (F,) at a time
        p = session.feed(v)                         # {'walking': 0.91, ...}

Streaming carries the recurrent state and the running pooling state (the text classifier's
``run_chunk`` and poolings), so after every step the probabilities equal the one-shot
prediction of the prefix seen so far, at a constant cost per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.classify.api import run_chunk
from rnnkit.tasks.classify.metrics import classification_metrics
from rnnkit.tasks.classify.model import State
from rnnkit.tasks.common import run_config
from rnnkit.tasks.sequences.model import SequenceClassifier
from rnnkit.tasks.sequences.task import predict_proba


class SequenceModel:
    """A trained model with its labels, normalisation (inside the model) and windowing."""

    def __init__(self, model: SequenceClassifier, labels: list[str],
                 config: dict[str, Any] | None = None) -> None:
        self.model, self.labels, self.config = model.eval(), labels, config or {}
        s = self.config.get("settings", {})
        self.window, self.stride = s.get("window"), s.get("stride")

    def _check(self, X: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, x in enumerate(X):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim == 1:
                x = x[:, None]
            if x.shape[1:] == self.model.step_shape[:-1]:  # grey frames (T, H, W)
                x = x[..., None]
            if tuple(x.shape[1:]) != self.model.step_shape or len(x) == 0:
                raise ValueError(f"sequence {i}: expected shape (T, "
                                 f"{', '.join(map(str, self.model.step_shape))}) with T >= 1, "
                                 f"got {x.shape}")
            if not np.isfinite(x).all():
                t, *f = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
                raise ValueError(f"sequence {i}: NaN or infinite value at time step {t}, "
                                 f"feature {f[0] if len(f) == 1 else tuple(f)}")
            out.append(x)
        return out

    def predict_proba(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``(N, C)`` for ``N`` sequences ``(T_i, *step)``; columns in the order
        of ``labels``."""
        return predict_proba(self.model, self._check(X), window=self.window,
                             stride=self.stride)

    def predict(self, X: Sequence[np.ndarray]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(X).argmax(1)]

    def metrics(self, X: Sequence[np.ndarray], y: Sequence[str]) -> dict[str, Any]:
        unseen = sorted(set(y) - set(self.labels))
        if unseen:
            raise ValueError(f"label(s) {', '.join(map(repr, unseen))} never seen in training; "
                             f"the model knows: {', '.join(map(repr, self.labels))}")
        idx = np.array([self.labels.index(v) for v in y])
        return classification_metrics(idx, self.predict_proba(X), self.labels)

    def early(self, X: Sequence[np.ndarray], y: Sequence[str],
              fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
              ) -> dict[float, float]:
        """Accuracy when only the first ``fraction`` of each sequence is seen (at least one
        step): ``{fraction: accuracy}``."""
        X = self._check(X)
        idx = np.array([self.labels.index(v) for v in y])
        out = {}
        for f in fractions:
            pre = [x[:max(1, round(f * len(x)))] for x in X]
            p = predict_proba(self.model, pre)
            out[float(f)] = float((p.argmax(1) == idx).mean())
        return out

    def stream(self) -> StreamSession:
        """Running predictions, one step (or a few) at a time (unidirectional models)."""
        return StreamSession(self)


class StreamSession:
    """``feed(x)``: ``x`` one step ``(*step)`` or several ``(t, *step)``; returns
    ``{label: probability}`` given everything fed so far, equal to the one-shot prediction of
    that prefix (no windowing is applied to a stream)."""

    def __init__(self, sm: SequenceModel) -> None:
        self.sm = sm
        self.pool = sm.model.stream_pool("sequence")
        self.state: State = None
        self.steps = 0

    @torch.no_grad()
    def feed(self, x: np.ndarray | Tensor | Sequence[float]) -> dict[str, float]:
        m = self.sm.model
        x = np.asarray(x, dtype=np.float32)
        if x.shape == m.step_shape or x.shape == m.step_shape[:-1]:
            x = x[None]
        (x,) = self.sm._check([x])
        out, self.state = run_chunk(m.rnn, m.features(torch.from_numpy(x)[None]), self.state)
        self.pool = m.pool_update(self.pool, out)
        self.steps += len(x)
        p = torch.softmax(m.head(m.pool_read(self.pool, self.state)).double(), -1)[0]
        return dict(zip(self.sm.labels, p.tolist(), strict=True))


def load(run_dir: str | Path) -> SequenceModel:
    """A trained sequence classifier from a run folder (its ``best/``) or a checkpoint."""
    src, cfg = run_config(run_dir, "sequences", "a sequence classifier")
    model = ckpt.build_checked(
        lambda: SequenceClassifier(cfg["step_shape"], len(cfg["labels"]), **cfg["model"]), src)
    return SequenceModel(model, cfg["labels"], cfg)
