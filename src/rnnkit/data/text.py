"""Plain-text corpora for language modelling: strict UTF-8 reading, folders, the Python
standard library as a built-in corpus, and deterministic train/validation splits.

A corpus is a list of ``(name, text)`` documents.
"""

from __future__ import annotations

import codecs
import os
import random
import re
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

Docs = list[tuple[str, str]]

_BOM = b"\xef\xbb\xbf"


def decode_utf8(data: bytes, name: str | os.PathLike[str]) -> str:
    """Decode bytes as UTF-8 (a leading BOM is stripped, newlines normalised to "\\n" like
    ``open()`` does). Binary data (NUL bytes) or invalid UTF-8 -> ``ValueError`` naming ``name``
    and the byte offset of the first bad byte."""
    start = len(_BOM) if data.startswith(_BOM) else 0
    nul, bad, text = data.find(b"\0", start), -1, ""
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = start + e.start
    if nul >= 0 and (bad < 0 or nul < bad):
        raise ValueError(f"{name} is not UTF-8 text: NUL byte (binary file?) at byte offset {nul}")
    if bad >= 0:
        raise ValueError(f"{name} is not UTF-8 text: invalid byte 0x{data[bad]:02x} "
                         f"at byte offset {bad}")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_pieces(stream: BinaryIO, name: str, max_chars: int = 4096,
                by_line: bool = True) -> Iterator[str]:
    """Text from a binary stream (a file, ``sys.stdin.buffer``) in bounded pieces, decoded as
    strict UTF-8 like :func:`decode_utf8` (a bad byte is a ValueError naming ``name`` and its
    byte offset; a leading BOM is dropped). ``by_line``: one piece per line, its newline kept,
    a line longer than ``max_chars`` cut into pieces of ``max_chars``; else pieces of exactly
    ``max_chars`` characters (the last one shorter). Memory stays bounded by ``max_chars``."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    dec = codecs.getincrementaldecoder("utf-8")()
    done, text, first = 0, "", True
    while True:
        data = stream.readline(4 * max_chars) if by_line else stream.read(4 * max_chars)
        held = len(dec.getstate()[0])
        try:
            text += dec.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise ValueError(f"{name} is not UTF-8 text: invalid byte at byte offset "
                             f"{done - held + e.start}") from None
        done += len(data)
        if by_line:  # newlines as open() reads them
            text = text.replace("\r\n", "\n")
        if first and text:
            first = False
            text = text.removeprefix("\ufeff")
        while len(text) >= max_chars or (text and (not data or (by_line and
                                                                text.endswith("\n")))):
            cut = len(text) if by_line and len(text) < max_chars else max_chars
            yield text[:cut]
            text = text[cut:]
        if not data:
            return


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file. Missing -> FileNotFoundError; empty, binary or not UTF-8 ->
    ValueError naming the file (and the byte offset of the first bad byte)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a text file")
    data = p.read_bytes()
    if not data or data == _BOM:
        raise ValueError(f"{path} is empty")
    return decode_utf8(data, path)


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def load_corpus(path: str | os.PathLike[str]) -> Docs:
    """A file -> ``[(file name, text)]``. A folder -> every non-hidden file under it
    (recursively, hidden files/folders skipped), named by relative path and sorted by it.
    Empty files in a folder are skipped; a file that is not UTF-8 text raises ValueError
    (naming it and the bad byte offset) rather than being silently dropped."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if root.is_file():
        return [(root.name, read_text_file(root))]
    files = sorted((f.relative_to(root) for f in root.rglob("*") if f.is_file()),
                   key=lambda r: r.as_posix())
    docs = [(r.as_posix(), read_text_file(root / r)) for r in files
            if _visible(r) and (root / r).stat().st_size > 0]
    if not docs:
        raise ValueError(f"{path}: folder contains no (non-empty, non-hidden) text files")
    return docs


_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                "__pycache__"}

# A file whose first three lines say it was generated (gencodec.py's codecs, the Sphinx topics
# dump pydoc_data/topics.py, _sysconfigdata*, token.py, keyword.py, stringprep.py,
# re/_casefix.py), or any "Python Character Mapping Codec" (encodings/cp*.py, iso8859_*.py,
# mac_*.py, ...: a 256-entry decoding table, hand-made ones included).
_GENERATED = re.compile(r"auto-?generated|automatically generated|generated (?:from|by|and used by)"
                        r"|do not edit", re.IGNORECASE)


def is_generated(text: str) -> bool:
    """True for machine-generated Python files and character-mapping tables: data, not code
    someone wrote (see ``stdlib_corpus``)."""
    head = "\n".join(text.split("\n", 3)[:3])
    return text.startswith('""" Python Character Mapping Codec') or bool(_GENERATED.search(head))


def spread_select(docs: Sequence[tuple[str, str]], max_size: int,
                  size: Callable[[str], int] = len) -> Docs:
    """The documents that fit in ``max_size`` (measured by ``size``, default characters), taken
    in a deterministic spread order (every k-th document, then the next offset, ..., with k
    the number of documents of average size that would fill ``max_size`` once over), so a
    small selection still covers the whole list; the original order is kept."""
    docs = list(docs)
    if not docs:
        return []
    sizes = [size(t) for _, t in docs]
    mean = max(1, sum(sizes) // len(docs))
    k = max(1, len(docs) * mean // max(1, max_size))
    chosen, total = [], 0
    for i in (i for off in range(k) for i in range(off, len(docs), k)):
        if 0 < sizes[i] and total + sizes[i] <= max_size:
            chosen.append(i)
            total += sizes[i]
    return [docs[i] for i in sorted(chosen)]


def stdlib_corpus(max_bytes: int | None = None, code_only: bool = True) -> Docs:
    """The running interpreter's standard library ``.py`` files (no site-packages, test suites,
    idlelib, lib2to3), named by path relative to the stdlib and sorted by it. Files that are
    not UTF-8 are skipped silently.

    ``code_only`` (default) also leaves out the files that are data rather than code someone
    wrote (:func:`is_generated`): the ~70 character-mapping codecs of ``encodings/`` (each a
    256-entry table of escaped characters and Unicode names, 1.4 MB together, 14% of a capped
    corpus before) and a handful of generated files (``pydoc_data/topics.py``, 0.76 MB of
    documentation text in one string; ``_sysconfigdata*``; ``token.py``, ``keyword.py``,
    ``stringprep.py``, ``re/_casefix.py``): 2.1 MB of 11 MB on CPython 3.11. Hand-written
    modules that hold tables (``locale.py``, ``html/entities.py``) stay.

    With ``max_bytes``, files are taken in a deterministic spread order
    (:func:`spread_select`) while they fit, so a small corpus still covers many modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _STDLIB_SKIP and not x.startswith(".")]
        files += [(Path(d) / n).relative_to(root) for n in names
                  if n.endswith(".py") and not n.startswith(".")]
    files.sort(key=lambda r: r.as_posix())
    docs = []
    for r in files:
        try:
            text = decode_utf8((root / r).read_bytes(), r)
        except (ValueError, OSError):
            continue
        if text and not (code_only and is_generated(text)):
            docs.append((r.as_posix(), text))
    if max_bytes is not None:
        docs = spread_select(docs, max_bytes, size=lambda t: len(t.encode()))
    return docs


def split_by_file(docs: Sequence[tuple[str, str]], valid_fraction: float = 0.1,
                  seed: int = 0) -> tuple[Docs, Docs]:
    """Deterministic train/validation split. With >= 2 documents, whole files go to one side
    (seeded shuffle; at least one file on each side; original order kept within each). With a
    single document, its text is cut at the (1 - valid_fraction) point and the last part is
    validation (the classic "last 10%" split for e.g. tinyshakespeare)."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    docs = list(docs)
    if not docs:
        raise ValueError("cannot split an empty corpus")
    if len(docs) == 1:
        name, text = docs[0]
        cut = int(len(text) * (1 - valid_fraction))
        return [(name, text[:cut])], [(name, text[cut:])]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_valid = min(len(docs) - 1, max(1, round(len(docs) * valid_fraction)))
    valid = set(order[:n_valid])
    return ([d for i, d in enumerate(docs) if i not in valid],
            [d for i, d in enumerate(docs) if i in valid])


def join_docs(docs: Sequence[tuple[str, str]], sep: str = "\n\n") -> str:
    """Concatenate document texts with ``sep`` between them."""
    return sep.join(text for _, text in docs)
