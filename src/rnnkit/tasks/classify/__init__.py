"""Text classification with recurrent models, and streaming scores for live text.

Slots: ``model.py`` (:class:`Classifier` and its pooling, also chunk by chunk), ``data.py``
(columns, the split, tokens, bucketed batches), ``task.py`` (:class:`ClassifyTask` for the
trainer), ``api.py`` (:func:`load` -> :class:`TextClassifier`: ``predict``,
``predict_proba``, ``stream``), ``metrics.py``, ``cli.py`` (``rnnkit train classify``,
``rnnkit predict``, ``rnnkit eval``; ``SPEC``).
"""

__all__ = [
    "MAX_HELD", "POOLS", "SPEC", "TRUNCATE", "BucketStream", "Classifier", "ClassifyTask",
    "Split", "StreamSession", "TextClassifier", "collate", "load", "make_split",
    "predict_proba_ids", "run_chunk", "stable_prefix", "truncate",
]

from rnnkit.tasks.classify.api import StreamSession, TextClassifier, load, run_chunk
from rnnkit.tasks.classify.cli import SPEC
from rnnkit.tasks.classify.data import (
    MAX_HELD,
    TRUNCATE,
    BucketStream,
    Split,
    collate,
    make_split,
    stable_prefix,
    truncate,
)
from rnnkit.tasks.classify.model import POOLS, Classifier
from rnnkit.tasks.classify.task import ClassifyTask, predict_proba_ids
