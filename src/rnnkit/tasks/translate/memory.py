"""Translation memory: each source is given to the encoder together with the translation of
its nearest training source ("Neural Fuzzy Repair", Bulte & Tezcan 2019), so the network
learns to keep what the fuzzy match got right and to repair the rest.

The encoder reads ``source ids + [SEP_k] + match ids``. The separators are the ``n_sep``
ids just past the source tokenizer's vocabulary ``Vs``, and the match is tokenized by the
*target* tokenizer, its id ``t`` read as ``Vs + n_sep + t`` (so the encoder's vocabulary is
``Vs + n_sep + Vt``): the match is cut into the very pieces the decoder writes, and keeping a
piece is an identity to learn. With similarity ``bands`` (edges, e.g. 0.6, 0.7, 0.8, 0.9,
0.95), the separator says how close the match's *source* is to the sentence: ``SEP_0`` for no
match, ``SEP_k`` for the k-th band from ``min_sim`` up. The network never sees the match's
source, so without the band it cannot tell a 0.95 match (keep it) from a 0.55 one (rewrite
it); without bands there is one separator (``n_sep = 1``).
The match is the target of the training source nearest by the retrieval baseline's
character n-gram TF-IDF cosine (:class:`~rnnkit.tasks.translate.metrics.Retrieval`), never
the pair itself for a training pair, and is left out (the source alone, then ``SEP``) when
the cosine is below ``min_sim``. The memory (the training pairs) is written to the run
folder as ``memory.jsonl``, so that a trained model translates with no data file.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.translate.metrics import Retrieval

FILE = "memory.jsonl"
SEP_TEXT = "‖"  # how SEP is shown (attention pictures)


class Memory:
    """The training pairs ``src``/``tgt`` as a translation memory (see the module
    docstring)."""

    def __init__(self, src: Sequence[str], tgt: Sequence[str], min_sim: float = 0.5,
                 bands: Sequence[float] = ()) -> None:
        if len(src) != len(tgt) or not src:
            raise ValueError(f"a translation memory needs one target per source and at least "
                             f"one pair, got {len(src)} sources and {len(tgt)} targets")
        self.src, self.tgt, self.min_sim = list(src), list(tgt), float(min_sim)
        self.bands = tuple(float(b) for b in bands)
        if list(self.bands) != sorted(set(self.bands)) or any(
                not self.min_sim < b <= 1 for b in self.bands):
            raise ValueError(f"similarity bands must be increasing edges above min_sim "
                             f"({self.min_sim:g}) and at most 1, got {list(self.bands)}")
        self.retrieval = Retrieval(self.src, self.tgt)

    @property
    def n_sep(self) -> int:
        """Separator ids: 1 without bands, else one for "no match" and one per band."""
        return len(self.bands) + 2 if self.bands else 1

    def lookup(self, texts: Sequence[str], training: bool = False
               ) -> tuple[list[str], list[int]]:
        """Per text, its fuzzy match (the target of its nearest memory source, or ``""``
        below ``min_sim``) and its separator ``k`` (0 .. ``n_sep - 1``: 0 for no match, else
        the similarity band from ``min_sim`` up; always 0 without bands). ``training``:
        ``texts`` are the memory's own sources, in order, and none is matched with itself."""
        if training and list(texts) != self.src:
            raise ValueError("training=True expects the memory's own sources, in order")
        idx, sim = self.retrieval.nearest(texts, exclude_self=training)
        hit = [float(s) >= self.min_sim for s in sim]
        return ([self.tgt[i] if h else "" for i, h in zip(idx, hit, strict=True)],
                [1 + bisect.bisect_right(self.bands, float(s)) if h and self.bands else 0
                 for s, h in zip(sim, hit, strict=True)])

    def matches(self, texts: Sequence[str], training: bool = False) -> list[str]:
        """The fuzzy match of each text (:meth:`lookup` without the separators)."""
        return self.lookup(texts, training)[0]

    def sha256(self) -> str:
        return hashlib.sha256(self.to_jsonl().encode()).hexdigest()

    def to_jsonl(self) -> str:
        return "".join(json.dumps({"source": a, "target": b}, ensure_ascii=False) + "\n"
                       for a, b in zip(self.src, self.tgt, strict=True))

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / FILE
        ckpt.atomic_write(path, self.to_jsonl())
        return path

    @classmethod
    def load(cls, checkpoint: str | Path, sha256: str | None, min_sim: float,
             bands: Sequence[float] = ()) -> Memory:
        """The memory of the run a checkpoint folder belongs to (``memory.jsonl`` in the
        folder or the run folder above it), checked against the ``sha256`` its config
        recorded."""
        d = Path(checkpoint)
        path = next((p / FILE for p in (d, d.parent) if (p / FILE).is_file()), None)
        if path is None:
            raise ValueError(f"{d} was trained with a translation memory (--fuzzy), but no "
                             f"{FILE} is beside it or in {d.parent}; copy the run folder's "
                             f"{FILE} along with the checkpoint")
        src, tgt = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
                src.append(row["source"])
                tgt.append(row["target"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: expected a JSON object with 'source' and "
                                 f"'target', got {line[:80]!r}") from None
        mem = cls(src, tgt, min_sim, bands)
        if sha256 is not None and mem.sha256() != sha256:
            raise ValueError(f"{path} is not the memory this model was trained with (its "
                             f"sha256 differs from the one in config.json)")
        return mem


def with_match(src_ids: list[int], match_ids: list[int], sep: int, k: int = 0,
               n_sep: int = 1) -> list[int]:
    """The encoder's input: ``src_ids + [sep + k]`` (separator ``k`` of ``n_sep``) then the
    match's target-tokenizer ids ``match_ids`` shifted past the separators."""
    if not 0 <= k < n_sep:
        raise ValueError(f"separator {k} out of range for {n_sep} separator(s)")
    return [*src_ids, sep + k, *(sep + n_sep + t for t in match_ids)]
