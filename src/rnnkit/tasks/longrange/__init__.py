'''Long-range dependency benchmarks: can the cell carry information across T steps?

The problems (``adding``, ``copy``, ``digits``) are defined in :mod:`.data`.

Slots: ``data.py`` (the problems and their metrics), ``model.py`` (:class:`LongRangeModel`,
the keep-gate initialisation), ``task.py`` (:class:`LongRangeTask` for the trainer),
``api.py`` (:func:`load`), ``cli.py`` (``rnnkit train longrange``, ``rnnkit longrange``,
``rnnkit inspect gradients``; ``SPEC``).
'''

__all__ = [
    "PROBLEMS", "SPEC", "LongRangeModel", "LongRangeRun", "LongRangeTask", "adding_data",
    "adding_metrics", "copy_baseline", "copy_data", "copy_metrics", "digits_data",
    "digits_metrics", "fresh_dir", "init_keep_gate", "load", "make_task", "parse_init",
    "run_longrange",
]

from rnnkit.tasks.longrange.api import LongRangeRun, load
from rnnkit.tasks.longrange.cli import SPEC, fresh_dir, run_longrange
from rnnkit.tasks.longrange.data import (
    PROBLEMS,
    adding_data,
    adding_metrics,
    copy_baseline,
    copy_data,
    copy_metrics,
    digits_data,
    digits_metrics,
)
from rnnkit.tasks.longrange.model import LongRangeModel, init_keep_gate, parse_init
from rnnkit.tasks.longrange.task import LongRangeTask, make_task
