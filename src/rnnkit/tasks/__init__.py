"""Tasks: what to train (data, model, loss, evaluation) for :func:`rnnkit.train.train`.

``TASKS`` maps a run folder's ``config.json`` ``"task"`` to the module that owns it; each such
module exposes ``evaluate_cli(args)`` (for ``rnnkit eval RUN_DIR --data FILE``) and may expose
``sample_cli(args)`` (for ``rnnkit sample RUN_DIR``). Add one line per task.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from rnnkit import checkpoint as ckpt

TASKS: dict[str, str] = {
    "lm": "rnnkit.tasks.lm",
    "classify": "rnnkit.tasks.classify",
}


def task_module(run_dir: str) -> ModuleType:
    """The module owning the run in ``run_dir`` (read from its ``config.json``)."""
    config = ckpt.load_config(run_dir)
    name = config.get("task")
    if name not in TASKS:
        raise ValueError(f"{run_dir}: config.json names task {name!r}; known tasks: "
                         f"{', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def _dispatch(attr: str, what: str):
    def run(args: argparse.Namespace) -> int:
        mod = task_module(args.run_dir)
        if not hasattr(mod, attr):
            raise ValueError(f"{args.run_dir}: task {mod.__name__.rsplit('.', 1)[-1]!r} does "
                             f"not support {what}")
        return getattr(mod, attr)(args)
    return run


def register(sub: argparse._SubParsersAction) -> None:
    """``rnnkit eval`` and ``rnnkit sample``: both dispatch on the run's task."""
    p = sub.add_parser("eval", help="evaluate a trained run on a data file",
                       description="Evaluate a run folder (or checkpoint folder) on a file; "
                                   "the metric depends on the run's task (bits per character "
                                   "for a language model).")
    p.add_argument("run_dir", help="run folder (uses best/, else last/) or checkpoint folder")
    p.add_argument("--data", required=True, help="text file (lm) or labelled table (classify)")
    p.add_argument("--batch", type=int, default=None, help="evaluation batch size")
    p.set_defaults(func=_dispatch("evaluate_cli", "eval"))

    s = sub.add_parser("sample", help="generate text from a trained language model",
                       description="Stream text from a trained run, one token at a time, "
                                   "carrying the recurrent state.")
    s.add_argument("run_dir", help="run folder (uses best/, else last/) or checkpoint folder")
    s.add_argument("--prime", default="", help="text to start from (read once)")
    s.add_argument("--length", type=int, default=500, help="tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature; 0 = greedy (deterministic)")
    s.add_argument("--top-k", type=int, default=None, help="sample among the K most likely")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    s.set_defaults(func=_dispatch("sample_cli", "sample"))
