"""Labelled text for classification: CSV, TSV (with or without header) and JSONL files.

Formats: ``.csv`` (csv module, quoted multi-line fields), ``.tsv``/``.txt`` (tab-separated,
no quoting at all: quote characters are ordinary text, one line = one row), ``.jsonl``/
``.ndjson`` (one JSON object per line); other extensions are sniffed from the first line.
A header row is detected when one of its cells is a usual column name (text, label, id, ...)
or a column name passed by the caller; otherwise columns are named "0", "1", ...
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .text import read_text_file

TEXT_NAMES = ("text", "document", "sentence", "review", "message", "content", "sms", "transcript")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "y")
HEADER_NAMES = {*TEXT_NAMES, *LABEL_NAMES, "id", "title", "body", "tweet", "comment", "question"}

Column = str | int | None


@dataclass
class LabelledData:
    """Texts with string labels, as read from a file."""

    texts: list[str]
    labels: list[str]
    skipped_empty: int  # rows whose text was empty or whitespace-only
    columns: list[str]  # all column names (headerless files: "0", "1", ...)
    format: str  # "csv" | "tsv" | "jsonl"
    text_column: str = ""
    label_column: str = ""

    def __len__(self) -> int:
        return len(self.texts)


def _sniff_format(path: Path, text: str) -> str:
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv", ".jsonl", ".ndjson"):
        return {".ndjson": "jsonl"}.get(ext, ext[1:])
    first = next((ln for ln in text.split("\n") if ln.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in first or ext == ".txt" else "csv"


def parse_rows(text: str, fmt: str, path: Path) -> tuple[list[str] | None, list[tuple[int, list]]]:
    """(column names, or None when the first row may be a header; [(line number, values)])."""
    if fmt == "jsonl":
        rows, keys = [], {}
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {n} is not a JSON object")
            keys.update(dict.fromkeys(obj))
            rows.append((n, obj))
        cols = [str(k) for k in keys]
        return cols, [(n, [obj.get(k) for k in keys]) for n, obj in rows]
    if fmt == "tsv":
        lines = enumerate(text.split("\n"), 1)
        return None, [(n, line.split("\t")) for n, line in lines if line.strip()]
    reader = csv.reader(io.StringIO(text))
    out = []
    for row in reader:
        if any(c.strip() for c in row):
            out.append((reader.line_num, row))
    return None, out


def resolve_column(col: Column, columns: list[str], what: str, path: Path) -> int | None:
    if col is None:
        return None
    if isinstance(col, int) and -len(columns) <= col < len(columns):
        return col % len(columns)
    if isinstance(col, str) and col in columns:
        return columns.index(col)
    raise ValueError(f"{path}: {what} column {col!r} not found; columns are: "
                     f"{', '.join(repr(c) for c in columns)}")


def _by_name(names: Sequence[str], columns: list[str], exclude: int | None) -> int | None:
    low = [c.strip().lower() for c in columns]
    for name in names:
        if name in low and low.index(name) != exclude:
            return low.index(name)
    return None


def read_labelled(path: str | os.PathLike[str], *, text_column: Column = None,
                  label_column: Column = None, header: bool | None = None) -> LabelledData:
    """Read a labelled text file (see module docstring for formats).

    Columns may be given by name or index. Defaults: text = first of ``TEXT_NAMES`` present,
    else the column with the longest average value; label = first of ``LABEL_NAMES`` present,
    else the remaining column with the fewest distinct values. ``header`` forces (True) or
    forbids (False) treating the first row as a header (CSV/TSV; default: detect).
    Empty/whitespace texts are skipped and counted; a missing label raises ValueError naming
    the line. Labels are returned as stripped strings."""
    path = Path(path)
    fmt = _sniff_format(path, raw := read_text_file(path))
    columns, rows = parse_rows(raw, fmt, path)
    if columns is None:  # csv / tsv: header row or not?
        first = [c.strip() for c in rows[0][1]] if rows else []
        given = {c for c in (text_column, label_column) if isinstance(c, str)}
        if header is None:
            header = any(c.lower() in HEADER_NAMES or c in given for c in first)
        if header:
            columns, rows = first, rows[1:]
        else:
            columns = [str(i) for i in range(max((len(r) for _, r in rows), default=0))]
    if not rows:
        raise ValueError(f"{path}: no data rows")

    def cell(row: list, j: int) -> str:
        v = row[j] if j < len(row) else None
        return "" if v is None else v if isinstance(v, str) else json.dumps(v)

    ti = resolve_column(text_column, columns, "text", path)
    li = resolve_column(label_column, columns, "label", path)
    sample = [r for _, r in rows[:2000]]
    if ti is None:
        ti = _by_name(TEXT_NAMES, columns, li)
        if ti is None:
            total = [sum(len(cell(r, j)) for r in sample) for j in range(len(columns))]
            ti = max((j for j in range(len(columns)) if j != li), key=lambda j: total[j],
                     default=None)
    if li is None:
        li = _by_name(LABEL_NAMES, columns, ti)
        if li is None:
            others = [j for j in range(len(columns)) if j != ti]
            li = min(others, key=lambda j: len({cell(r, j) for r in sample}), default=None)
    if ti is None or li is None or ti == li:
        raise ValueError(f"{path}: need distinct text and label columns; columns are: "
                         f"{', '.join(repr(c) for c in columns)}")

    texts, labels, skipped = [], [], 0
    for n, row in rows:
        short = [columns[j] for j in (ti, li) if j >= len(row) or row[j] is None]
        if short:
            raise ValueError(f"{path}: line {n} has no {' and no '.join(map(repr, short))} "
                             f"field ({sum(v is not None for v in row)} field(s); the text "
                             f"column is "
                             f"{columns[ti]!r}, the label column {columns[li]!r})")
        t, y = cell(row, ti), cell(row, li).strip()
        if not t.strip():
            skipped += 1
            continue
        if not y:
            raise ValueError(f"{path}: line {n} has no label (column {columns[li]!r})")
        texts.append(t)
        labels.append(y)
    return LabelledData(texts, labels, skipped, columns, fmt, columns[ti], columns[li])


def stratified_split(labels: Sequence[Hashable], fraction: float,
                     seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic stratified split -> (train indices, test indices), both sorted.
    Each class contributes round(fraction * its size) examples to the test side, clamped so
    that every class with >= 2 examples appears on both sides (singletons go to train)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        groups[y].append(i)
    rng = random.Random(seed)
    train, test = [], []
    for y in sorted(groups, key=repr):
        idx = groups[y]
        rng.shuffle(idx)
        k = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if len(idx) >= 2 else 0
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)
