"""Classifying sequences of real-valued vectors (sensor streams) and of video frames, with
running predictions.

Slots: ``model.py`` (:class:`SequenceClassifier`, :class:`FrameCNN`), ``data.py`` (readers,
built-in sets, NaN, normalisation statistics, the split, batches), ``video.py`` (clips:
``moving-digits``, folders of frames), ``task.py`` (:class:`SequenceTask`, windows,
baselines), ``api.py`` (:func:`load` -> :class:`SequenceModel`: ``predict``,
``predict_proba``, ``early``, ``stream``), ``cli.py`` (``rnnkit train sequences``,
``rnnkit eval``, ``rnnkit predict``; ``SPEC``).
"""

__all__ = [
    "BUILTINS", "SPEC", "FrameCNN", "SequenceClassifier", "SequenceModel", "SequenceTask",
    "Sequences", "Split", "StreamSession", "baselines", "builtin", "collate", "feature_stats",
    "fill_missing", "from_arrays", "load", "make_split", "predict_proba", "read_file",
    "read_long_csv", "read_npz", "read_ts", "synthetic", "windows",
]

from rnnkit.tasks.sequences.api import SequenceModel, StreamSession, load
from rnnkit.tasks.sequences.cli import SPEC
from rnnkit.tasks.sequences.data import (
    BUILTINS,
    Sequences,
    Split,
    builtin,
    collate,
    feature_stats,
    fill_missing,
    from_arrays,
    make_split,
    read_file,
    read_long_csv,
    read_npz,
    read_ts,
    synthetic,
)
from rnnkit.tasks.sequences.model import FrameCNN, SequenceClassifier
from rnnkit.tasks.sequences.task import SequenceTask, baselines, predict_proba, windows
