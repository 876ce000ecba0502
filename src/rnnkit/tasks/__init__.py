"""Tasks: what to train (data, model, loss, evaluation) for :func:`rnnkit.train.train`, and
what a trained run then does. Every task has the same slots (:mod:`rnnkit.tasks.spec`).

:data:`TASKS` is the one registry: a task is registered by one line here, and gets
``rnnkit train TASK``, ``rnnkit eval RUN``, ``rnnkit.load(RUN)`` and its verbs from it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.spec import Command, TaskSpec, Verb, check_config

TASKS: dict[str, str] = {  # config.json "task" -> the package that owns it
    "lm": "rnnkit.tasks.lm",
    "classify": "rnnkit.tasks.classify",
    "longrange": "rnnkit.tasks.longrange",
    "sequences": "rnnkit.tasks.sequences",
    "forecast": "rnnkit.tasks.forecast",
    "translate": "rnnkit.tasks.translate",
    "caption": "rnnkit.tasks.caption",
}


def spec(name: str) -> TaskSpec:
    """The registered task ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).SPEC


def specs() -> dict[str, TaskSpec]:
    return {n: spec(n) for n in TASKS}


def spec_of_run(run_dir: str | Path) -> TaskSpec:
    """The task that owns the run (or checkpoint) folder, from its ``config.json``."""
    config = ckpt.load_config(run_dir)
    if not isinstance(config, dict) or "task" not in config:
        raise ValueError(f"{run_dir}: config.json names no task")
    if config["task"] not in TASKS:
        raise ValueError(f"{run_dir}: config.json names task {config['task']!r}; known tasks: "
                         f"{', '.join(TASKS)}")
    s = spec(config["task"])
    check_config(s, config, Path(run_dir) / ckpt.CONFIG)  # the same checks as the flags
    return s


def load(run_dir: str | Path) -> Any:
    """The trained model of any run folder, as its task's Python API object (a
    :class:`~rnnkit.tasks.lm.LanguageModel`, a :class:`~rnnkit.tasks.classify.TextClassifier`,
    ...)."""
    return spec_of_run(run_dir).load(run_dir)


__all__ = ["TASKS", "Command", "TaskSpec", "Verb", "load", "spec", "spec_of_run", "specs"]
