"""Text classification with recurrent models, and streaming scores for live text.

Model: token ids ``(B, T)`` → embedding ``(B, T, E)`` → rnnkit RNN/LSTM/GRU stack with
``lengths`` (nothing past a text's end reaches the result) ``(B, T, D*H)`` → pooling over time
(``last``, ``mean``, ``max`` or learned ``attention``) ``(B, D*H)`` → linear classifier
``(B, C)``.

Streaming (unidirectional models): :meth:`TextClassifier.stream` returns a session whose
``feed(chunk)`` carries the recurrent state and a running pooling state (last state; running
sum; running max; online-softmax maximum, normaliser and weighted sum for attention), so each
chunk costs time proportional to its own length and memory stays constant. After every chunk
the returned probabilities equal those of the whole text so far read in one go. Tokenizers
that can split a word at a chunk boundary (word, BPE) hold back the trailing piece that may
still grow and score it provisionally (without committing it) until the next chunk decides.

CLI: ``rnnkit train classify``, ``rnnkit predict RUN_DIR``, ``rnnkit eval RUN_DIR --data F``.
Python: ``model = rnnkit.tasks.classify.load(RUN_DIR)``; ``model.predict(["text"])``;
``session = model.stream(); p = session.feed("chunk")``.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import checkpoint as ckpt
from rnnkit.data import (
    KINDS,
    LabelledData,
    Tokenizer,
    build_tokenizer,
    read_labelled,
    stratified_split,
    tokenizer_from_json,
)
from rnnkit.layers import GRU, LSTM, RNN
from rnnkit.tasks.classify_metrics import (
    choose_threshold,
    classification_metrics,
    decide,
    format_table,
    plot_confusion,
)

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
POOLS = ("last", "mean", "max", "attention")
TRUNCATE = ("start", "end", "both")
State = Tensor | tuple[Tensor, Tensor] | None


# -- model ---------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """Embedding → recurrent stack → pooling → linear. ``forward(ids (B, T), lengths (B,))``
    returns logits ``(B, C)``. Padding id 0; a text with length 0 pools to a zero vector."""

    def __init__(self, vocab_size: int, num_classes: int, *, cell: str = "gru", embed: int = 128,
                 hidden: int = 256, layers: int = 1, bidirectional: bool = False,
                 pool: str = "max", dropout: float = 0.2) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.pool = pool
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.rnn = CELLS[cell](embed, hidden, num_layers=layers, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)
        D = self.rnn.output_size
        # attention score of a time step: v · tanh(W h_t + b), a scalar per step
        self.attn = (nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, 1, bias=False))
                     if pool == "attention" else None)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(D, num_classes)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        x = self.drop(self.embed(ids))                                   # (B, T, E)
        out, state = self.rnn(x, lengths=lengths.clamp(min=1))           # (B, T, D*H)
        return self.head(self.drop(self.pooled(out, state, lengths)))    # (B, C)

    def pooled(self, out: Tensor, state: State, lengths: Tensor) -> Tensor:
        """``out`` ``(B, T, D)`` (zero past each length), final ``state`` → ``(B, D)``."""
        B, T, _ = out.shape
        valid = torch.arange(T, device=out.device).view(1, T) < lengths.view(B, 1)  # (B, T)
        if self.pool == "last":   # final state of the top layer (both directions)
            h = state[0] if isinstance(state, tuple) else state          # (L*D, B, H)
            v = torch.cat(list(h[-self.rnn.num_directions:]), -1)
        elif self.pool == "mean":
            v = out.sum(1) / lengths.clamp(min=1).view(B, 1).to(out.dtype)
        elif self.pool == "max":
            v = out.masked_fill(~valid.unsqueeze(-1), -math.inf).amax(1)
        else:
            s = self.attn(out).squeeze(-1).masked_fill(~valid, -math.inf)  # (B, T)
            v = (torch.softmax(s, 1).nan_to_num(0.0).unsqueeze(-1) * out).sum(1)
        return torch.where((lengths > 0).view(B, 1), v, torch.zeros_like(v))

    # The same pooling, updated one chunk at a time (unidirectional stacks only): a dict of
    # fixed-size tensors, whatever the number of chunks.
    def pool_init(self, like: Tensor) -> dict[str, Tensor]:
        D = self.rnn.output_size
        z = like.new_zeros(1, D)
        ps = {"n": like.new_zeros(())}
        if self.pool == "mean":
            ps["sum"] = z
        elif self.pool == "max":
            ps["max"] = z.fill_(-math.inf)
        elif self.pool == "attention":
            ps.update(m=like.new_full((), -math.inf), z=like.new_zeros(()), acc=z)
        return ps

    def pool_update(self, ps: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
        """Fold a chunk's outputs ``(1, t, D)`` into the pooling state (a new dict)."""
        ps = {**ps, "n": ps["n"] + out.shape[1]}
        if self.pool == "mean":
            ps["sum"] = ps["sum"] + out.sum(1)
        elif self.pool == "max":
            ps["max"] = torch.maximum(ps["max"], out.amax(1))
        elif self.pool == "attention":   # online softmax: rescale to the new running maximum
            s = self.attn(out).squeeze(-1)[0]                                 # (t,)
            m = torch.maximum(ps["m"], s.max())
            w = torch.exp(s - m)
            scale = torch.exp(ps["m"] - m)
            ps.update(m=m, z=ps["z"] * scale + w.sum(),
                      acc=ps["acc"] * scale + (w.view(1, -1, 1) * out).sum(1))
        return ps

    def pool_read(self, ps: dict[str, Tensor], state: State) -> Tensor:
        """Pooled vector ``(1, D)`` of everything folded in so far (zeros before any token)."""
        if float(ps["n"]) == 0:
            return torch.zeros(1, self.rnn.output_size)
        if self.pool == "last":
            h = state[0] if isinstance(state, tuple) else state
            return h[-1]
        if self.pool == "mean":
            return ps["sum"] / ps["n"]
        if self.pool == "max":
            return ps["max"]
        return ps["acc"] / ps["z"]


def run_chunk(rnn: nn.Module, x: Tensor, state: State) -> tuple[Tensor, State]:
    """One chunk of a stream through the recurrent stack: ``x`` ``(1, t, E)``, ``state`` as the
    layer returns it (or None) → ``(out (1, t, H), new state)``. The one place a stateful
    stepping kernel plugs in."""
    return rnn(x, state)


# -- tokens --------------------------------------------------------------------------------------
def truncate(ids: list[int], max_len: int | None, keep: str) -> list[int]:
    """Cut ``ids`` to ``max_len`` keeping the ``start``, the ``end`` or ``both`` halves."""
    if max_len is None or len(ids) <= max_len:
        return ids
    if keep == "start":
        return ids[:max_len]
    if keep == "end":
        return ids[len(ids) - max_len:]
    tail = max_len // 2
    return ids[:max_len - tail] + ids[len(ids) - tail:]


_TRAILING_WORD = re.compile(r"\w*\Z")
MAX_HELD = 256  # characters a stream may hold back at most (a single unbroken "word")


def stable_prefix(tok: Tokenizer, text: str) -> int:
    """Length of the longest prefix ``p`` of ``text`` whose tokens can no longer change,
    whatever follows: ``encode(text + rest) == encode(text[:p]) + encode(text[p:] + rest)``.

    char: everything (a lower-casing char tokenizer may differ on a Greek final sigma at a
    boundary; classifiers never lower-case); jamo: up to the last starter (NFD reorders
    combining marks across a boundary); word: up to the trailing word; bpe: up to the last
    pre-token (the GPT-2 split regex has no lookbehind).
    More than ``MAX_HELD`` held-back characters are released (exactness then holds only for
    "words" shorter than that)."""
    if not text:
        return 0
    if tok.kind == "char":
        p = len(text)
    elif tok.kind == "jamo":
        p = next((i for i in range(len(text) - 1, -1, -1)
                  if unicodedata.combining(unicodedata.normalize("NFD", text[i])[0]) == 0), 0)
    elif tok.kind == "word":
        p = _TRAILING_WORD.search(text).start()
    else:
        pieces = tok.hf.pre_tokenizer.pre_tokenize_str(text)
        p = pieces[-1][1][0] if pieces else len(text)
    return max(p, len(text) - MAX_HELD)


# -- batches -------------------------------------------------------------------------------------
def collate(seqs: Sequence[list[int]], labels: Sequence[int] | None = None
            ) -> dict[str, Tensor]:
    """Pad to the longest: ``ids`` ``(B, T)`` (0 = pad, T >= 1), ``lengths`` ``(B,)``,
    ``y`` ``(B,)`` when labels are given."""
    T = max(1, max(len(s) for s in seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    batch = {"ids": ids, "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.long)}
    if labels is not None:
        batch["y"] = torch.tensor(list(labels), dtype=torch.long)
    return batch


class BucketStream:
    """Endless training batches of similar-length texts: each epoch is a fresh permutation cut
    into pools of 50 batches, each pool sorted by length and cut into batches, the batches then
    shuffled. Deterministic in (seed, epoch); ``state_dict`` = epoch and position. With several
    processes, each takes every ``world``-th text of each batch."""

    def __init__(self, seqs: list[list[int]], labels: list[int], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.seqs, self.labels, self.bs, self.seed = seqs, labels, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.pos = 0, 0
        self._plan = self._make_plan(0)

    def _make_plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.seqs))
        lens = np.array([len(s) for s in self.seqs])
        pool = self.bs * 50
        plan = []
        for k in range(0, len(perm), pool):
            chunk = perm[k:k + pool]
            chunk = chunk[np.argsort(lens[chunk], kind="stable")]
            plan += [chunk[j:j + self.bs] for j in range(0, len(chunk), self.bs)]
        return [plan[i] for i in rng.permutation(len(plan))]

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> BucketStream:
        return self

    def __next__(self) -> dict[str, Tensor]:
        if self.pos >= len(self._plan):
            self.epoch, self.pos = self.epoch + 1, 0
            self._plan = self._make_plan(self.epoch)
        idx = self._plan[self.pos][self.rank::self.world]
        self.pos += 1
        return collate([self.seqs[i] for i in idx], [self.labels[i] for i in idx])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.epoch, self.pos = int(d["epoch"]), int(d["pos"])
        self._plan = self._make_plan(self.epoch)


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


# -- the task (for rnnkit.train) -----------------------------------------------------------------
class ClassifyTask:
    """What :func:`rnnkit.train.train` needs: model, batches, loss, evaluation, config."""

    name = "classify"

    def __init__(self, tok: Tokenizer, labels: list[str], train: tuple[list, list],
                 valid: tuple[list, list], model_cfg: dict[str, Any], *, batch_size: int = 64,
                 seed: int = 0, class_weights: list[float] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.tok, self.labels, self.train, self.valid = tok, labels, train, valid
        self.model_cfg, self.batch_size, self.seed = model_cfg, batch_size, seed
        self.weights = None if class_weights is None else torch.tensor(class_weights)
        self.extra = extra or {}

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
        return {"task": self.name, "labels": self.labels, "model": self.model_cfg,
                "tokenizer": self.tok.to_json(), **self.extra}


# -- a trained classifier ------------------------------------------------------------------------
class TextClassifier:
    """A trained classifier with its tokenizer, labels and decision rule (see :func:`load`)."""

    def __init__(self, model: Classifier, tok: Tokenizer, labels: list[str],
                 max_len: int | None = None, keep: str = "both", positive: int | None = None,
                 threshold: float | None = None) -> None:
        self.model, self.tok, self.labels = model.eval(), tok, labels
        self.max_len, self.keep = max_len, keep
        self.positive, self.threshold = positive, threshold

    def encode(self, text: str) -> list[int]:
        return truncate(self.tok.encode(text), self.max_len, self.keep)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``(N, C)``, columns in the order of ``labels``."""
        return predict_proba_ids(self.model, [self.encode(t) for t in texts])

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.decide(self.predict_proba(texts))]

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return decide(probs, self.positive, self.threshold)

    def metrics(self, texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
        """Metrics on labelled texts; a label the model never saw is a ValueError naming it."""
        unseen = sorted(set(labels) - set(self.labels))
        if unseen:
            raise ValueError(f"label(s) {', '.join(map(repr, unseen))} never seen in training; "
                             f"the model knows: {', '.join(map(repr, self.labels))}")
        y = np.array([self.labels.index(v) for v in labels])
        return classification_metrics(y, self.predict_proba(texts), self.labels,
                                      positive=self.positive, threshold=self.threshold)

    def stream(self) -> StreamSession:
        """A streaming session (unidirectional models only)."""
        return StreamSession(self)


class StreamSession:
    """Scores text as it arrives. ``feed(chunk)`` returns ``{label: probability}`` for all text
    fed so far — equal to the one-shot prediction of that text (no truncation is applied to a
    stream) — at a cost proportional to the chunk, in constant memory: the session keeps only
    the recurrent state, the pooling state and at most ``MAX_HELD`` characters not yet final."""

    def __init__(self, clf: TextClassifier) -> None:
        if clf.model.rnn.bidirectional:
            raise ValueError("streaming needs a unidirectional model: a bidirectional one reads "
                             "each text backwards from its end, which a live stream does not "
                             "have yet; train with --no-bidirectional")
        self.clf = clf
        self.state: State = None
        self.pool = clf.model.pool_init(clf.model.head.weight)
        self.held = ""  # trailing text whose tokens may still change

    @torch.no_grad()
    def _advance(self, ids: list[int], state: State, pool: dict[str, Tensor]
                 ) -> tuple[State, dict[str, Tensor]]:
        if not ids:
            return state, pool
        m = self.clf.model
        out, state = run_chunk(m.rnn, m.embed(torch.tensor([ids])), state)
        return state, m.pool_update(pool, out)

    @torch.no_grad()
    def _probs(self, state: State, pool: dict[str, Tensor]) -> dict[str, float]:
        m = self.clf.model
        p = torch.softmax(m.head(m.pool_read(pool, state)).double(), -1)[0].tolist()
        return dict(zip(self.clf.labels, p, strict=True))

    def feed(self, chunk: str) -> dict[str, float]:
        text = self.held + chunk
        k = stable_prefix(self.clf.tok, text)
        self.state, self.pool = self._advance(self.clf.tok.encode(text[:k]), self.state,
                                              self.pool)
        self.held = text[k:]
        # score the held-back tail provisionally, without committing it
        return self._probs(*self._advance(self.clf.tok.encode(self.held), self.state, self.pool))

    def label(self, probs: dict[str, float]) -> str:
        return self.clf.labels[int(self.clf.decide(np.array([list(probs.values())]))[0])]


def load(run_dir: str | Path) -> TextClassifier:
    """A trained classifier from a run folder (its ``best/`` checkpoint) or a checkpoint."""
    src = ckpt.resolve(run_dir)
    cfg = ckpt.read_json(src / ckpt.CONFIG)
    if cfg.get("task") != "classify":
        raise ValueError(f"{run_dir} holds a {cfg.get('task')!r} model, not a classifier")
    tok = tokenizer_from_json(cfg["tokenizer"])
    model = Classifier(tok.vocab_size, len(cfg["labels"]), **cfg["model"])
    ckpt.load_weights(model, src / ckpt.MODEL)
    dec = Path(run_dir) / "decision.json"
    d = ckpt.read_json(dec) if dec.is_file() else {}
    pos = cfg["labels"].index(d["positive"]) if "positive" in d else None
    return TextClassifier(model, tok, cfg["labels"], cfg.get("max_len"),
                          cfg.get("truncate", "both"), pos, d.get("threshold"))


# -- data ---------------------------------------------------------------------------------------
def read_data(path: str, args: argparse.Namespace) -> LabelledData:
    """``read_labelled`` with the CLI's column choices; columns given as digits are indices."""
    def col(c: str | None) -> str | int | None:
        return int(c) if c is not None and c.lstrip("-").isdigit() else c
    return read_labelled(path, text_column=col(args.text_column),
                         label_column=col(args.label_column))


def _subset(d: LabelledData, idx: Sequence[int]) -> tuple[list[str], list[str]]:
    return [d.texts[i] for i in idx], [d.labels[i] for i in idx]


def _report(name: str, m: dict[str, Any], run: Path, skipped: int = 0) -> None:
    title = f"{name}" + (f" ({skipped} empty text(s) skipped)" if skipped else "")
    print(format_table(m, title))
    plot_confusion(m, run / f"confusion_{name}.png", f"{run.name}: {name}")


def train_main(args: argparse.Namespace) -> int:
    from rnnkit.train import TrainConfig, train

    out = Path(args.out)
    if not args.resume and ((out / "last" / ckpt.MODEL).is_file()
                            or (out / "best" / ckpt.MODEL).is_file()):
        raise ValueError(f"{out} already holds a run; resume it (--resume) or choose another "
                         f"output folder")
    data = read_data(args.data, args)
    skipped = {"train": data.skipped_empty}
    split: dict[str, Any] = {"data": str(args.data), "seed": args.split_seed}
    train_t, train_y = data.texts, data.labels
    test = None
    if args.test:
        t = read_data(args.test, args)
        test, skipped["test"] = (t.texts, t.labels), t.skipped_empty
    elif args.test_fraction:
        tr, te = stratified_split(train_y, args.test_fraction, seed=args.split_seed)
        split.update(test_fraction=args.test_fraction, test_rows=te)
        test = _subset(data, te)
        train_t, train_y = _subset(data, tr)
        split["train_rows"] = tr
    if args.valid:
        v = read_data(args.valid, args)
        valid, skipped["valid"] = (v.texts, v.labels), v.skipped_empty
    else:
        tr, va = stratified_split(train_y, args.valid_fraction, seed=args.split_seed + 1)
        base = split.get("train_rows", range(len(data.texts)))
        split.update(valid_fraction=args.valid_fraction, valid_rows=[base[i] for i in va])
        valid = ([train_t[i] for i in va], [train_y[i] for i in va])
        train_t, train_y = [train_t[i] for i in tr], [train_y[i] for i in tr]
    split.pop("train_rows", None)

    counts = Counter(train_y)
    if len(counts) < 2:
        raise ValueError(f"{args.data}: the training set has a single class "
                         f"({next(iter(counts))!r}, {len(train_y)} texts); a classifier needs "
                         f"at least two (check --label-column; columns: "
                         f"{', '.join(data.columns)})")
    labels = sorted(counts)
    for name, part in (("validation", valid), ("test", test)):
        unseen = sorted(set(part[1]) - set(labels)) if part else []
        if unseen:
            raise ValueError(f"{name} label(s) {', '.join(map(repr, unseen))} do not occur in "
                             f"the training set (labels: {', '.join(map(repr, labels))})")
    majority = max(counts.values()) / len(train_y)
    use_w = args.class_weights == "on" or (args.class_weights == "auto" and majority > 0.8)
    weights = [len(train_y) / (len(labels) * counts[c]) for c in labels] if use_w else None

    if args.resume and (out / ckpt.CONFIG).is_file():  # the run's own vocabulary
        tok = tokenizer_from_json(ckpt.read_json(out / ckpt.CONFIG)["tokenizer"])
    else:
        tok = build_tokenizer(args.tokenizer, train_t, vocab_size=args.vocab_size,
                              min_freq=args.min_freq)
    enc = lambda ts: [truncate(tok.encode(t), args.max_len, args.truncate) for t in ts]  # noqa
    y_of = lambda ys: [labels.index(v) for v in ys]  # noqa: E731
    tr_ids, va_ids = enc(train_t), enc(valid[0])
    model_cfg = {"cell": args.cell, "embed": args.embed, "hidden": args.hidden,
                 "layers": args.layers, "bidirectional": args.bidirectional, "pool": args.pool,
                 "dropout": args.dropout}
    n_train = {c: counts[c] for c in labels}
    extra = {"max_len": args.max_len, "truncate": args.truncate,
             "data": {"train": n_train, "valid": len(valid[1]),
                      "test": len(test[1]) if test else 0, "skipped_empty": skipped,
                      "text_column": data.text_column, "label_column": data.label_column},
             "class_weights": weights}
    task = ClassifyTask(tok, labels, (tr_ids, y_of(train_y)), (va_ids, y_of(valid[1])),
                        model_cfg, batch_size=args.batch_size, seed=args.seed,
                        class_weights=weights, extra=extra)
    per_epoch = math.ceil(len(tr_ids) / args.batch_size)
    steps = None if args.epochs is None else max(1, round(args.epochs * per_epoch))
    if steps is None and args.minutes is None:
        steps = 10 * per_epoch
    eval_every = args.eval_every or max(1, min(per_epoch, (steps or 10**9) // 10))
    cfg = TrainConfig(out=str(out), steps=steps, minutes=args.minutes, lr=args.lr,
                      weight_decay=args.weight_decay, warmup=min(100, per_epoch),
                      eval_every=eval_every, seed=args.seed, best_metric="macro_f1",
                      best_mode="max", resume=args.resume, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(out / "split.json", json.dumps(split))
    print(f"train {len(tr_ids)} ({', '.join(f'{c} {n}' for c, n in n_train.items())}), "
          f"valid {len(va_ids)}, test {len(test[1]) if test else 0}; skipped empty texts: "
          f"{skipped}; {tok.kind} vocabulary {tok.vocab_size}; class weights "
          f"{'on' if weights else 'off'} (majority {majority:.1%})", file=sys.stderr)
    res = train(task, cfg)

    clf = load(out)
    report: dict[str, Any] = {"best_step": res.best.get("step"), "steps": res.step,
                              "train_seconds": round(res.elapsed, 1),
                              "skipped_empty": skipped}
    if len(labels) == 2:  # decision threshold for the minority class, chosen on validation
        pos = labels.index(min(labels, key=lambda c: (counts[c], c)))
        p = clf.predict_proba(valid[0])[:, pos]
        thr = choose_threshold(np.array(y_of(valid[1])), p, pos)
        ckpt.atomic_write(out / "decision.json", json.dumps(
            {"positive": labels[pos], "threshold": thr, "chosen_on": "validation macro-F1"}))
        clf.positive, clf.threshold = pos, thr
    for name, part in (("valid", valid), ("test", test)):
        if part is None:
            continue
        report[name] = m = clf.metrics(*part)
        _report(name, m, out, skipped.get(name, 0))
    ckpt.atomic_write(out / "metrics.json", json.dumps(report, indent=1))
    return 0


def evaluate_cli(args: argparse.Namespace) -> int:
    """``rnnkit eval RUN_DIR --data FILE``: the same metrics on a labelled file."""
    run = Path(getattr(args, "run_dir", None) or args.run)
    clf = load(run)
    for name in ("text_column", "label_column"):
        if not hasattr(args, name):
            setattr(args, name, None)
    d = read_data(args.data, args)
    m = clf.metrics(d.texts, d.labels)
    m["skipped_empty"] = d.skipped_empty
    m["data"] = str(args.data)
    stem = Path(args.data).stem
    _report(f"eval_{stem}", m, run, d.skipped_empty)
    ckpt.atomic_write(run / f"eval_{stem}.json", json.dumps(m, indent=1))
    return 0


# -- predict -------------------------------------------------------------------------------------
def _fmt(labels: list[str], label: str, p: dict[str, float] | Sequence[float]) -> str:
    vals = p.values() if isinstance(p, dict) else p
    return label + "\t" + " ".join(f"{c}={v:.4f}" for c, v in zip(labels, vals, strict=True))


def _file_chunks(path: str, size: int) -> Iterator[str]:
    """A UTF-8 file ``size`` characters at a time; bad bytes → ValueError with the offset."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    dec = codecs.getincrementaldecoder("utf-8")()
    done, text = 0, ""
    with open(p, "rb") as f:
        while True:
            data = f.read(size)
            held = len(dec.getstate()[0])
            try:
                text += dec.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} is not UTF-8 text: invalid byte at byte offset "
                                 f"{done - held + e.start}") from None
            done += len(data)
            if done == len(data) and text.startswith("\ufeff"):
                text = text[1:]
            while len(text) >= size or (not data and text):
                yield text[:size]
                text = text[size:]
            if not data:
                return


def predict_main(args: argparse.Namespace) -> int:
    try:
        return _predict(args)
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0


def _predict(args: argparse.Namespace) -> int:
    clf = load(args.run_dir)
    if args.stream:
        session = clf.stream()
        if args.file:
            chunks: Iterator[str] = _file_chunks(args.file, args.chunk_chars)
        elif args.text in (None, "-"):
            chunks = iter(sys.stdin.readline, "")
        else:
            chunks = iter([args.text])
        for i, chunk in enumerate(chunks, 1):
            p = session.feed(chunk)
            print(f"{i}\t" + _fmt(clf.labels, session.label(p), p), flush=True)
        return 0
    if args.file:
        from rnnkit.data import read_text_file

        lines = read_text_file(args.file).split("\n")
    elif args.text in (None, "-"):
        lines = [t.rstrip("\n") for t in sys.stdin]
    else:
        lines = [args.text]
    if len(lines) > 1 and lines[-1] == "":  # the final newline ends a line, adds none
        lines.pop()
    texts = [t for t in lines if t.strip()]
    if len(texts) < len(lines):
        print(f"rnnkit: skipped {len(lines) - len(texts)} empty line(s)", file=sys.stderr)
    if not texts:
        raise ValueError("no text to classify: give TEXT, --file FILE or '-' for stdin")
    probs = clf.predict_proba(texts)
    for p, k in zip(probs, clf.decide(probs), strict=True):
        print(_fmt(clf.labels, clf.labels[k], p))
    return 0


# -- CLI registration ----------------------------------------------------------------------------
def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="train a text classifier (CSV/TSV/JSONL)",
                       description="Train a recurrent text classifier. Metrics, confusion "
                       "matrices and the best checkpoint (by validation macro-F1) go to --out.")
    a = p.add_argument
    a("--data", required=True, help="labelled training file (.csv, .tsv/.txt, .jsonl)")
    a("--valid", help="validation file (default: a stratified split of --data)")
    a("--test", help="test file (or use --test-fraction)")
    a("--text-column", help="text column name or index (default: guessed)")
    a("--label-column", help="label column name or index (default: guessed)")
    a("--out", required=True, help="run folder")
    a("--valid-fraction", type=float, default=0.1, help="held out for validation (0.1)")
    a("--test-fraction", type=float, default=0.0, help="held out for testing (0 = none)")
    a("--split-seed", type=int, default=0, help="seed of the stratified splits (0)")
    a("--tokenizer", choices=KINDS, default="char")
    a("--vocab-size", type=int, default=None, help="cap (char/jamo/word) or target (bpe)")
    a("--min-freq", type=int, default=1)
    a("--max-len", type=int, default=512, help="tokens kept per text (512)")
    a("--truncate", choices=TRUNCATE, default="both", help="which part of a long text to keep")
    a("--cell", choices=list(CELLS), default="gru")
    a("--embed", type=int, default=128)
    a("--hidden", type=int, default=256)
    a("--layers", type=int, default=1)
    a("--bidirectional", action=argparse.BooleanOptionalAction, default=False)
    a("--pool", choices=POOLS, default="max")
    a("--dropout", type=float, default=0.2)
    a("--class-weights", choices=("auto", "on", "off"), default="auto",
      help="auto: on when the majority class is over 80%%")
    a("--batch-size", type=int, default=64)
    a("--epochs", type=float, default=None, help="default 10 when --minutes is not given")
    a("--minutes", type=float, default=None, help="wall-clock budget")
    a("--lr", type=float, default=3e-3)
    a("--weight-decay", type=float, default=0.0)
    a("--eval-every", type=int, default=None, help="steps (default: each epoch, >= 10 times)")
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue the run in --out")
    a("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=train_main)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify text with a trained classifier",
                       description="Print the label and class probabilities of each text.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("text", nargs="?", metavar="TEXT", help="a text, or '-' for stdin")
    p.add_argument("--file", help="one text per line (with --stream: the whole file)")
    p.add_argument("--stream", action="store_true",
                   help="score text as it arrives (stdin line by line, or --file chunk by "
                        "chunk), printing the running probabilities after each chunk")
    p.add_argument("--chunk-chars", type=int, default=64, help="--stream --file chunk size")
    p.set_defaults(func=predict_main)
