"""What a task is made of, and the one ``rnnkit train TASK`` that every task shares.

A task is a package under ``rnnkit/tasks/`` with the same slots:

* ``model.py``  the ``nn.Module`` (shapes in its docstring);
* ``data.py``   reading the data, the split, the batches;
* ``task.py``   the task object for :func:`rnnkit.train.train` (model, batches, loss,
  evaluation, config), rebuilt from a run's ``config.json`` for ``--resume``;
* ``api.py``    the Python API: ``load(run_dir)`` and what a trained model does (``sample``,
  ``predict``, ``stream``...);
* ``cli.py``    the command line, apart from the library, ending in one :class:`TaskSpec`;

and its ``__init__.py`` exports ``SPEC`` (and the API). Registering the task is one line in
:data:`rnnkit.tasks.TASKS`; it then gets ``rnnkit train TASK`` (the shared training flags of
:mod:`rnnkit.tasks.args` plus its own), ``rnnkit eval RUN``, ``rnnkit.load(RUN)`` and its
verbs (``rnnkit sample RUN``, ``rnnkit predict RUN``...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.args import MODEL_FLAGS, add_model_args, add_train_args
from rnnkit.train import TrainConfig, TrainResult, is_main_process, train

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int | None]


@dataclass(frozen=True)
class Verb:
    """``rnnkit NAME RUN ...``: something a trained run does (sample, predict...). Tasks that
    share a verb share its command; the run's task decides which one runs."""

    name: str
    help: str
    add_args: AddArgs
    run: Run
    description: str = ""


@dataclass(frozen=True)
class Command:
    """``rnnkit [GROUP] NAME ...``: an experiment that needs no run folder (it trains its
    own), e.g. ``rnnkit longrange`` or ``rnnkit inspect gradients``."""

    name: str
    help: str
    add_args: AddArgs
    run: Run
    description: str = ""
    group: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    * ``defaults``: the task's values for the shared flags (``steps``, ``minutes``,
      ``epochs``, ``batch_size``, ``lr``, ``hidden``...), shown in its help;
    * ``add_args(parser)``: the task's own training flags (data, tokenizer...);
    * ``from_args(args, out)``: a fresh task object from the flags;
    * ``from_config(config, run_dir)``: the task of a saved run (``--resume``);
    * ``saved_flags(config)``: ``{flag dest: value}`` a resumed run keeps (a given flag that
      differs is refused);
    * ``report(task, result, args)``: what the job prints after training (metrics,
      baselines, a sample);
    * ``load(run_dir)``: the trained model's Python API;
    * ``add_eval_args`` / ``evaluate``: ``rnnkit eval RUN`` (``args.run_dir``, ``args.data``).
    """

    name: str
    help: str
    description: str
    defaults: dict[str, Any]
    add_args: AddArgs
    from_args: Callable[[argparse.Namespace, str], Any]
    from_config: Callable[[dict[str, Any], Path], Any]
    saved_flags: Callable[[dict[str, Any]], dict[str, Any]]
    report: Callable[[Any, TrainResult, argparse.Namespace], None]
    load: Callable[[str | Path], Any]
    add_eval_args: AddArgs
    evaluate: Run
    fit: Callable[[argparse.Namespace, str], bool] | None = None  # fitted without the
    # trainer (the n-gram baseline): returns True when it handled the run
    epochs: bool = False
    model_cells: list[str] | None = None  # offers the shared model flags with these cells
    model_flags: tuple[str, ...] = ("cell", "hidden", "layers", "embed", "dropout")
    verbs: tuple[Verb, ...] = ()
    commands: tuple[Command, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


# the slots of a task's cli module, by the names it gives them: TaskSpec field -> module name
SLOTS = {"description": "DESCRIPTION", "defaults": "DEFAULTS", "add_args": "add_args",
         "from_args": "from_args", "from_config": "from_config", "saved_flags": "saved_flags",
         "report": "report", "load": "load", "add_eval_args": "add_eval_args",
         "evaluate": "evaluate"}


def task_spec(slots: dict[str, Any], name: str, help: str, **fields: Any) -> TaskSpec:
    """The :class:`TaskSpec` of a task's ``cli.py``, its slots taken by name from the module's
    namespace ``slots`` (``globals()``): ``DESCRIPTION``, ``DEFAULTS``, ``add_args``,
    ``from_args``, ``from_config``, ``saved_flags``, ``report``, ``load``, ``add_eval_args``,
    ``evaluate``; ``fields`` give the rest (``model_cells``, ``verbs``...) and may override a
    slot. Derived from the defaults unless given: ``epochs`` (the task has an epoch budget
    when it has a default one) and ``model_flags`` (the shared model flags it has defaults
    for)."""
    s = {**{k: slots[v] for k, v in SLOTS.items() if k not in fields}, **fields}
    s.setdefault("epochs", "epochs" in s["defaults"])
    s.setdefault("model_flags", tuple(k for k in MODEL_FLAGS if k in s["defaults"]))
    return TaskSpec(name=name, help=help, **s)


def verb(run: Run, help: str, add_args: AddArgs, description: str | None = None) -> Verb:
    """The :class:`Verb` ``rnnkit NAME RUN``, ``NAME`` being ``run``'s name, described by its
    docstring unless ``description`` is given."""
    return Verb(run.__name__, help, add_args, run,
                (run.__doc__ or "") if description is None else description)


def tell(*parts: str) -> None:
    """One line on stderr, the ``parts`` joined by ``"; "`` (what a task found in its data),
    printed by rank 0 alone under torchrun."""
    if is_main_process():
        print("; ".join(parts), file=sys.stderr)


def record_split(out: str | Path, record: dict[str, Any]) -> None:
    """Write the run's ``split.json`` (which examples train, validate, test), once: rank 0
    under torchrun, creating the run folder."""
    if not is_main_process():
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(Path(out) / "split.json", json.dumps(record))


# -- rnnkit train TASK ---------------------------------------------------------------------------
BUDGET = ("steps", "minutes", "epochs")
PATHS = {"data", "valid", "test"}  # compared as the files they name
ALWAYS_OK = {*BUDGET, "out", "resume", "restart", "quiet", "device", "threads", "func", "task",
             "command", "log_every"}


def budget_of(args: argparse.Namespace, spec: TaskSpec) -> dict[str, Any]:
    """The budget flags given, else the task's default budget."""
    got = {k: getattr(args, k, None) for k in BUDGET if getattr(args, k, None) is not None}
    return got or {k: spec.defaults[k] for k in BUDGET if spec.defaults.get(k) is not None}


def steps_for(budget: dict[str, Any], task: Any) -> dict[str, Any]:
    """``{"steps", "minutes"}`` for the trainer: epochs become steps (the task's
    ``steps_per_epoch``)."""
    out = {"steps": budget.get("steps"), "minutes": budget.get("minutes")}
    if budget.get("epochs") is not None:
        per = task.steps_per_epoch
        out["steps"] = min(out["steps"] or math.inf, max(1, round(budget["epochs"] * per)))
    return out


def _tuned(spec: TaskSpec, task: Any, steps: int | None) -> dict[str, Any]:
    """Defaults that depend on the task's data: for tasks with epochs, evaluate once an
    epoch (at least 10 times in a step budget) and warm up over at most one epoch."""
    d = {k: v for k, v in spec.defaults.items() if k not in BUDGET}
    per = getattr(task, "steps_per_epoch", None)
    if spec.epochs and per:
        d.setdefault("eval_every", max(1, min(per, (steps or 10**9) // 10)))
        d["warmup"] = min(d.get("warmup", 100), per)
    d["clip"] = d.pop("clip", 1.0)
    return {("grad_clip" if k == "clip" else k): v for k, v in d.items()}


def check_resume_flags(spec: TaskSpec, args: argparse.Namespace, config: dict[str, Any]
                       ) -> None:
    """A resumed run keeps its model, data and training settings: a flag given with another
    value than the saved one is a ValueError naming both."""
    saved = spec.saved_flags(config)
    tc = config.get("train", {})
    saved.update({"lr": tc.get("lr"), "weight_decay": tc.get("weight_decay"),
                  "warmup": tc.get("warmup"), "clip": tc.get("grad_clip") or 0.0,
                  "eval_every": tc.get("eval_every"), "seed": tc.get("seed")})
    for key, v in vars(args).items():
        if v is None or key in ALWAYS_OK or key.startswith("_") or key not in saved:
            continue
        have = saved[key]
        if key in PATHS and isinstance(v, str) and isinstance(have, str):
            v, have = str(Path(v).resolve()), str(Path(have).resolve())
        if v != have and not (isinstance(v, float | int) and isinstance(have, float | int)
                              and math.isclose(v, have)):
            raise ValueError(f"--{key.replace('_', '-')} {v} conflicts with the run being "
                             f"resumed ({key} = {have}); a resumed run keeps its model, data "
                             f"and settings. Start a new run (--out) to change them")


def _train_parser(spec: TaskSpec) -> argparse.ArgumentParser:
    """The parser of ``rnnkit train TASK`` alone (its flags and their checked types)."""
    p = argparse.ArgumentParser(add_help=False)
    spec.add_args(p)
    if spec.model_cells:
        add_model_args(p, spec.defaults, spec.model_cells, spec.model_flags)
    add_train_args(p, spec.defaults, epochs=spec.epochs)
    return p


def check_config(spec: TaskSpec, config: dict[str, Any], where: str | Path) -> None:
    """A run's saved settings pass the same checks as the flags that set them: every value
    :attr:`TaskSpec.saved_flags` reads back from ``config`` (``max_len``, ``hidden``,
    ``dropout``...) and the saved training settings are checked by their flag's type (range,
    finiteness) and choices. A tampered or damaged value is a ValueError naming the file, the
    field, the flag and what it expects."""
    try:
        saved = dict(spec.saved_flags(config))
    except (KeyError, TypeError, AttributeError):  # the task's loader names what is missing
        return
    tc = config.get("train")
    if isinstance(tc, dict):
        saved.update({k: tc.get(k) for k in ("lr", "weight_decay", "warmup", "eval_every",
                                             "log_every", "seed")})
        saved["clip"] = tc.get("grad_clip")
        saved["steps"] = tc.get("steps")
        saved["minutes"] = tc.get("minutes")
    actions = {a.dest: a for a in _train_parser(spec)._actions if a.option_strings}
    for key, v in saved.items():
        a = actions.get(key)
        if a is None or v is None:
            continue
        flag = next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
        check = getattr(a.type, "check_value", None)
        try:
            if check is not None:
                for x in (v if isinstance(v, list | tuple) and a.nargs not in (None, "?")
                          else [v]):  # a flag of several numbers (--image-size H W)
                    check(x)
            elif a.choices is not None and isinstance(v, str) and v not in a.choices:
                raise argparse.ArgumentTypeError(
                    f"expected one of {', '.join(map(str, a.choices))}, got {v!r}")
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{where}: the saved {key} ({flag}) is not valid: {e}; the config "
                             f"was changed or is damaged") from None


def check_rebuilt(saved: dict[str, Any], rebuilt: dict[str, Any], where: str | Path) -> None:
    """On ``--resume``: the model description the task rebuilds from its data and settings
    (``vocab_size`` from the saved tokenizer...) must be the saved one, else the config was
    changed (a tampered ``vocab_size`` would train on and then break every load): a ValueError
    naming the file and the fields, before anything is trained or written. Only the fields
    both hold are compared (a run saved before a field was added keeps resuming)."""
    have, want = saved.get("model"), json.loads(json.dumps(rebuilt.get("model")))
    if not isinstance(have, dict) or not isinstance(want, dict):
        return
    bad = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if bad:
        fields = ", ".join(f"{k} {have.get(k)!r}, expected {want.get(k)!r}" for k in bad)
        raise ValueError(f"{where}: the saved model description does not match the run's data "
                         f"and settings ({fields}); the config was changed or is damaged")


def refuse_occupied(spec: TaskSpec, out: str | Path) -> None:
    """Before a fresh run writes anything into ``out``: a folder that already holds a run
    (a checkpoint, or another task's ``config.json``) is refused, naming the way out."""
    d = Path(out)
    if not d.is_dir():
        return
    task = None
    if (d / ckpt.CONFIG).is_file():
        try:
            task = ckpt.read_json(d / ckpt.CONFIG).get("task")
        except (ValueError, OSError, AttributeError):
            task = None
    held = any((c / ckpt.MODEL).is_file() for n in ("last", "best")
               for c in (d / n, d / f".{n}.old"))
    if task is not None and task != spec.name:
        raise ValueError(f"{d} already holds a run of task {task!r}; a {spec.name} run needs "
                         f"another output folder (--out), or clear this one (--restart)")
    if held:
        raise ValueError(f"{d} already holds a run; resume it (--resume {d}), clear it "
                         f"(--restart) or choose another output folder")


def train_command(spec: TaskSpec, args: argparse.Namespace) -> int:
    """``rnnkit train TASK``: a fresh run from the flags, or ``--resume`` of a saved one."""
    t_start = time.perf_counter()
    main = is_main_process()
    if args.resume:
        run_dir = Path(args.out if args.resume is True else args.resume)
        if args.resume is True and not args.out:
            raise ValueError("--resume needs the run folder: --resume RUN_DIR (or --out DIR)")
        if args.resume is not True and args.out and Path(args.out) != run_dir:
            raise ValueError(f"--resume {run_dir} and --out {args.out} name different folders;"
                             f" a resumed run stays in its own folder")
        cfg_path = run_dir / ckpt.CONFIG
        if not cfg_path.is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir} holds no run ({cfg_path} is "
                                    f"missing)")
        with ckpt.run_lock(run_dir) if main else contextlib.nullcontext():
            config = ckpt.read_json(cfg_path)
            if config.get("task") != spec.name:
                raise ValueError(f"{run_dir} is a {config.get('task')!r} run, not "
                                 f"{spec.name!r}: resume it with rnnkit train "
                                 f"{config.get('task')} --resume {run_dir}")
            check_config(spec, config, cfg_path)
            check_resume_flags(spec, args, config)
            task = spec.from_config(config, run_dir)
            check_rebuilt(config, task.config(), cfg_path)
            over = steps_for({k: getattr(args, k, None) for k in BUDGET}, task) if any(
                getattr(args, k, None) is not None for k in BUDGET) else {}
            cfg = TrainConfig.from_json(config["train"], out=str(run_dir), resume=True,
                                        progress=not args.quiet, **over,
                                        threads=getattr(args, "threads", None),
                                        **({"device": args.device} if args.device else {}))
            res = train(task, cfg)
            if main:
                spec.report(task, res, args)
                _last_line(spec, res, t_start)
        return 0
    if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun give --out, so that every process names the same run "
                         "folder")
    out = args.out or new_run_folder(spec.name)
    with ckpt.run_lock(out) if main else contextlib.nullcontext():
        if args.restart and main:
            _clear_run(Path(out))
        elif not args.restart:
            refuse_occupied(spec, out)
        if spec.fit is not None and spec.fit(args, out):
            return 0
        task = spec.from_args(args, out)
        budget = steps_for(budget_of(args, spec), task)
        cfg = TrainConfig.from_args(args, out=out, **budget,
                                    **_tuned(spec, task, budget["steps"]))
        if main:
            print(f"training {spec.name} for {cfg.budget()} → {out}", file=sys.stderr)
        res = train(task, cfg)
        if main:
            spec.report(task, res, args)
            _last_line(spec, res, t_start)
    return 0


def new_run_folder(name: str, root: str | Path = "runs") -> str:
    """``runs/<name>-<date>-<time>``, created here, with ``-2``, ``-3``, ... when a run
    started in the same second already took the name (creating the folder is the claim, so two
    processes never share one)."""
    stem = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        d = stem if k == 1 else stem.with_name(f"{stem.name}-{k}")
        try:
            d.mkdir()
        except FileExistsError:
            continue
        return str(d)
    raise ValueError(f"{root}: could not create a new run folder named {stem.name}-N")


def _clear_run(d: Path) -> None:
    """``--restart``: empty the run folder (we hold its lock)."""
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.name == ckpt.LOCK:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    print(f"--restart: cleared {d}", file=sys.stderr)


def _last_line(spec: TaskSpec, res: TrainResult, t_start: float) -> None:
    best = res.best.get("step")
    print(f"{spec.name}: {res.step:,} steps, {res.elapsed / 60:.1f} min of training and "
          f"evaluation ({(time.perf_counter() - t_start) / 60:.1f} min wall in this process)"
          f"{f'; best checkpoint from step {best:,}' if best is not None else ''}; run folder "
          f"{res.run_dir}")
