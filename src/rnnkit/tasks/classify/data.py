"""The classifier's data: labelled tables read with the chosen columns, the fixed split,
tokens (truncation, the stable prefix of a stream) and length-bucketed batches."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.data import LabelledData, Tokenizer, read_labelled, stratified_split
from rnnkit.data.batches import EpochBatches

TRUNCATE = ("start", "end", "both")


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


class BucketStream(EpochBatches):
    """Endless training batches of similar-length texts (:class:`EpochBatches` with the text
    lengths as key): ``next()`` -> ``{"ids" (B, T), "lengths" (B,), "y" (B,)}``."""

    def __init__(self, seqs: list[list[int]], labels: list[int], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.seqs, self.labels = seqs, labels
        super().__init__(len(seqs), batch_size, seed, rank, world, key=[len(s) for s in seqs])

    def make(self, idx: np.ndarray) -> dict[str, Tensor]:
        return collate([self.seqs[i] for i in idx], [self.labels[i] for i in idx])


def column(c: str | None) -> str | int | None:
    """A ``--text-column``/``--label-column`` value: digits are an index, else a name."""
    return int(c) if c is not None and c.lstrip("-").isdigit() else c


def read_data(path: str, text_column: str | None = None, label_column: str | None = None
              ) -> LabelledData:
    """:func:`rnnkit.data.read_labelled` with the command line's column choices."""
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder; expected a labelled file (.csv, .tsv, .jsonl)")
    return read_labelled(path, text_column=column(text_column),
                         label_column=column(label_column))


Part = tuple[list[str], list[str]]  # (texts, labels)


@dataclass
class Split:
    """Training, validation and (optional) test texts with their labels, how they were made
    (``record``: written to ``split.json``), and the empty texts skipped per file."""

    train: Part
    valid: Part
    test: Part | None
    record: dict[str, Any]
    skipped: dict[str, int]
    text_column: str
    label_column: str


def make_split(data: str, valid: str | None = None, test: str | None = None, *,
               valid_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0,
               text_column: str | None = None, label_column: str | None = None) -> Split:
    """The split of a run, deterministic in its arguments (so ``--resume`` remakes it): a
    ``test`` file or a stratified ``test_fraction`` of ``data`` (by ``seed``), then a
    ``valid`` file or a stratified ``valid_fraction`` of the rest (by ``seed + 1``)."""
    d = read_data(data, text_column, label_column)
    skipped = {"train": d.skipped_empty}
    record: dict[str, Any] = {"data": str(data), "seed": seed, "rows": len(d.texts)}
    texts, labels = d.texts, d.labels
    rows = list(range(len(texts)))
    test_part = None
    if test:
        t = read_data(test, text_column, label_column)
        test_part, skipped["test"] = (t.texts, t.labels), t.skipped_empty
    elif test_fraction:
        tr, te = stratified_split(labels, test_fraction, seed=seed)
        record.update(test_fraction=test_fraction, test_rows=te)
        test_part = ([texts[i] for i in te], [labels[i] for i in te])
        rows = tr
    if valid:
        v = read_data(valid, text_column, label_column)
        valid_part, skipped["valid"] = (v.texts, v.labels), v.skipped_empty
    else:
        tr, va = stratified_split([labels[i] for i in rows], valid_fraction, seed=seed + 1)
        record.update(valid_fraction=valid_fraction, valid_rows=[rows[i] for i in va])
        valid_part = ([texts[rows[i]] for i in va], [labels[rows[i]] for i in va])
        rows = [rows[i] for i in tr]
    train_part = ([texts[i] for i in rows], [labels[i] for i in rows])
    return Split(train_part, valid_part, test_part, record, skipped, d.text_column,
                 d.label_column)
