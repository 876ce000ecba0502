"""A trained classifier from Python::

    clf = rnnkit.load("runs/sms")                 # or rnnkit.tasks.classify.load
    clf.predict(["Are we still on for lunch?"])   # ['ham']; predict_proba -> (N, C)
    session = clf.stream()                        # unidirectional models
    for chunk in transcript:                      # e.g. speech-to-text output, as it arrives
        p = session.feed(chunk)                   # {'ham': 0.94, 'spam': 0.06}

Streaming: ``feed(chunk)`` carries the recurrent state and a running pooling state, so each
chunk costs time proportional to its own length and memory stays constant; after every chunk
the probabilities equal those of the whole text so far read in one go. Tokenizers that can
split a word at a chunk boundary (word, BPE) hold back the trailing piece that may still grow
and score it provisionally until the next chunk decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit import checkpoint as ckpt
from rnnkit.data import Tokenizer, tokenizer_from_json
from rnnkit.layers import Recurrent
from rnnkit.tasks.classify.data import stable_prefix, truncate
from rnnkit.tasks.classify.metrics import classification_metrics, decide
from rnnkit.tasks.classify.model import Classifier, State
from rnnkit.tasks.classify.task import predict_proba_ids
from rnnkit.tasks.common import run_config


def run_chunk(rnn: nn.Module, x: Tensor, state: State, lengths: Tensor | None = None,
              verify: bool | None = None, embed: nn.Embedding | None = None
              ) -> tuple[Tensor, State]:
    """One chunk of a stream through the recurrent stack: ``x`` ``(B, t, E)`` (or, with
    ``embed``, token ids ``(B, t)`` that ``embed`` turns into it), ``state`` as the layer
    returns it (or None), ``lengths`` ``(B,)`` or None → ``(out (B, t, H), new state)``. Runs
    on the layer's stepper (weights prepared once; token ids through its projection table,
    :meth:`~rnnkit.kernels.step.Stepper.run_ids`) for an rnnkit layer in eval mode without
    autograd and without recorders; otherwise the layer itself.

    Every chunk checks the weights' version counters and the optimizer steps taken (cheap);
    ``verify`` also compares their bytes with the stepper's snapshot (one pass over them:
    :meth:`rnnkit.layers.Recurrent.stepper`), which catches writes no counter sees
    (``p.data.mul_(2)``). By default (None) that is done at a session's first chunk (``state``
    None), so a new session always runs on the weights as they are."""
    if (isinstance(rnn, Recurrent) and not rnn.training and not rnn.bidirectional
            and not rnn._recorders and not torch.is_grad_enabled()):
        deep = state is None if verify is None else verify
        st = rnn.stepper(1, verify=deep)
        if embed is None:
            return st.run(x, state, lengths)
        return st.run_ids(x, embed.weight, state, lengths, verify=deep)
    x = x if embed is None else embed(x)
    return rnn(x, state) if lengths is None else rnn(x, state, lengths=lengths)


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
        self.clf = clf
        self.pool = clf.model.stream_pool("text")
        self.state: State = None
        self.held = ""  # trailing text whose tokens may still change

    @torch.no_grad()
    def _advance(self, ids: list[int], state: State, pool: dict[str, Tensor]
                 ) -> tuple[State, dict[str, Tensor]]:
        if not ids:
            return state, pool
        m = self.clf.model
        out, state = run_chunk(m.rnn, torch.tensor([ids]), state, embed=m.embed)
        return state, m.pool_update(pool, out)

    @torch.no_grad()
    def _probs(self, state: State, pool: dict[str, Tensor]) -> dict[str, float]:
        m = self.clf.model
        p = torch.softmax(m.head(m.pool_read(pool, state)).double(), -1)[0].tolist()
        return dict(zip(self.clf.labels, p, strict=True))

    def feed(self, chunk: str) -> dict[str, float]:
        text = self.held + chunk
        k = stable_prefix(self.clf.tok, text)
        ids = self.clf.tok.encode(text[:k])
        self.state, self.pool = self._advance(ids, self.state, self.pool)
        self.held = text[k:]
        # score the held-back tail provisionally, without committing it
        return self._probs(*self._advance(self.clf.tok.encode(self.held), self.state, self.pool))

    @staticmethod
    @torch.no_grad()
    def feed_many(sessions: Sequence[StreamSession], chunks: Sequence[str]
                  ) -> list[dict[str, float]]:
        """``[s.feed(c) for s, c in zip(sessions, chunks)]`` for distinct sessions of one
        classifier, with the chunks stepped together: one recurrent call over the rows padded
        to the longest (each row's state taken at its own length) for the committed text and
        one for the held-back tails. Same results as one by one, to float rounding."""
        if not sessions:
            return []
        if len({id(s) for s in sessions}) != len(sessions) or \
                len({id(s.clf) for s in sessions}) != 1:
            raise ValueError("feed_many needs distinct sessions of one classifier, got "
                             f"{len(sessions)} session(s) of {len({id(s.clf) for s in sessions})}"
                             " classifier(s)")
        clf = sessions[0].clf
        commit, held = [], []
        for s, c in zip(sessions, chunks, strict=True):
            text = s.held + c
            k = stable_prefix(clf.tok, text)
            commit.append(clf.tok.encode(text[:k]))
            s.held = text[k:]
            held.append(clf.tok.encode(s.held))
        new = any(s.state is None for s in sessions)  # a session's first chunk: verify
        states = _stack([s.state for s in sessions], clf.model)
        pools = [s.pool for s in sessions]
        states, pools = _advance_many(clf.model, commit, states, pools, verify=new)
        for i, s in enumerate(sessions):
            s.state, s.pool = _row(states, i), pools[i]
        states, pools = _advance_many(clf.model, held, states, pools,  # provisional
                                      verify=new and not any(commit))
        m = clf.model
        v = torch.cat([m.pool_read(pools[i], _row(states, i)) for i in range(len(sessions))])
        p = torch.softmax(m.head(v).double(), -1).tolist()
        return [dict(zip(clf.labels, row, strict=True)) for row in p]

    def label(self, probs: dict[str, float]) -> str:
        return self.clf.labels[int(self.clf.decide(np.array([list(probs.values())]))[0])]


def _stack(states: list[State], m: Classifier) -> tuple[Tensor, ...]:
    """Sessions' states (each None or ``(L, 1, H)``, or a tuple of them) → a tuple of
    ``(L, B, H)``."""
    n = len(m.rnn.state_names)
    shape = (m.rnn.num_layers, 1, m.rnn.hidden_size)
    z = m.head.weight.new_zeros(shape)
    parts = [((z,) * n if st is None else (st,) if isinstance(st, Tensor) else tuple(st))
             for st in states]
    return tuple(torch.cat([p[j] for p in parts], 1) for j in range(n))


def _row(states: tuple[Tensor, ...], i: int) -> State:
    r = tuple(t[:, i:i + 1] for t in states)
    return r[0] if len(r) == 1 else r


def _advance_many(m: Classifier, ids: list[list[int]], states: tuple[Tensor, ...],
                  pools: list[dict[str, Tensor]], verify: bool = False
                  ) -> tuple[tuple[Tensor, ...], list[dict[str, Tensor]]]:
    """Step rows ``ids`` (ragged) from ``states`` ``(L, B, H)``; rows with no ids keep
    theirs."""
    n = torch.tensor([len(x) for x in ids])
    if int(n.max()) == 0:
        return states, pools
    pad = torch.zeros(len(ids), int(n.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        pad[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    st = states[0] if len(states) == 1 else states
    out, new = run_chunk(m.rnn, pad, st, n.clamp(min=1), verify, embed=m.embed)
    new = (new,) if isinstance(new, Tensor) else tuple(new)
    keep = (n == 0).view(1, -1, 1)
    new = tuple(torch.where(keep, old, t) for old, t in zip(states, new, strict=True))
    pools = [p if len(x) == 0 else m.pool_update(p, out[i:i + 1, :len(x)])
             for i, (x, p) in enumerate(zip(ids, pools, strict=True))]
    return new, pools


def load(run_dir: str | Path) -> TextClassifier:
    """A trained classifier from a run folder (its ``best/`` checkpoint) or a checkpoint."""
    src, cfg = run_config(run_dir, "classify", "a classifier")
    tok = tokenizer_from_json(cfg["tokenizer"])
    model = ckpt.build_checked(
        lambda: Classifier(tok.vocab_size, len(cfg["labels"]), **cfg["model"]), src)
    pos, thr = read_decision(Path(run_dir) / "decision.json", cfg["labels"])
    return TextClassifier(model, tok, cfg["labels"], cfg.get("max_len"),
                          cfg.get("truncate", "both"), pos, thr)


def read_decision(path: Path, labels: list[str]) -> tuple[int | None, float | None]:
    """(index of the positive class, threshold) from a run's ``decision.json`` (both None
    without one); an unknown label or a threshold that is not a number in [0, 1] is a
    ValueError naming the file."""
    if not path.is_file():
        return None, None
    d = ckpt.read_json(path)
    if d.get("positive") not in labels:
        raise ValueError(f"{path}: positive class {d.get('positive')!r} is not one of the "
                         f"model's labels ({', '.join(map(repr, labels))})")
    thr = d.get("threshold")
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 <= thr <= 1:
        raise ValueError(f"{path}: threshold must be a number in [0, 1], got {thr!r}")
    return labels.index(d["positive"]), float(thr)
