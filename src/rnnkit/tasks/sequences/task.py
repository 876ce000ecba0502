"""The sequence classifier in the trainer's protocol (cross-entropy over shuffled padded
batches; validation loss, accuracy and macro-F1), its batched prediction (with ``window``:
windows cut from each recording, their probabilities averaged per recording), and the two
baselines every run prints."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.tasks.classify.metrics import classification_metrics
from rnnkit.tasks.sequences.data import Batches, Sequences, Split, collate, feature_stats
from rnnkit.tasks.sequences.model import SequenceClassifier


def windows(x: np.ndarray, window: int | None, stride: int | None) -> list[np.ndarray]:
    """``x`` ``(T, ...)`` cut into ``(window, ...)`` pieces every ``stride`` steps (a last
    piece ending at ``T`` is added when the stride skips the end); a recording no longer than
    ``window``, or ``window`` None, is one piece."""
    if window is None or len(x) <= window:
        return [x]
    stride = stride or window
    starts = list(range(0, len(x) - window + 1, stride))
    if starts[-1] != len(x) - window:
        starts.append(len(x) - window)
    return [x[s:s + window] for s in starts]


@torch.no_grad()
def predict_proba(model: SequenceClassifier, X: Sequence[np.ndarray], batch_size: int = 256,
                  window: int | None = None, stride: int | None = None) -> np.ndarray:
    """Class probabilities ``(N, C)`` for ``N`` sequences, batched by length (model in eval);
    with ``window``, the mean of each recording's window probabilities (a soft vote)."""
    was = model.training
    model.eval()
    pieces, owner = [], []
    for i, x in enumerate(X):
        w = windows(x, window, stride)
        pieces += w
        owner += [i] * len(w)
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    p = np.zeros((len(pieces), model.head.out_features))
    dev = model.head.weight.device
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        b = collate([pieces[i] for i in idx])
        logits = model(b["x"].to(dev), b["lengths"].to(dev))
        p[idx] = torch.softmax(logits.double(), -1).cpu().numpy()
    model.train(was)
    out = np.zeros((len(X), p.shape[1]))
    np.add.at(out, np.array(owner, dtype=np.int64), p)
    return out / np.bincount(owner, minlength=len(X))[:, None]


class SequenceTask:
    """What :func:`rnnkit.train.train` needs. Built from a :class:`Split`, the run's
    ``settings`` (batch size, seed, normalise, window/stride...) and the model's config; the
    normalisation statistics come from the training split only (or from the saved run)."""

    name = "sequences"
    unit = "sequences"
    loss_label = "cross-entropy (nats per sequence)"

    def __init__(self, split: Split, settings: dict[str, Any], model_cfg: dict[str, Any],
                 labels: list[str] | None = None,
                 normalisation: dict[str, list[float]] | None = None) -> None:
        self.split, self.settings, self.model_cfg = split, settings, model_cfg
        counts = Counter(split.train.y)
        if len(counts) < 2:
            raise ValueError(f"{settings['data']}: the training split has a single class "
                             f"({next(iter(counts), None)!r}); a classifier needs two or more")
        self.labels = labels or sorted(counts)
        for name, part in (("validation", split.valid), ("test", split.test)):
            unseen = sorted(set(part.y) - set(self.labels)) if part is not None else []
            if unseen:
                raise ValueError(f"{name} label(s) {', '.join(map(repr, unseen))} do not occur "
                                 f"in the training split (labels: "
                                 f"{', '.join(map(repr, self.labels))})")
        self.counts = {c: counts[c] for c in self.labels}
        self.step_shape = split.train.step_shape
        if normalisation is None:
            C = self.step_shape[-1]
            mean, std = (feature_stats(split.train.X) if settings.get("normalise", True)
                         else (np.zeros(C), np.ones(C)))
            normalisation = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        self.normalisation = normalisation
        self.window, self.stride = settings.get("window"), settings.get("stride")
        X, y = [], []
        for x, lab in zip(split.train.X, split.train.y, strict=True):
            w = windows(x, self.window, self.stride)
            X += w
            y += [self.labels.index(lab)] * len(w)
        self.train_X, self.train_y = X, y
        self.batch_size, self.seed = settings["batch_size"], settings["seed"]
        self.steps_per_epoch = math.ceil(len(X) / self.batch_size)

    def build_model(self) -> SequenceClassifier:
        m = SequenceClassifier(self.step_shape, len(self.labels), **self.model_cfg)
        m.set_normalisation(self.normalisation["mean"], self.normalisation["std"])
        return m

    def batches(self, rank: int, world_size: int) -> Batches:
        return Batches(self.train_X, self.train_y, self.batch_size, self.seed, rank, world_size)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], carry: Any
             ) -> tuple[Tensor, None, int]:
        logits = model(batch["x"], batch["lengths"])
        return F.cross_entropy(logits, batch["y"]), None, len(batch["y"])

    def metrics(self, model: SequenceClassifier, part: Sequences) -> dict[str, Any]:
        probs = predict_proba(model, part.X, window=self.window, stride=self.stride)
        y = np.array([self.labels.index(v) for v in part.y])
        m = classification_metrics(y, probs, self.labels)
        m["loss"] = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean())
        return m

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        m = self.metrics(model, self.split.valid)
        return {"loss": m["loss"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def config(self) -> dict[str, Any]:
        sp = self.split
        return {"task": self.name, "labels": self.labels, "model": self.model_cfg,
                "step_shape": list(self.step_shape), "normalisation": self.normalisation,
                "settings": self.settings,
                "data": {"train": self.counts, "valid": len(sp.valid),
                         "test": len(sp.test) if sp.test is not None else 0}}


# -- baselines ----------------------------------------------------------------------------------
def _pooled(X: Sequence[np.ndarray], how: str, mean: np.ndarray, std: np.ndarray
            ) -> np.ndarray:
    """One vector per sequence from normalised steps: ``mean`` over time, or the ``last``
    step (frames flattened)."""
    rows = [((x - mean) / std).mean(0) if how == "mean" else (x[-1] - mean) / std for x in X]
    return np.stack([r.reshape(-1) for r in rows])


def baselines(task: SequenceTask, part: Sequences) -> dict[str, float]:
    """Accuracy on ``part`` of: the training split's majority class; logistic regression
    (scikit-learn) on each sequence's mean-pooled features (no order); and on its last step
    alone (no past). Whatever the network gains over these is what the recurrence adds."""
    from sklearn.linear_model import LogisticRegression

    tr = task.split.train
    ytr = np.array([task.labels.index(v) for v in tr.y])
    y = np.array([task.labels.index(v) for v in part.y])
    major = int(np.bincount(ytr).argmax())
    out = {"majority class": float((y == major).mean())}
    mean = np.asarray(task.normalisation["mean"])
    std = np.asarray(task.normalisation["std"])
    for how, label in (("mean", "logistic regression, mean-pooled features"),
                       ("last", "logistic regression, last step only")):
        clf = LogisticRegression(max_iter=2000)
        clf.fit(_pooled(tr.X, how, mean, std), ytr)
        out[label] = float((clf.predict(_pooled(part.X, how, mean, std)) == y).mean())
    return out
