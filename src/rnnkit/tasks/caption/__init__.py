"""Image captioning: a small CNN encoder feeding the encoder–decoder's decoder
(:mod:`rnnkit.seq2seq`): ``rnnkit train caption``, ``rnnkit caption RUN IMAGE``,
``rnnkit eval RUN``, ``rnnkit.load(RUN).caption(images)``.

Slots: ``model.py`` (:class:`CNNEncoder`, :class:`Captioner`: show-tell and attend decoders,
greedy and beam captions), ``data.py`` (folder + captions.tsv, the built-in digits strips, the
split by image, :class:`CaptionStream` batches), ``task.py`` (:class:`CaptionTask`),
``metrics.py`` (sacrebleu chrF/BLEU over every reference, most-common and nearest-neighbour
baselines), ``api.py`` (:func:`load` -> :class:`ImageCaptioner`), ``plot.py``, ``cli.py``
(``SPEC``).
"""

__all__ = [
    "SPEC", "CNNEncoder", "CaptionStream", "CaptionTask", "Captioner", "Captions",
    "ImageCaptioner", "baselines", "build_model", "caption_ids", "caption_scores",
    "digit_strips", "load", "make_split", "nearest_captions", "read_folder", "read_image",
]

from rnnkit.tasks.caption.api import ImageCaptioner, load
from rnnkit.tasks.caption.cli import SPEC
from rnnkit.tasks.caption.data import (
    Captions,
    CaptionStream,
    digit_strips,
    make_split,
    read_folder,
    read_image,
)
from rnnkit.tasks.caption.metrics import baselines, caption_scores, nearest_captions
from rnnkit.tasks.caption.model import Captioner, CNNEncoder, build_model, caption_ids
from rnnkit.tasks.caption.task import CaptionTask
