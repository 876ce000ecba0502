"""A trained long-range model from Python::

    run = rnnkit.load("runs/longrange/adding-T100-s0/lstm")
    run.evaluate()              # {'loss': ..., 'solved': ...} on the problem's fixed test set
    run.predict(x)              # adding: (B,); copy: (B, L, 9); digits: (B, 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.common import run_config
from rnnkit.tasks.longrange.task import LongRangeTask


class LongRangeRun:
    """A trained model and the problem it was trained on."""

    def __init__(self, task: LongRangeTask, model: torch.nn.Module, config: dict[str, Any]
                 ) -> None:
        self.task, self.model, self.config = task, model.eval(), config

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.task.predict(self.model, x)

    def evaluate(self) -> dict[str, float]:
        return self.task.evaluate(self.model)


def load(run_dir: str | Path) -> LongRangeRun:
    """The model of a ``rnnkit train longrange`` run (its ``best/`` checkpoint)."""
    d, config = run_config(run_dir, "longrange", "a long-range model")
    task = LongRangeTask.from_config(config)
    return LongRangeRun(task, ckpt.build_checked(task.build_model, d), config)
