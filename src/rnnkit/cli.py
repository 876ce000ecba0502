"""The ``rnnkit`` command. Each command lives next to its code and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from rnnkit.kernels.memory import keep_freed_memory

# Modules exposing ``register(subparsers)``; add one line per command.
COMMANDS = [
    "rnnkit.inspect.explain",
    "rnnkit.tasks",
    "rnnkit.tasks.classify",
    "rnnkit.tasks.longrange",
    "rnnkit.inspect.cells_cli",
]
# Task modules exposing ``register_train(subparsers)`` for ``rnnkit train <task>``.
TRAIN_TASKS: list[str] = [
    "rnnkit.tasks.lm",
    "rnnkit.tasks.classify",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent sequence models you can read, trust and run fast.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if TRAIN_TASKS:
        train = sub.add_parser("train", help="train a model for a task")
        tsub = train.add_subparsers(dest="task", required=True, metavar="TASK")
        for mod in TRAIN_TASKS:
            importlib.import_module(mod).register_train(tsub)
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # training steps reuse freed memory instead of page-faulting it anew
    try:
        rc = args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, no traceback
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
