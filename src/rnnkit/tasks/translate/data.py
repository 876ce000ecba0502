"""Translation data: sentence pairs read from TSV/CSV/JSONL (source and target columns,
guessed or named), the built-in synthetic corpus (numbers → English number words), the fixed
split, and length-bucketed batches.

Files: ``.tsv``/``.txt`` tab-separated with standard quoting (a field holding a quote or tab
is quoted, as Python's ``csv`` writes it), ``.csv``, ``.jsonl``. A first row whose cells are
usual column names (``source``, ``target``, ``src``, ``tgt``, two-letter language codes such
as ``en``/``ko``, or a name given with ``--source-column``/``--target-column``) is a header.
Columns default to the first two. Rows with one column, or an empty source or target, are
skipped and counted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.batches import EpochBatches
from rnnkit.data.tables import parse_rows, resolve_column
from rnnkit.data.text import read_text_file
from rnnkit.tasks.common import CJK, holdout

HEADER_NAMES = {"source", "target", "src", "tgt", "input", "output", "text", "translation",
                "domain", "id"}
_LANG = re.compile(r"^[a-z]{2}([_-][A-Za-z]{2,4})?$")


@dataclass
class Pairs:
    """Source and target sentences as read, with the rows skipped per reason."""

    src: list[str]
    tgt: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    columns: tuple[str, str] = ("source", "target")
    origin: str = ""

    def __len__(self) -> int:
        return len(self.src)


def _column(c: str | None) -> str | int | None:
    return int(c) if c is not None and c.lstrip("-").isdigit() else c


def read_pairs(path: str | Path, source_column: str | None = None,
               target_column: str | None = None) -> Pairs:
    """The sentence pairs of a TSV/CSV/JSONL file (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a file of sentence pairs (.tsv, .csv, "
                         f".jsonl)")
    raw = read_text_file(path)
    ext = path.suffix.lower()
    sc, tc = _column(source_column), _column(target_column)
    skipped = {"one_column": 0, "empty": 0}
    if ext in (".jsonl", ".ndjson") or raw.lstrip().startswith("{"):
        cols, numbered = parse_rows(raw, "jsonl", path)
        rows, header = [v for _, v in numbered], cols or []
    else:
        delim = "," if ext == ".csv" else "\t"
        rows = [r for r in csv.reader(io.StringIO(raw), delimiter=delim)
                if any(c.strip() for c in r)]
        if not rows:
            raise ValueError(f"{path}: no data rows")
        first = [c.strip() for c in rows[0]]
        given = {c for c in (sc, tc) if isinstance(c, str)}
        is_header = all(c.lower() in HEADER_NAMES or _LANG.match(c) or c in given
                        for c in first if c) and len(first) >= 2
        header = first if is_header else [str(i) for i in range(max(len(r) for r in rows))]
        rows = rows[1:] if is_header else rows
    si = _resolve(sc, header, "source", path, 0)
    ti = _resolve(tc, header, "target", path, 1 if si != 1 else 0)
    if si == ti:
        raise ValueError(f"{path}: source and target are the same column ({header[si]!r})")
    src, tgt = [], []
    for r in rows:
        if len(r) <= max(si, ti):
            skipped["one_column"] += 1
            continue
        s, t = ("" if r[si] is None else str(r[si]).strip(),
                "" if r[ti] is None else str(r[ti]).strip())
        if not s or not t:
            skipped["empty"] += 1
            continue
        src.append(s)
        tgt.append(t)
    if not src:
        raise ValueError(f"{path}: no sentence pairs (skipped: {skipped['one_column']} rows with "
                         f"one column, {skipped['empty']} with an empty side)")
    return Pairs(src, tgt, skipped, (header[si], header[ti]), str(path))


def _resolve(col: str | int | None, header: list[str], what: str, path: Path, dflt: int) -> int:
    if col is None:
        if len(header) < 2:
            raise ValueError(f"{path}: expected a source and a target column, found one "
                             f"column ({header[0]!r})")
        return dflt
    return resolve_column(col, header, what, path)


def target_language(pairs: Pairs, given: str | None = None) -> str:
    """The target's language code: ``given``, else the target column's name when it is a
    language code, else ``"cjk"`` when most of the target characters are Hangul/kana/Han, else
    ``"other"``."""
    if given:
        return given
    name = pairs.columns[1]
    if _LANG.match(name):
        return name.split("-")[0].split("_")[0]
    sample = "".join(pairs.tgt[:500])
    letters = sum(ch.isalpha() for ch in sample)
    return "cjk" if letters and len(CJK.findall(sample)) / letters > 0.3 else "other"


# -- the built-in corpus ------------------------------------------------------------------------
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words of ``0 <= n < 10**9``: 4051 → ``four thousand fifty-one``."""
    if not 0 <= n < 10**9:
        raise ValueError(f"expected 0 <= n < 10**9, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for size, name in ((10**6, "million"), (1000, "thousand")):
        if n >= size:
            rest = n % size
            return number_words(n // size) + " " + name + ("" if rest == 0 else
                                                           " " + number_words(rest))
    raise AssertionError


def synthetic_pairs(n: int = 8000, seed: int = 0) -> Pairs:
    """The built-in corpus: ``n`` distinct numbers below a million (digits, grouped by
    thousands with commas half the time) and their English words, e.g. ``40,512`` →
    ``forty thousand five hundred twelve``. Deterministic in ``seed``; needs no data."""
    rng = np.random.default_rng(seed)
    mags = rng.integers(1, 7, size=4 * n)            # as many 2-digit numbers as 6-digit ones
    vals = (rng.random(4 * n) * 10.0 ** mags).astype(np.int64)
    seen: dict[int, None] = {}
    for v in vals.tolist():
        seen.setdefault(v, None)
        if len(seen) == n:
            break
    nums = list(seen)
    commas = rng.random(len(nums)) < 0.5
    src = [f"{v:,}" if c else str(v) for v, c in zip(nums, commas.tolist(), strict=True)]
    return Pairs(src, [number_words(v) for v in nums], {"one_column": 0, "empty": 0},
                 ("digits", "en"), f"synthetic:numbers:{n}:{seed}")


# -- the split ----------------------------------------------------------------------------------
@dataclass
class Split:
    train: tuple[list[str], list[str]]
    valid: tuple[list[str], list[str]]
    test: tuple[list[str], list[str]]
    record: dict[str, Any]


def make_split(pairs: Pairs, *, test_fraction: float = 0.05, valid_fraction: float = 0.05,
               seed: int = 0) -> Split:
    """Hold out ``test_fraction`` of the pairs by ``seed`` (a permutation by
    ``np.random.default_rng(seed)``: its first rows are the test split), then
    ``valid_fraction`` of all pairs from the rest (the next rows); the record lists the
    held-out row numbers."""
    N = len(pairs)
    te, va, tr = holdout(N, test_fraction, valid_fraction, seed, "pairs")

    def part(rows: list[int]) -> tuple[list[str], list[str]]:
        return [pairs.src[i] for i in rows], [pairs.tgt[i] for i in rows]

    record = {"data": pairs.origin, "rows": N, "seed": seed, "test_fraction": test_fraction,
              "valid_fraction": valid_fraction, "skipped": pairs.skipped,
              "columns": list(pairs.columns), "test_rows": te, "valid_rows": va}
    return Split(part(tr), part(va), part(te), record)


# -- batches ------------------------------------------------------------------------------------
def collate(src: Sequence[list[int]], tgt: Sequence[list[int]] | None, bos: int, eos: int
            ) -> dict[str, Tensor]:
    """Pad with 0: ``src`` ``(B, S)``, ``src_len`` ``(B,)``; with targets, ``y_in``
    ``(B, T+1)`` = BOS + target and ``y_out`` ``(B, T+1)`` = target + EOS."""
    B = len(src)
    S = max(len(s) for s in src)
    out = {"src": torch.zeros(B, S, dtype=torch.long),
           "src_len": torch.tensor([len(s) for s in src], dtype=torch.long)}
    for i, s in enumerate(src):
        out["src"][i, :len(s)] = torch.tensor(s, dtype=torch.long)
    if tgt is not None:
        T = max(len(t) for t in tgt) + 1
        y_in = torch.zeros(B, T, dtype=torch.long)
        y_out = torch.zeros(B, T, dtype=torch.long)
        for i, t in enumerate(tgt):
            y_in[i, :len(t) + 1] = torch.tensor([bos, *t], dtype=torch.long)
            y_out[i, :len(t) + 1] = torch.tensor([*t, eos], dtype=torch.long)
        out.update(y_in=y_in, y_out=y_out)
    return out


class PairStream(EpochBatches):
    """Endless training batches of pairs of similar length (:class:`EpochBatches` keyed by
    (source, target) length): ``next()`` -> :func:`collate`'s batch."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], batch_size: int, seed: int,
                 bos: int, eos: int, rank: int = 0, world: int = 1) -> None:
        self.src, self.tgt, self.bos, self.eos = src, tgt, bos, eos
        key = [len(s) * 1000 + len(t) for s, t in zip(src, tgt, strict=True)]
        super().__init__(len(src), batch_size, seed, rank, world, key=key)

    def make(self, idx: np.ndarray) -> dict[str, Tensor]:
        return collate([self.src[i] for i in idx], [self.tgt[i] for i in idx], self.bos,
                       self.eos)
