"""Character-level language model: ``rnnkit train lm``, ``rnnkit sample``, ``rnnkit eval``.

Slots: ``model.py`` (:class:`CharLM`; ``ngram.py``, the Kneser–Ney baseline), ``data.py``
(the split, :class:`TokenStream` batches), ``task.py`` (:class:`LMTask` for the trainer),
``api.py`` (:func:`load` -> :class:`LanguageModel`: ``sample``, ``generate``,
``bits_per_char``), ``cli.py`` (the commands, ``SPEC``).
"""

__all__ = [
    "SPEC", "CharLM", "LMData", "LMTask", "LanguageModel", "TokenStream", "bits_per_char",
    "build_model", "generate", "load", "load_data", "load_run", "native_bf16", "read_split",
    "resolve_precision", "sample_text",
]

from rnnkit.tasks.lm.api import LanguageModel, generate, load, load_run, sample_text
from rnnkit.tasks.lm.cli import SPEC
from rnnkit.tasks.lm.data import LMData, TokenStream, load_data, read_split
from rnnkit.tasks.lm.model import CharLM, build_model
from rnnkit.tasks.lm.task import LMTask, bits_per_char, native_bf16, resolve_precision
