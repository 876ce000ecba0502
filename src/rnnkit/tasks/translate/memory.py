"""Translation memory: each source is given to the encoder together with the translation of
its nearest training source ("Neural Fuzzy Repair", Bulte & Tezcan 2019), so the network
learns to keep what the fuzzy match got right and to repair the rest.

The encoder reads ``source ids + [SEP] + match ids``: ``SEP`` is the id just past the source
tokenizer's vocabulary ``Vs``, and the match is tokenized by the *target* tokenizer, its id
``t`` read as ``Vs + 1 + t`` (so the encoder's vocabulary is ``Vs + 1 + Vt``): the match is
cut into the very pieces the decoder writes, and keeping a piece is an identity to learn.
The match is the target of the training source nearest by the retrieval baseline's
character n-gram TF-IDF cosine (:class:`~rnnkit.tasks.translate.metrics.Retrieval`), never
the pair itself for a training pair, and is left out (the source alone, then ``SEP``) when
the cosine is below ``min_sim``. The memory (the training pairs) is written to the run
folder as ``memory.jsonl``, so that a trained model translates with no data file.
"""

from __future__ import annotations

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

    def __init__(self, src: Sequence[str], tgt: Sequence[str], min_sim: float = 0.5) -> None:
        if len(src) != len(tgt) or not src:
            raise ValueError(f"a translation memory needs one target per source and at least "
                             f"one pair, got {len(src)} sources and {len(tgt)} targets")
        self.src, self.tgt, self.min_sim = list(src), list(tgt), float(min_sim)
        self.retrieval = Retrieval(self.src, self.tgt)

    def matches(self, texts: Sequence[str], training: bool = False) -> list[str]:
        """The fuzzy match of each text: the target of its nearest memory source, or ``""``
        below ``min_sim``. ``training``: ``texts`` are the memory's own sources, in order,
        and none is matched with itself."""
        if training and list(texts) != self.src:
            raise ValueError("training=True expects the memory's own sources, in order")
        idx, sim = self.retrieval.nearest(texts, exclude_self=training)
        return [self.tgt[i] if s >= self.min_sim else "" for i, s in zip(idx, sim, strict=True)]

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
    def load(cls, checkpoint: str | Path, sha256: str | None, min_sim: float) -> Memory:
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
        mem = cls(src, tgt, min_sim)
        if sha256 is not None and mem.sha256() != sha256:
            raise ValueError(f"{path} is not the memory this model was trained with (its "
                             f"sha256 differs from the one in config.json)")
        return mem


def with_match(src_ids: list[int], match_ids: list[int], sep: int) -> list[int]:
    """The encoder's input: ``src_ids + [sep]`` then the match's target-tokenizer ids
    ``match_ids`` shifted past ``sep``."""
    return [*src_ids, sep, *(sep + 1 + t for t in match_ids)]
