"""The ``rnnkit`` command, built from the task registry (:data:`rnnkit.tasks.TASKS`):
``rnnkit train TASK`` for every task, ``rnnkit eval RUN``, the tasks' verbs (``sample``,
``predict``...) and experiments, and ``rnnkit explain``."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from rnnkit import __version__, export_cli, serve_cli, tasks
from rnnkit.inspect import explain
from rnnkit.runtime import keep_freed_memory
from rnnkit.tasks.args import BATCH, SEED, add_model_args, add_train_args, number, parser_kwargs
from rnnkit.tasks.spec import TaskSpec, train_command

GROUPS = {"inspect": "look inside models: gradient flow, interpretable cells"}


class _Once:
    """A parser (or group) that skips options another task already added, so tasks that
    share a command (``eval``, ``predict``) share its flags."""

    def __init__(self, target: Any, seen: set[str]) -> None:
        self.target, self.seen = target, seen

    def add_argument(self, *names: str, **kw: Any) -> Any:
        opts = [n for n in names if n.startswith("-")]
        if opts and any(o in self.seen for o in opts):
            return None
        if not opts and kw.get("dest", names[0] if names else None) in self.seen:
            return None
        self.seen.update(opts or names)
        return self.target.add_argument(*names, **kw)

    def add_argument_group(self, *a: Any, **kw: Any) -> _Once:
        return _Once(self.target.add_argument_group(*a, **kw), self.seen)

    def set_defaults(self, **kw: Any) -> None:
        self.target.set_defaults(**kw)


def _on_run(attr: str, verb: str | None = None):
    """A command that runs the task of ``args.run_dir``'s own ``attr`` (or its verb)."""
    def run(args: argparse.Namespace) -> int:
        spec = tasks.spec_of_run(args.run_dir)
        if verb is None:
            return int(getattr(spec, attr)(args) or 0)
        for v in spec.verbs:
            if v.name == verb:
                return int(v.run(args) or 0)
        raise ValueError(f"{args.run_dir} is a {spec.name!r} run, which has no {verb!r}; "
                         f"its commands: {', '.join(['eval', *(v.name for v in spec.verbs)])}")
    return run


def _add_train(tsub: argparse._SubParsersAction, spec: TaskSpec) -> None:
    p = tsub.add_parser(spec.name, help=spec.help, **parser_kwargs(spec.description))
    spec.add_args(p)
    if spec.model_cells:
        add_model_args(p, spec.defaults, spec.model_cells, spec.model_flags)
    add_train_args(p, spec.defaults, epochs=spec.epochs)
    p.set_defaults(func=lambda a, s=spec: train_command(s, a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", **parser_kwargs("Recurrent sequence models you can read, trust and run "
                                       "fast. 'rnnkit COMMAND --help' explains each command."))
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    specs = tasks.specs()

    train = sub.add_parser("train", help="train a model for a task",
                           **parser_kwargs("Train a model; every task takes the same training "
                                           "flags. 'rnnkit train TASK --help' lists them."))
    tsub = train.add_subparsers(dest="task", required=True, metavar="TASK")
    for spec in specs.values():
        _add_train(tsub, spec)

    ev = sub.add_parser("eval", help="evaluate a trained run",
                        **parser_kwargs("Evaluate a run folder (or checkpoint folder); the data "
                                        "and metric depend on the run's task."))
    ev.add_argument("run_dir", metavar="RUN_DIR", help="run folder (uses best/, else last/) or "
                    "checkpoint folder")
    ev.add_argument("--data", help="the file to evaluate on (text for lm, a labelled table for "
                    "classify)")
    ev.add_argument("--batch-size", "--batch", type=BATCH, default=None, dest="batch_size",
                    help="evaluation batch size")
    seen = {"--data", "--batch-size", "--batch"}
    for spec in specs.values():
        spec.add_eval_args(_Once(ev, seen))
    ev.set_defaults(func=_on_run("evaluate"))

    verbs: dict[str, tuple[argparse.ArgumentParser, set[str]]] = {}
    groups: dict[str, argparse._SubParsersAction] = {}
    for spec in specs.values():
        for v in spec.verbs:
            if v.name not in verbs:
                p = sub.add_parser(v.name, help=v.help, **parser_kwargs(v.description))
                p.add_argument("run_dir", metavar="RUN_DIR",
                               help="run folder (uses best/, else last/) or checkpoint folder")
                p.set_defaults(func=_on_run("verbs", v.name))
                verbs[v.name] = (p, set())
            p, seen = verbs[v.name]
            v.add_args(_Once(p, seen))  # type: ignore[arg-type]
        for c in spec.commands:
            where = sub
            if c.group is not None:
                if c.group not in groups:
                    g = sub.add_parser(c.group, help=GROUPS.get(c.group, c.group),
                                       **parser_kwargs(GROUPS.get(c.group)))
                    groups[c.group] = g.add_subparsers(dest=f"{c.group}_command",
                                                       required=True, metavar="WHAT")
                where = groups[c.group]
            p = where.add_parser(c.name, help=c.help,
                                 **parser_kwargs(c.description or c.help))
            c.add_args(p)
            p.set_defaults(func=c.run)
    explain.register(sub, size=number(int, lo=1, hi=1024), seed=SEED,
                     **parser_kwargs(explain.__doc__))
    export_cli.register(sub)
    serve_cli.register(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``. A command's optional trailing positional (``predict RUN --stream -``)
    may also come after its options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    name = getattr(args, "_trailing", None)
    if extra and name and getattr(args, name, None) is None and len(extra) == 1 and \
            (extra[0] == "-" or not extra[0].startswith("-")):
        setattr(args, name, extra[0])
    elif extra:
        parser.parse_args(argv)  # the usual error message, exit code 2
    return args


_TOO_BIG = re.compile(r"allocate|out of memory|dimension exceeded|[Oo]verflow")


def too_big(args: argparse.Namespace, e: BaseException) -> str:
    """One line for a request too large for this machine (an allocation that failed, a size
    past what a tensor holds), naming the large numbers given on the command line."""
    big = [f"--{k.replace('_', '-')} {v:g}" for k, v in vars(args).items()
           if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) >= 1024]
    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (f"out of memory or past the largest size a tensor takes ({why}): "
            + (f"use smaller values than {', '.join(big)}" if big else "use smaller sizes"))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    keep_freed_memory()  # training steps reuse freed memory instead of page-faulting it anew
    try:
        rc = args.func(args)
    except (ValueError, OSError) as e:  # bad input, missing or unwritable files: no traceback
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, OverflowError, RuntimeError, TypeError) as e:
        if not isinstance(e, MemoryError | OverflowError) and not _TOO_BIG.search(str(e)):
            raise  # a bug: the traceback is what it needs
        print(f"rnnkit: error: {too_big(args, e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
