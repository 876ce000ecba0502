"""Translation with an encoder–decoder with attention: ``rnnkit train translate``,
``rnnkit translate RUN``, ``rnnkit eval RUN``.

Slots: ``model.py`` (:class:`rnnkit.seq2seq.Seq2Seq` built from a config, batched decoding),
``data.py`` (pairs from TSV/CSV/JSONL, the built-in numbers-to-words corpus, the split,
:class:`PairStream` batches), ``task.py`` (:class:`TranslateTask` for the trainer),
``api.py`` (:func:`load` -> :class:`Translator`: ``translate``, ``attention``, ``evaluate``),
``metrics.py`` (sacrebleu chrF/BLEU, copy and retrieval baselines), ``plot.py``, ``cli.py``
(``SPEC``).
"""

__all__ = [
    "SPEC", "PairStream", "Pairs", "Retrieval", "TranslateTask", "Translator", "baselines",
    "build_model", "collate", "load", "make_split", "number_words", "read_pairs", "scores",
    "synthetic_pairs", "translate_ids",
]

from rnnkit.tasks.translate.api import Translator, load
from rnnkit.tasks.translate.cli import SPEC
from rnnkit.tasks.translate.data import (
    Pairs,
    PairStream,
    collate,
    make_split,
    number_words,
    read_pairs,
    synthetic_pairs,
)
from rnnkit.tasks.translate.metrics import Retrieval, baselines, scores
from rnnkit.tasks.translate.model import build_model, translate_ids
from rnnkit.tasks.translate.task import TranslateTask
