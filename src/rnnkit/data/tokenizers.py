"""Tokenizers behind one small interface: ``char``, ``jamo``, ``word`` and ``bpe``.

Every tokenizer reserves id 0 for ``<pad>`` and id 1 for ``<unk>``. ``encode`` never raises:
symbols outside the vocabulary become ``unk_id``. ``decode`` drops pad ids and renders unk ids
as U+FFFD (``"\\ufffd"``) for char/jamo/bpe and as ``"<unk>"`` for the word tokenizer (where it
stands for a whole word). ``to_json`` returns a plain dict (no pickle) that
``tokenizer_from_json`` turns back into an identical tokenizer.

Round trips: ``char`` is exact for text whose characters are all in the vocabulary (after
optional lowercasing); ``jamo`` is exact for NFC text (what almost all Korean text is) whose
jamo/characters are in the vocabulary; ``bpe`` is byte-level, so it has no unknown symbols at
all and ``decode(encode(x)) == x`` for every string; ``word`` joins words with single spaces and
is not an exact round trip.
"""

from __future__ import annotations

import abc
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

KINDS = ("char", "jamo", "word", "bpe")
UNK_TEXT = "\ufffd"


class StreamDecoder:
    """Incremental decoder for generation: ``feed(id)`` returns the text that became final
    with that id (possibly ``""``); ``flush()`` returns whatever is still held back.
    The concatenation of all returned strings equals ``tokenizer.decode(all_ids)``."""

    def __init__(self, piece: Callable[[int], str], sep: str = "") -> None:
        self._piece, self._sep, self._started = piece, sep, False

    def feed(self, i: int) -> str:
        if i == Tokenizer.pad_id:
            return ""
        out = (self._sep if self._started else "") + self._piece(i)
        self._started = True
        return out

    def flush(self) -> str:
        return ""


class Tokenizer(abc.ABC):
    """Common interface. ids 0/1 are always ``<pad>``/``<unk>``."""

    kind: str
    PAD = "<pad>"
    UNK = "<unk>"
    pad_id = 0
    unk_id = 1

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids; unknown symbols map to ``unk_id``."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; pad ids are dropped, unk ids rendered (see module docstring)."""

    @abc.abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        """A fresh incremental decoder (see ``StreamDecoder``)."""

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict with everything needed to rebuild this tokenizer."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------
# vocabulary-list tokenizers: char, jamo, word


class _VocabTokenizer(Tokenizer):
    """Tokenizer over an explicit list of symbols ``itos`` (itos[0:2] == [<pad>, <unk>])."""

    unk_text = UNK_TEXT

    def __init__(self, itos: Sequence[str], lowercase: bool = False) -> None:
        itos = list(itos)
        if itos[:2] != [self.PAD, self.UNK]:
            raise ValueError(f"vocabulary must start with {self.PAD!r}, {self.UNK!r}")
        if len(set(itos)) != len(itos):
            raise ValueError("vocabulary contains duplicate symbols")
        self.itos, self.lowercase = itos, lowercase
        self.stoi = {s: i for i, s in enumerate(itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def split(self, text: str) -> list[str]:
        """Text -> list of symbols (before vocabulary lookup)."""
        return list(text.lower() if self.lowercase else text)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(s, self.unk_id) for s in self.split(text)]

    def _piece(self, i: int) -> str:
        return self.unk_text if i == self.unk_id or not 0 <= i < len(self.itos) else self.itos[i]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._piece(int(i)) for i in ids if i != self.pad_id)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self._piece)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowercase": self.lowercase, "itos": self.itos}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None, min_freq: int,
              lowercase: bool) -> _VocabTokenizer:
        """Vocabulary = symbols with count >= min_freq, most frequent first, ties by symbol."""
        splitter = cls([cls.PAD, cls.UNK], lowercase)
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(splitter.split(t))
        if not counts:
            raise ValueError(f"cannot build a {cls.kind!r} tokenizer from no text")
        symbols = sorted((s for s, c in counts.items() if c >= min_freq and s not in
                          (cls.PAD, cls.UNK)), key=lambda s: (-counts[s], s))
        if vocab_size is not None:
            if vocab_size < 3:
                raise ValueError(f"vocab_size must be >= 3 (pad, unk, a symbol), got {vocab_size}")
            symbols = symbols[: vocab_size - 2]
        return cls([cls.PAD, cls.UNK, *symbols], lowercase)


class CharTokenizer(_VocabTokenizer):
    """One token per Unicode code point."""

    kind = "char"


class JamoTokenizer(_VocabTokenizer):
    """Hangul syllables decomposed (NFD) into conjoining jamo, one token per code point;
    decode recomposes with NFC."""

    kind = "jamo"

    def split(self, text: str) -> list[str]:
        return list(unicodedata.normalize("NFD", text.lower() if self.lowercase else text))

    def decode(self, ids: Sequence[int]) -> str:
        return unicodedata.normalize("NFC", super().decode(ids))

    def stream_decoder(self) -> StreamDecoder:
        return _JamoStreamDecoder(self._piece)


@functools.cache
def _backward_combiners() -> frozenset[str]:
    """Starters (ccc 0) that NFC can merge into the preceding character: the second half of
    every canonical pair decomposition (e.g. Indic vowel signs). Built once, ~0.3 s."""
    out = set()
    for cp in range(0x110000):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<") and len(parts := d.split()) == 2:
            out.add(chr(int(parts[1], 16)))
    return frozenset(out)


def _combines_backward(c: str) -> bool:
    """True if ``c`` may change the NFC form of the text before it."""
    return (unicodedata.combining(c) != 0 or "\u1160" <= c <= "\u11ff"  # medial/final jamo
            or "\ud7b0" <= c <= "\ud7ff" or c in _backward_combiners())


class _JamoStreamDecoder(StreamDecoder):
    """Holds back the last starter and anything that may still combine with it, so only text
    that can no longer change under NFC is emitted (whole syllables, never half of one)."""

    def __init__(self, piece: Callable[[int], str]) -> None:
        super().__init__(piece)
        self._pending = ""

    def feed(self, i: int) -> str:
        if i == Tokenizer.pad_id:
            return ""
        out = ""
        for c in self._piece(i):
            if self._pending and not _combines_backward(c):
                out += unicodedata.normalize("NFC", self._pending)
                self._pending = ""
            self._pending += c
        return out

    def flush(self) -> str:
        out, self._pending = unicodedata.normalize("NFC", self._pending), ""
        return out


class WordTokenizer(_VocabTokenizer):
    """Words (``\\w+``, Unicode-aware, so Korean works) and single punctuation marks.
    Decode joins tokens with single spaces: NOT an exact round trip."""

    kind = "word"
    unk_text = Tokenizer.UNK
    pattern = re.compile(r"\w+|[^\w\s]")

    def split(self, text: str) -> list[str]:
        return self.pattern.findall(text.lower() if self.lowercase else text)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self._piece(int(i)) for i in ids if i != self.pad_id)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self._piece, sep=" ")


# ----------------------------------------------------------------------------------------------
# byte-level BPE (Hugging Face tokenizers)


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face ``tokenizers`` (GPT-2 style pre-tokenizer/decoder).
    Every string is encodable without unknowns and ``decode(encode(x)) == x``. The literal
    strings "<pad>"/"<unk>" in input text are encoded as ordinary text, never as ids 0/1."""

    kind = "bpe"

    def __init__(self, hf: Any) -> None:
        if hf.token_to_id(self.PAD) != self.pad_id or hf.token_to_id(self.UNK) != self.unk_id:
            raise ValueError("BPE tokenizer must have <pad>=0 and <unk>=1")
        hf.encode_special_tokens = True  # not serialised by HF; set on every construction
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        chunks: list[list[int]] = [[]]
        for i in ids:
            if i == self.unk_id:
                chunks.append([])
            elif i != self.pad_id:
                chunks[-1].append(int(i))
        return UNK_TEXT.join(self.hf.decode(c, skip_special_tokens=False) for c in chunks)

    def stream_decoder(self) -> StreamDecoder:
        return _BPEStreamDecoder(self)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hf": self.hf.to_str()}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None, min_freq: int,
              lowercase: bool) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        texts = [t for t in texts if t]
        if not texts:
            raise ValueError("cannot build a 'bpe' tokenizer from no text")
        hf = HFTokenizer(models.BPE(unk_token=cls.UNK))
        if lowercase:
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or 8000, min_frequency=min_freq, show_progress=False,
            special_tokens=[cls.PAD, cls.UNK], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer)
        return cls(hf)


class _BPEStreamDecoder(StreamDecoder):
    """Holds back tokens while the bytes so far end in an incomplete UTF-8 character."""

    def __init__(self, tok: BPETokenizer) -> None:
        super().__init__(tok.decode)
        self._tok, self._ids = tok, []

    def feed(self, i: int) -> str:
        if i == Tokenizer.pad_id:
            return ""
        if i == Tokenizer.unk_id:
            return self.flush() + UNK_TEXT
        self._ids.append(int(i))
        text = self._tok.decode(self._ids)
        if text.endswith(UNK_TEXT):  # lossy decode of a partial multi-byte character: wait
            return ""
        self._ids = []
        return text

    def flush(self) -> str:
        out, self._ids = self._tok.decode(self._ids), []
        return out


# ----------------------------------------------------------------------------------------------

_CLASSES: dict[str, type] = {"char": CharTokenizer, "jamo": JamoTokenizer,
                             "word": WordTokenizer, "bpe": BPETokenizer}


def _check_kind(kind: Any) -> None:
    if kind not in _CLASSES:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def build_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int | None = None,
                    min_freq: int = 1, lowercase: bool = False) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``texts``. ``vocab_size`` counts the two special
    tokens; it caps char/jamo/word vocabularies (None = no cap) and is the BPE target size
    (default 8000). Symbols seen fewer than ``min_freq`` times are left out."""
    _check_kind(kind)
    if isinstance(texts, str):
        texts = [texts]
    return _CLASSES[kind].train(texts, vocab_size, min_freq, lowercase)


def tokenizer_from_json(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_json()`` output."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"not a tokenizer description (no 'kind'); kinds: {', '.join(KINDS)}")
    _check_kind(d["kind"])
    if d["kind"] == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(d["hf"]))
    return _CLASSES[d["kind"]](d["itos"], lowercase=d.get("lowercase", False))
