"""The language model's data: a corpus split into training and validation text, encoded, and
read as truncated-BPTT batches.

Without a path the corpus is the code of the running Python's standard library (generated
files and character-mapping tables left out), split by file: every held-out file is
validation, the training text is capped at ``max_chars``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnkit.data import (
    Tokenizer,
    build_tokenizer,
    join_docs,
    load_corpus,
    split_by_file,
    stdlib_corpus,
    tokenizer_from_json,
)
from rnnkit.data.text import spread_select


@dataclass
class LMData:
    tokenizer: Tokenizer
    train: Tensor  # (N,) int64 ids
    valid: Tensor  # (M,) int64 ids
    source: dict[str, Any]  # how to read the same split again (stored in config.json)
    valid_chars: int = 0  # characters of the validation text (bits per *character*)

    def __post_init__(self) -> None:
        if not self.valid_chars:  # built by hand: count the characters the ids decode to
            self.valid_chars = len(self.tokenizer.decode(self.valid.tolist()))


def read_split(source: dict[str, Any]) -> tuple[str, str]:
    """(train text, validation text) for ``source``: ``{"data": path or None, "max_chars",
    "valid_fraction", "split_seed"}``. One file = its last ``valid_fraction`` is validation; a
    folder = split by file; ``max_chars`` caps the training text. No path = the Python standard
    library's code (:func:`~rnnkit.data.text.stdlib_corpus`: generated files and
    character-mapping tables left out), split by file over the whole library: validation is
    every held-out file, training the other files taken in spread order
    (:func:`~rnnkit.data.text.spread_select`) up to ``max_chars``."""
    path, cap, frac = source.get("data"), source.get("max_chars"), source["valid_fraction"]
    seed = source.get("split_seed", 0)
    if path is None:
        docs = stdlib_corpus()
        if len(docs) < 2:
            raise ValueError("the standard-library corpus is empty on this Python installation; "
                             "give --data PATH")
        tr, va = split_by_file(docs, frac, seed=seed)
        if cap is not None:
            tr = spread_select(tr, cap + 2, size=lambda t: len(t) + 2)  # + "\n\n" between
            if not tr:
                raise ValueError(f"--max-chars {cap:,} is too small: no standard-library file "
                                 f"fits")
        return join_docs(tr), join_docs(va)
    tr, va = split_by_file(load_corpus(path), frac, seed=seed)
    train_text, valid_text = join_docs(tr), join_docs(va)
    if cap is not None and len(train_text) > cap:
        train_text = train_text[:cap]
    return train_text, valid_text


def load_data(source: dict[str, Any], tokenizer: str | dict[str, Any] = "char",
              min_freq: int = 1) -> LMData:
    """Read the split and encode it (training a tokenizer of that kind on the training text,
    or rebuilding a saved one from its JSON)."""
    train_text, valid_text = read_split(source)
    if isinstance(tokenizer, dict):
        tok = tokenizer_from_json(tokenizer)
    else:
        if tokenizer not in ("char", "jamo"):
            raise ValueError(f"--tokenizer must be 'char' or 'jamo' for the language model, got "
                             f"{tokenizer!r}")
        tok = build_tokenizer(tokenizer, [train_text], min_freq=min_freq)
    if tok.vocab_size < 3:
        raise ValueError(f"the {tok.kind} vocabulary has {tok.vocab_size} entries (padding and "
                         f"<unk> only): every symbol was cut by --min-freq {min_freq}; lower it")
    tr = torch.tensor(tok.encode(train_text), dtype=torch.long)
    va = torch.tensor(tok.encode(valid_text), dtype=torch.long)
    if len(va) < 2:
        raise ValueError(f"the validation text has {len(va)} token(s); it needs at least 2 "
                         f"(give more text or a larger validation fraction)")
    return LMData(tok, tr, va, source, len(valid_text))


class TokenStream:
    """Truncated-BPTT batches: ``rows`` contiguous slices of ``ids``, this rank's share of them.

    ``next()`` -> ``{"x": (rows/world, seq+1) ids, "reset": bool tensor}``; consecutive batches
    continue each row where the previous one stopped; at the end of a slice every row starts
    over (``reset`` tells the task to drop the carried state)."""

    def __init__(self, ids: Tensor, rows: int, seq: int, rank: int = 0, world: int = 1) -> None:
        if rows % world:
            raise ValueError(f"--batch-size {rows} must be divisible by the number of processes "
                             f"({world})")
        n = (len(ids) - 1) // rows
        if n < seq + 1:
            raise ValueError(f"the training text has {len(ids)} tokens; one batch of {rows} rows "
                             f"× {seq + 1} tokens needs at least {rows * (seq + 1) + 1}. Use "
                             f"more text, a smaller --batch-size or a smaller --seq")
        mine = range(rank * rows // world, (rank + 1) * rows // world)
        self.x = torch.stack([ids[r * n: r * n + n + 1] for r in mine])  # (rows/world, n+1)
        self.seq, self.pos, self.epoch = seq, 0, 0

    def __next__(self) -> dict[str, Tensor]:
        reset = self.pos == 0
        if self.pos + self.seq + 1 > self.x.shape[1]:
            self.pos, self.epoch, reset = 0, self.epoch + 1, True
        chunk = self.x[:, self.pos: self.pos + self.seq + 1]
        self.pos += self.seq
        return {"x": chunk, "reset": torch.tensor(reset)}

    def __iter__(self) -> TokenStream:
        return self

    def state_dict(self) -> dict[str, int]:
        return {"pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.pos, self.epoch = d["pos"], d["epoch"]
