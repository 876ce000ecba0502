"""Sequences of real-valued vectors (sensor streams) and of video frames: the readers, the
built-in sets, the split, NaN handling, per-feature normalisation and padded batches.

A data set is a :class:`Sequences`: ``X`` a list of ``N`` arrays, each ``(T_i, F)`` (vectors)
or ``(T_i, H, W, C)`` (frames), float32, lengths free (ragged), and ``y`` the ``N`` labels as
strings. Readers:

* ``.npz`` with ``X`` ``(N, T, F)`` or ``(N, T, H, W[, C])``, optional ``lengths`` ``(N,)``
  (steps past a length are dropped) and ``y`` ``(N,)``;
* ``.csv`` in long form: one row per time step, columns ``id``, ``time``, the features,
  ``label`` (rows of a sequence in any order; sorted by time);
* ``.ts`` (UEA/UCR), read with sktime's ``load_from_tsfile`` (``pip install sktime``);
* built-ins, no downloads: ``synthetic`` (600 + 200 sequences of shape (20, 6), 4 classes told
  apart by the frequency of a sine, not by any mean), ``basicmotions`` and ``japanesevowels``
  (the UEA copies bundled in the sktime wheel, with their own train/test split), and
  ``moving-digits`` (see :mod:`rnnkit.tasks.sequences.video`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.data import stratified_split
from rnnkit.data.batches import EpochBatches
from rnnkit.data.text import read_text_file

BUILTINS = ("synthetic", "basicmotions", "japanesevowels", "moving-digits")
FILLS = ("ffill", "zero")


@dataclass
class Sequences:
    """``X``: ``N`` float32 arrays ``(T_i, F)`` or ``(T_i, H, W, C)``; ``y``: ``N`` labels."""

    X: list[np.ndarray]
    y: list[str]
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def step_shape(self) -> tuple[int, ...]:
        """Shape of one time step: ``(F,)`` or ``(H, W, C)``."""
        return tuple(self.X[0].shape[1:])

    def take(self, idx: Sequence[int]) -> Sequences:
        return Sequences([self.X[i] for i in idx], [self.y[i] for i in idx],
                         [self.ids[i] for i in idx] if self.ids else [])


def _as_steps(x: np.ndarray, where: str) -> np.ndarray:
    """One sequence as float32 ``(T, F)`` or ``(T, H, W, C)`` (a grey frame ``(T, H, W)`` gets
    ``C = 1``)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 3 and where.endswith("frames"):
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise ValueError(f"{where}: expected a sequence of shape (T, F) or frames (T, H, W[, C])"
                         f", got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: a sequence has no time steps")
    return x


def from_arrays(X: np.ndarray | Sequence[np.ndarray], y: Sequence[Any] | None = None,
                lengths: Sequence[int] | np.ndarray | None = None, where: str = "arrays"
                ) -> Sequences:
    """``X`` ``(N, T, F)`` / ``(N, T, H, W[, C])`` or a list of ``(T_i, ...)`` arrays, with
    ``lengths`` ``(N,)`` (steps past each length dropped) and labels ``y`` ``(N,)``."""
    n = len(X)
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (n,):
            raise ValueError(f"{where}: lengths must have shape ({n},) (one per sequence), got "
                             f"{lengths.shape}")
        T = np.asarray(X[0]).shape[0] if isinstance(X, np.ndarray) else None
        bad = [i for i, v in enumerate(lengths)
               if not 1 <= v <= (T if T is not None else len(X[i]))]
        if bad:
            i = bad[0]
            raise ValueError(f"{where}: lengths[{i}] = {lengths[i]} is outside [1, "
                             f"{len(X[i])}] (the sequence's padded length)")
    frames = isinstance(X, np.ndarray) and X.ndim in (4, 5)
    seqs = [_as_steps(X[i] if lengths is None else np.asarray(X[i])[:int(lengths[i])],
                      where + (" frames" if frames else "")) for i in range(n)]
    if y is None:
        labels = [""] * n
    else:
        labels = [str(v) for v in np.asarray(y).tolist()]
        if len(labels) != n:
            raise ValueError(f"{where}: {n} sequences but {len(labels)} labels")
    if seqs and any(s.shape[1:] != seqs[0].shape[1:] for s in seqs):
        shapes = sorted({s.shape[1:] for s in seqs})
        raise ValueError(f"{where}: every time step must have the same shape; got {shapes}")
    return Sequences(seqs, labels, [str(i) for i in range(n)])


def read_npz(path: str | Path) -> Sequences:
    """``X`` (required), optional ``lengths`` and ``y``."""
    with np.load(path, allow_pickle=False) as z:
        if "X" not in z:
            raise ValueError(f"{path}: expected an array named 'X' (N, T, F), found "
                             f"{', '.join(z.files) or 'none'}")
        X = z["X"]
        if X.ndim not in (3, 4, 5):
            raise ValueError(f"{path}: X must be (N, T, F) or frames (N, T, H, W[, C]), got "
                             f"shape {X.shape}")
        return from_arrays(X, z["y"] if "y" in z else None,
                           z["lengths"] if "lengths" in z else None, str(path))


def read_long_csv(path: str | Path, id_column: str = "id", time_column: str = "time",
                  label_column: str = "label") -> Sequences:
    """A CSV in long form: a header, one row per time step (``id``, ``time``, features...,
    ``label``); every other column is a feature (numbers; empty or ``NaN`` = missing)."""
    try:  # strict UTF-8, the byte offset of a bad byte named, as for every input
        rows = list(csv.reader(io.StringIO(read_text_file(path), newline="")))
    except csv.Error as e:
        raise ValueError(f"{path}: not a CSV file ({e})") from None
    if not rows:
        raise ValueError(f"{path}: empty file")
    head = rows[0]
    for c in (id_column, time_column):
        if c not in head:
            raise ValueError(f"{path}: expected a column {c!r}; the header has "
                             f"{', '.join(head)}")
    ic, tc = head.index(id_column), head.index(time_column)
    lc = head.index(label_column) if label_column in head else None
    fc = [i for i in range(len(head)) if i not in (ic, tc, lc)]
    if not fc:
        raise ValueError(f"{path}: no feature columns besides {id_column}, {time_column}, "
                         f"{label_column}")
    groups: dict[str, list[tuple[float, list[float]]]] = {}
    labels: dict[str, str] = {}
    for k, r in enumerate(rows[1:], 2):
        if len(r) != len(head):
            raise ValueError(f"{path}, line {k}: {len(r)} fields, the header has {len(head)}")
        try:
            vals = [float(r[i]) if r[i].strip() else math.nan for i in fc]
            t = float(r[tc])
        except ValueError as e:
            raise ValueError(f"{path}, line {k}: expected numbers in {time_column} and the "
                             f"feature columns ({e})") from None
        groups.setdefault(r[ic], []).append((t, vals))
        if lc is not None:
            if labels.setdefault(r[ic], r[lc]) != r[lc]:
                raise ValueError(f"{path}, line {k}: sequence {r[ic]!r} has two labels, "
                                 f"{labels[r[ic]]!r} and {r[lc]!r}")
    ids = list(groups)
    X = [np.array([v for _, v in sorted(groups[i], key=lambda p: p[0])], dtype=np.float32)
         for i in ids]
    return Sequences(X, [labels.get(i, "") for i in ids], ids)


def read_ts(path: str | Path) -> Sequences:
    """A UEA/UCR ``.ts`` file through sktime's own loader (ragged series stay ragged)."""
    try:
        from sktime.datasets import load_from_tsfile
    except ImportError:
        raise ValueError(f"{path}: reading .ts files needs sktime (pip install sktime, or "
                         f"pip install 'rnnkit[sequences]')") from None
    X, y = load_from_tsfile(str(path), return_data_type="nested_univ")
    seqs = [np.stack([np.asarray(X.iloc[i, j], dtype=np.float32) for j in range(X.shape[1])],
                     axis=1) for i in range(X.shape[0])]
    return Sequences(seqs, [str(v) for v in y], [str(i) for i in range(len(seqs))])


def read_file(path: str | Path, **columns: str) -> Sequences:
    """Read ``.npz``, long ``.csv`` or ``.ts`` by its suffix."""
    p = Path(path)
    if p.is_dir():
        from rnnkit.tasks.sequences.video import read_clip_folder
        return read_clip_folder(p)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file (or give a built-in set: "
                                f"{', '.join(BUILTINS)})")
    suf = p.suffix.lower()
    if suf == ".npz":
        return read_npz(p)
    if suf == ".csv":
        return read_long_csv(p, **{k: v for k, v in columns.items() if v})
    if suf == ".ts":
        return read_ts(p)
    raise ValueError(f"{path}: expected .npz, .csv (long form) or .ts, got {suf or 'no suffix'}")


# -- built-in sets ------------------------------------------------------------------------------
def synthetic(n: int = 600, seed: int = 0, T: int = 20, F: int = 6) -> Sequences:
    """``n`` sequences ``(T, F)``, 4 classes: channels 0-2 carry a sine of 1, 2, 3 or 4 cycles
    per 20 steps (random phase and amplitude), channels 3-5 noise; every class has the same
    per-channel mean, so the order of the steps is what tells them apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(T) / 20
    X = rng.normal(0, 0.3, (n, T, F)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 3))
    amp = rng.uniform(0.7, 1.3, (n, 1, 3))
    X[:, :, :3] += amp * np.sin(2 * np.pi * (y[:, None, None] + 1) * t[None, :, None] + phase)
    return from_arrays(X, [f"f{k + 1}" for k in y], where="synthetic")


def _sktime_split(name: str, split: str) -> Sequences:
    try:
        import sktime
    except ImportError:
        raise ValueError(f"the built-in set {name!r} is the copy bundled in the sktime wheel: "
                         f"pip install sktime (or 'rnnkit[sequences]')") from None
    stem = {"basicmotions": "BasicMotions", "japanesevowels": "JapaneseVowels"}[name]
    return read_ts(Path(sktime.__file__).parent / "datasets" / "data" / stem /
                   f"{stem}_{split.upper()}.ts")


def builtin(name: str) -> tuple[Sequences, Sequences]:
    """(train, test) of a built-in set."""
    if name == "synthetic":
        return synthetic(600, seed=0), synthetic(200, seed=1)
    if name in ("basicmotions", "japanesevowels"):
        return _sktime_split(name, "train"), _sktime_split(name, "test")
    if name == "moving-digits":
        from rnnkit.tasks.sequences.video import moving_digits
        return moving_digits("train"), moving_digits("test")
    raise ValueError(f"unknown built-in set {name!r}; known: {', '.join(BUILTINS)}")


# -- NaN, normalisation --------------------------------------------------------------------------
def fill_missing(d: Sequences, fill: str | None, where: str) -> Sequences:
    """NaN in ``d``: a ValueError naming the first position (sequence, id, time step, feature)
    unless ``fill`` is ``"ffill"`` (each feature carries its last seen value forward; leading
    NaN take the first seen value, a feature never seen is 0) or ``"zero"``. Infinities are
    always an error."""
    out = []
    for i, x in enumerate(d.X):
        sid = d.ids[i] if d.ids else i
        if np.isinf(x).any():
            pos = tuple(int(v) for v in np.argwhere(np.isinf(x))[0])
            feat = pos[1] if len(pos) == 2 else pos[1:]
            raise ValueError(f"{where}: infinite value in sequence {i} (id {sid}) at time step "
                             f"{pos[0]}, feature {feat}")
        nan = np.isnan(x)
        if not nan.any():
            out.append(x)
            continue
        if fill is None:
            pos = tuple(int(v) for v in np.argwhere(nan)[0])
            feat = pos[1] if len(pos) == 2 else pos[1:]
            raise ValueError(f"{where}: NaN in sequence {i} (id {sid}) at "
                             f"time step {pos[0]}, feature {feat} ({int(nan.sum())} NaN in this "
                             f"sequence); pass --fill ffill or --fill zero to fill them")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
        x = x.copy()
        if fill == "zero":
            x[nan] = 0.0
        else:
            flat = x.reshape(len(x), -1)
            for j in range(flat.shape[1]):
                col = flat[:, j]
                ok = np.flatnonzero(~np.isnan(col))
                if not len(ok):
                    col[:] = 0.0
                    continue
                # index of the last seen value at or before each step (the first one before it)
                last = np.maximum.accumulate(np.where(~np.isnan(col), np.arange(len(col)), -1))
                col[:] = col[np.where(last < 0, ok[0], last)]
            x = flat.reshape(x.shape)
        out.append(x)
    return Sequences(out, d.y, d.ids)


def feature_stats(X: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over every time step (and pixel) of ``X``: the
    features are the last axis, ``F`` for vectors, ``C`` for frames. A constant feature gets
    std 1 (it then only shifts)."""
    C = X[0].shape[-1]
    n, s, s2 = 0, np.zeros(C), np.zeros(C)
    for x in X:
        v = x.reshape(-1, C).astype(np.float64)
        n, s, s2 = n + len(v), s + v.sum(0), s2 + (v * v).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0))
    return mean, np.where(std > 1e-8 * np.maximum(1, np.abs(mean)), std, 1.0)


# -- the split ----------------------------------------------------------------------------------
@dataclass
class Split:
    """Training, validation and test sequences and how they were made (``record``)."""

    train: Sequences
    valid: Sequences
    test: Sequences | None
    record: dict[str, Any]


def load_source(data: str, columns: dict[str, str] | None = None
                ) -> tuple[Sequences, Sequences | None]:
    """(all, given test or None): a built-in set comes with its test split."""
    if data in BUILTINS:
        return builtin(data)
    return read_file(data, **(columns or {})), None


def make_split(data: str, test: str | None = None, *, valid_fraction: float = 0.2,
               test_fraction: float = 0.2, seed: int = 0, fill: str | None = None,
               columns: dict[str, str] | None = None) -> Split:
    """Deterministic in its arguments (``--resume`` remakes it). The test part: the built-in
    set's own, a ``test`` file, or a stratified ``test_fraction`` of ``data`` (by ``seed``);
    validation: a stratified ``valid_fraction`` of the rest (by ``seed + 1``)."""
    full, test_part = load_source(data, columns)
    if test:
        test_part = read_file(test, **(columns or {}))
    record: dict[str, Any] = {"data": data, "seed": seed, "sequences": len(full)}
    rows = list(range(len(full)))
    if test_part is None and test_fraction:
        rows, te = stratified_split(full.y, test_fraction, seed=seed)
        record.update(test_fraction=test_fraction, test_rows=te)
        test_part = full.take(te)
    sub = full.take(rows)
    tr, va = stratified_split(sub.y, valid_fraction, seed=seed + 1)
    record.update(valid_fraction=valid_fraction, valid_rows=[rows[i] for i in va])
    parts = [fill_missing(p, fill, f"{data} ({name})") if p is not None else None
             for name, p in (("train", sub.take(tr)), ("valid", sub.take(va)),
                             ("test", test_part))]
    return Split(parts[0], parts[1], parts[2], record)


# -- batches --------------------------------------------------------------------------------------
def collate(seqs: Sequence[np.ndarray], labels: Sequence[int] | None = None
            ) -> dict[str, Tensor]:
    """Pad to the longest: ``x`` ``(B, T, *step)`` (zeros past each length; the model never
    reads them), ``lengths`` ``(B,)``, ``y`` ``(B,)`` when labels are given."""
    T = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), T, *seqs[0].shape[1:]), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
    b = {"x": torch.from_numpy(x), "lengths": torch.tensor([len(s) for s in seqs])}
    if labels is not None:
        b["y"] = torch.tensor(list(labels), dtype=torch.long)
    return b


class Batches(EpochBatches):
    """Endless training batches (:class:`EpochBatches`, in permutation order):
    ``next()`` -> ``{"x" (B, T, ...), "lengths" (B,), "y" (B,)}``."""

    def __init__(self, X: list[np.ndarray], y: list[int], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.X, self.y = X, y
        super().__init__(len(X), batch_size, seed, rank, world)

    def make(self, idx: np.ndarray) -> dict[str, Tensor]:
        return collate([self.X[i] for i in idx], [self.y[i] for i in idx])
