"""The classifier in the trainer's protocol: cross-entropy (class-weighted when asked) over
length-bucketed batches; validation loss, accuracy and macro-F1."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.data import Tokenizer, build_tokenizer, tokenizer_from_json
from rnnkit.tasks.classify.data import BucketStream, Split, collate, make_split, truncate
from rnnkit.tasks.classify.metrics import classification_metrics
from rnnkit.tasks.classify.model import Classifier
from rnnkit.tasks.common import resumed_split


@torch.no_grad()
def predict_proba_ids(model: Classifier, seqs: Sequence[list[int]], batch_size: int = 256
                      ) -> np.ndarray:
    """Class probabilities ``(N, C)`` for token-id lists, batched by length (model in eval)."""
    was = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = np.zeros((len(seqs), model.head.out_features), dtype=np.float64)
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        b = collate([seqs[i] for i in idx])
        out[idx] = torch.softmax(model(b["ids"], b["lengths"]).double(), -1).numpy()
    model.train(was)
    return out


class ClassifyTask:
    """What :func:`rnnkit.train.train` needs: model, batches, loss, evaluation, config.

    Built from a :class:`~rnnkit.tasks.classify.data.Split` and the run's ``settings``
    (tokenizer kind and size, ``max_len``/``truncate``, class weights, batch size, seed), with
    the saved tokenizer ``tok`` when a run resumes (else one is trained on the training
    texts)."""

    name = "classify"
    unit = "texts"
    loss_label = "cross-entropy (nats per text)"

    def __init__(self, split: Split, settings: dict[str, Any], model_cfg: dict[str, Any],
                 tok: Tokenizer | None = None) -> None:
        s = self.settings = settings
        train_t, train_y = split.train
        counts = Counter(train_y)
        if len(counts) < 2:
            raise ValueError(f"{s['data']}: the training set has a single class "
                             f"({next(iter(counts), None)!r}, {len(train_y)} texts); a "
                             f"classifier needs at least two (check --label-column)")
        labels = self.labels = sorted(counts)
        for name, part in (("validation", split.valid), ("test", split.test)):
            unseen = sorted(set(part[1]) - set(labels)) if part else []
            if unseen:
                raise ValueError(f"{name} label(s) {', '.join(map(repr, unseen))} do not "
                                 f"occur in the training set (labels: "
                                 f"{', '.join(map(repr, labels))})")
        self.counts = {c: counts[c] for c in labels}
        self.majority = max(counts.values()) / len(train_y)
        cw = s.get("class_weights", "auto")
        use_w = cw == "on" or (cw == "auto" and self.majority > 0.8)
        self.class_weights = ([len(train_y) / (len(labels) * counts[c]) for c in labels]
                              if use_w else None)
        self.weights = None if self.class_weights is None else torch.tensor(self.class_weights)
        self.tok = tok or build_tokenizer(s["tokenizer"], train_t, vocab_size=s.get("vocab_size"),
                                          min_freq=s.get("min_freq", 1))
        if self.tok.vocab_size < 3:
            raise ValueError(f"the {self.tok.kind} vocabulary has {self.tok.vocab_size} entries "
                             f"(padding and <unk> only): --min-freq {s.get('min_freq')} cut "
                             f"every symbol; lower it")
        self.split, self.model_cfg = split, model_cfg
        self.batch_size, self.seed = s["batch_size"], s["seed"]
        enc = [self.encode(t) for t in train_t]
        self.train = (enc, [labels.index(v) for v in train_y])
        self.valid = ([self.encode(t) for t in split.valid[0]],
                      [labels.index(v) for v in split.valid[1]])
        self.steps_per_epoch = math.ceil(len(enc) / self.batch_size)

    def encode(self, text: str) -> list[int]:
        return truncate(self.tok.encode(text), self.settings.get("max_len"),
                        self.settings.get("truncate", "both"))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClassifyTask:
        """The task of a saved run: the same split (remade from its settings and checked),
        the run's own tokenizer."""
        s = config["settings"]
        split = resumed_split(make_split(**split_args(s)), s, "rows", "rows")
        return cls(split, s, config["model"], tokenizer_from_json(config["tokenizer"]))

    def build_model(self) -> Classifier:
        return Classifier(self.tok.vocab_size, len(self.labels), **self.model_cfg)

    def batches(self, rank: int, world_size: int) -> BucketStream:
        return BucketStream(*self.train, self.batch_size, self.seed, rank, world_size)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], carry: Any
             ) -> tuple[Tensor, None, int]:
        logits = model(batch["ids"], batch["lengths"])
        w = None if self.weights is None else self.weights.to(logits.device)
        return F.cross_entropy(logits, batch["y"], weight=w), None, len(batch["y"])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        seqs, y = self.valid
        probs = predict_proba_ids(model, seqs)
        y = np.asarray(y)
        m = classification_metrics(y, probs, self.labels)
        nll = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()
        return {"loss": float(nll), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def config(self) -> dict[str, Any]:
        sp = self.split
        return {"task": self.name, "labels": self.labels, "model": self.model_cfg,
                "tokenizer": self.tok.to_json(), "settings": self.settings,
                "max_len": self.settings.get("max_len"),
                "truncate": self.settings.get("truncate", "both"),
                "data": {"train": self.counts, "valid": len(sp.valid[1]),
                         "test": len(sp.test[1]) if sp.test else 0,
                         "skipped_empty": sp.skipped, "text_column": sp.text_column,
                         "label_column": sp.label_column},
                "class_weights": self.class_weights}


SPLIT_KEYS = ("data", "valid", "test", "valid_fraction", "test_fraction", "text_column",
              "label_column")


def split_args(settings: dict[str, Any]) -> dict[str, Any]:
    """The :func:`make_split` arguments among a run's settings."""
    return {**{k: settings.get(k) for k in SPLIT_KEYS}, "seed": settings["split_seed"]}
