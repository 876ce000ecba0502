"""The long-range problems' command line: ``rnnkit train longrange`` (one cell),
``rnnkit longrange`` (every cell under the same budget: one table, one plot),
``rnnkit inspect gradients`` (the vanishing-gradient picture), ``rnnkit eval RUN``."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.inspect.gradients import gradient_flow, plot_flows
from rnnkit.inspect.params import count_params
from rnnkit.tasks.args import BATCH, LR, NONNEG_INT, POS_FLOAT, POS_INT, SEED, WIDTH, pick
from rnnkit.tasks.longrange import data as problems
from rnnkit.tasks.longrange.api import load
from rnnkit.tasks.longrange.data import PROBLEMS
from rnnkit.tasks.longrange.model import LONGRANGE_CELLS, parse_init
from rnnkit.tasks.longrange.task import DEFAULTS as PER_PROBLEM
from rnnkit.tasks.longrange.task import LongRangeTask, make_task
from rnnkit.tasks.spec import Command, task_spec
from rnnkit.train import TrainConfig, TrainResult, train

DEFAULTS = PER_PROBLEM  # (hidden, batch, lr) per problem, for the experiment commands

DESCRIPTION = (problems.__doc__ or "") + """

Every cell trains through the one trainer under the same budget; rnnkit longrange prints one
table and draws all learning curves on one PNG."""


def fresh_dir(base: str) -> Path:
    """``base``, or ``base-2``, ``base-3``… if it already holds runs."""
    p, k = Path(base), 2
    while p.exists() and any(p.iterdir()):
        p, k = Path(f"{base}-{k}"), k + 1
    return p


def plot_curves(rows: list[dict[str, Any]], task: LongRangeTask, out: Path) -> None:
    """Test metric and fraction solved against training steps, one line per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = {"adding": "test MSE", "copy": "test cross-entropy per step",
              "digits": "test cross-entropy"}[task.task]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for r in rows:
        recs = [json.loads(s) for s in (r["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        ev = [x for x in recs if "valid_loss" in x]
        t = [x["step"] for x in ev]
        lab = f"{r['cell'].upper()} ({r['params']:,} params)"
        a1.semilogy(t, [x["valid_loss"] for x in ev], label=lab)
        a2.plot(t, [x["valid_solved"] for x in ev], label=lab)
    a1.axhline(task.baseline, color="gray", ls="--", lw=1, label="baseline")
    if task.task == "adding":
        a1.axhline(0.01, color="gray", ls=":", lw=1, label="0.01")
    a1.set_ylabel(metric)
    a2.set_ylabel("fraction solved" if task.task != "digits" else "test accuracy")
    a2.set_ylim(-0.02, 1.02)
    for a in (a1, a2):
        a.set_xlabel("training steps")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    fig.suptitle(f"{task.task}{' (permuted)' if task.permute else ''}, T = {task.length}",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


# Per cell: (minutes, steps), the first reached stops it. Equal steps (the same data) make the
# cells comparable across machines; the time cap keeps 3 cells within 15 minutes on a slow one.
# On the 2-core machine (README) a tanh RNN leaves the adding baseline at T = 100 only after
# ~24,000 steps, which a 4-minute budget alone allows there (LSTM and GRU solve it in ~2,000).
DEFAULT_BUDGET = (4.0, 10_000)


def format_table(rows: list[dict[str, Any]], task: LongRangeTask) -> str:
    """The cells' results as a Markdown table, the baseline below it."""
    metric = {"adding": "test MSE", "copy": "test CE", "digits": "test CE"}[task.task]
    solved = "accuracy" if task.task == "digits" else "solved"
    lines = [f"| cell | parameters | {metric} | {solved} | wall time | steps |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] >= 1e-3 else f"{r['loss']:.1e}"
        lines.append(f"| {r['cell'].upper()} | {r['params']:,} | {loss} | "
                     f"{100 * r['solved']:.1f}% | {r['seconds'] / 60:.1f} min | {r['steps']:,} |")
    lines.append(f"baseline (ignore the input): {metric} {task.baseline:.4f}")
    return "\n".join(lines)


def run_longrange(args: argparse.Namespace) -> int:
    """Train each cell on the task under the same budget; print the table, write the plot."""
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in LONGRANGE_CELLS]
    if bad or not cells:
        raise ValueError(f"--cells takes a comma-separated list from {', '.join(LONGRANGE_CELLS)}, "
                         f"got {args.cells!r}")
    if args.minutes is None and args.steps is None:  # the same steps for every cell, capped
        args.minutes, args.steps = DEFAULT_BUDGET  # by time on a slow machine
    length = args.length if args.length is not None else (64 if args.task == "digits" else 100)
    base = f"{args.task}{'-perm' if args.permute else ''}-T{length}-s{args.seed}"
    out = fresh_dir(args.out or f"runs/longrange/{base}")
    rows = []
    for cell in cells:
        task = make_task(args.task, length, cell, hidden=args.hidden, batch=args.batch,
                         seed=args.seed, permute=args.permute, init=parse_init(args.init))
        t0 = time.perf_counter()
        cfg = TrainConfig(out=str(out / cell), steps=args.steps, minutes=args.minutes,
                          lr=args.lr or DEFAULTS[args.task][2], seed=args.seed,
                          eval_every=args.eval_every, log_every=50, progress=not args.quiet)
        res = train(task, cfg)
        rows.append({"cell": cell, "params": count_params(task.build_model()),
                     "loss": res.metrics["loss"], "solved": res.metrics["solved"],
                     "seconds": time.perf_counter() - t0, "steps": res.step,
                     "run_dir": res.run_dir})
    table = format_table(rows, task)
    print(table)
    (out / "table.md").write_text(table + "\n")
    plot = Path(args.plot) if args.plot else out / "curves.png"
    plot_curves(rows, task, plot)
    print(f"runs in {out}; learning curves in {plot}")
    return 0


# -- rnnkit train longrange: one cell on one problem -------------------------------------------
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 10_000, "minutes": 4.0, "lr": 3e-3, "weight_decay": 0.0, "warmup": 50,
    "clip": 1.0, "eval_every": 100, "log_every": 50, "seed": 0, "device": "auto",
    "cell": "lstm",
}


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long-range problem")
    g.add_argument("--problem", choices=PROBLEMS, default="adding",
                   help="adding, copy or digits")
    g.add_argument("--length", type=POS_INT, help="T: sequence length (adding), delay (copy); "
                   "digits: 64 (default: 100)")
    g.add_argument("--permute", action="store_true", default=None,
                   help="digits: a fixed random pixel order")
    g.add_argument("--init", help="bias of LSTM's forget / GRU's update gate: chrono (Tallec & "
                   "Ollivier 2018), torch, or a number (default: chrono)")


def from_args(args: argparse.Namespace, out: str) -> LongRangeTask:
    length = args.length if args.length is not None else (64 if args.problem == "digits"
                                                          else 100)
    m = pick(args, TRAIN_DEFAULTS, "cell", "seed")
    return make_task(args.problem, length, m["cell"], hidden=args.hidden,
                     batch=args.batch_size, seed=m["seed"], permute=bool(args.permute),
                     init=parse_init(args.init or "chrono"))


def from_config(config: dict[str, Any], run_dir: Path) -> LongRangeTask:
    return LongRangeTask.from_config(config)


def saved_flags(c: dict[str, Any]) -> dict[str, Any]:
    return {"problem": c["problem"], "length": c["length"], "cell": c["cell"],
            "hidden": c["hidden"], "batch_size": c["batch"], "permute": c["permute"],
            "init": c["init"]}


def report(task: LongRangeTask, res: TrainResult, args: argparse.Namespace) -> None:
    m = res.best or res.metrics
    what = "accuracy" if task.task == "digits" else "solved"
    print(f"{task.task}, T = {task.length}, {task.cell.upper()}: test loss {m['loss']:.4g} "
          f"({task.loss_label}), {what} {m['solved']:.1%}; ignoring the input scores "
          f"{task.baseline:.4g}")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    return None


def evaluate(args: argparse.Namespace) -> int:
    run = load(args.run_dir)
    m = run.evaluate()
    t = run.task
    print(f"{args.run_dir}: {t.task}, T = {t.length}, {t.cell.upper()} on the fixed test set: "
          f"loss {m['loss']:.4g} ({t.loss_label}), "
          f"{'accuracy' if t.task == 'digits' else 'solved'} {m['solved']:.1%}")
    return 0


# -- rnnkit longrange: every cell under the same budget ----------------------------------------
def add_longrange_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=PROBLEMS, default="adding")
    p.add_argument("--length", type=POS_INT, default=None,
                   help="T: sequence length (adding), delay (copy); digits: 64 (default: 100)")
    p.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cells")
    p.add_argument("--minutes", type=POS_FLOAT, default=None,
                   help="time budget per cell (default: 10,000 steps or 4 minutes, whichever "
                        "comes first, so 3 cells fit in 15 minutes)")
    p.add_argument("--steps", type=POS_INT, default=None, help="step budget per cell")
    p.add_argument("--permute", action="store_true", help="digits: fixed random pixel order")
    p.add_argument("--seed", type=SEED, default=0, help="random seed")
    p.add_argument("--hidden", type=WIDTH, default=None, help="units (default: per task)")
    p.add_argument("--batch-size", "--batch", type=BATCH, dest="batch", default=None,
                   help="examples per step (default: 64)")
    p.add_argument("--lr", type=LR, default=None, help="learning rate (default: 3e-3)")
    p.add_argument("--init", default="chrono", help="bias of LSTM's forget / GRU's update gate: "
                   "chrono (Tallec & Ollivier 2018), torch, or a number")
    p.add_argument("--eval-every", type=POS_INT, default=100, help="steps between evaluations")
    p.add_argument("--out", default=None, help="run folder (default: runs/longrange/...)")
    p.add_argument("--plot", default=None, help="PNG path (default: <out>/curves.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# -- rnnkit inspect gradients ------------------------------------------------------------------
def run_gradients(args: argparse.Namespace) -> int:
    """The vanishing-gradient picture on the adding problem: ‖∂L/∂h_t‖ over time for each
    cell, at initialisation and (with --train-steps) after training, in float64."""
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in LONGRANGE_CELLS]
    if bad or not cells:
        raise ValueError(f"--cells takes a comma-separated list from "
                         f"{', '.join(LONGRANGE_CELLS)}, got {args.cells!r}")
    out_dir = fresh_dir(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = Path(args.out) if args.out else out_dir / "gradient_flow.png"
    curves: dict[str, Tensor] = {}
    print(f"‖∂L/∂h_t‖ on the adding problem, T={args.length}, first layer, batch "
          f"{args.batch}; ratio = ‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖")
    for cell in cells:
        task = make_task("adding", args.length, cell, seed=args.seed, hidden=args.hidden,
                         init=parse_init(args.init))
        torch.manual_seed(args.seed)
        model = task.build_model()
        batch = task.test_batch(args.batch)
        stages = [("init", model)]
        if args.train_steps:
            trained = task.train_model(args.train_steps, minutes=None, out=str(out_dir / cell))
            stages.append((f"after {args.train_steps} steps", trained))
        for stage, m in stages:  # float64: a tanh RNN's gradient underflows float32
            m64 = copy.deepcopy(m).double()
            flow = gradient_flow(m64, batch, lambda mm, b, t=task: t.loss(mm, b, None))
            n = flow.norms()["rnn.l0"]
            label = f"{cell.upper()} ({stage})"
            curves[label] = n
            print(f"  {label:28s} t=0 {n[0]:.2e}  t={len(n) - 1} {n[-1]:.2e}  "
                  f"ratio {float(n[0] / n[-1]):.1e}   loss {flow.loss:.4f}")
    plot_flows(curves, str(png), f"gradient flow, adding problem, T={args.length}")
    print(f"wrote {png}")
    return 0


def add_gradients_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cells")
    p.add_argument("--length", type=POS_INT, default=100, help="sequence length T")
    p.add_argument("--hidden", type=WIDTH, default=64, help="units")
    p.add_argument("--batch", type=BATCH, default=64, help="test sequences averaged")
    p.add_argument("--train-steps", type=NONNEG_INT, default=0,
                   help="also train each model this many steps on the adding problem")
    p.add_argument("--init", default="chrono", help="keep-gate bias of LSTM/GRU: chrono (as in "
                   "rnnkit longrange), torch (plain torch.nn init) or a number")
    p.add_argument("--seed", type=SEED, default=0, help="random seed")
    p.add_argument("--out-dir", default="runs/gradients", help="folder for the plot and the "
                   "training runs (a fresh one: -2, -3... when it holds runs)")
    p.add_argument("--out", default=None, help="PNG path (default: <out-dir>/gradient_flow.png)")


SPEC = task_spec(
    globals(), "longrange", "one cell on a long-range problem (adding, copy, digits)",
    defaults=TRAIN_DEFAULTS, model_cells=list(LONGRANGE_CELLS), model_flags=("cell", "hidden"),
    commands=(
        Command("longrange", "long-range benchmarks: every cell under the same budget",
                add_longrange_args, run_longrange, DESCRIPTION),
        Command("gradients", "‖∂L/∂h_t‖ over time for RNN vs LSTM vs GRU (plot)",
                add_gradients_args, run_gradients, run_gradients.__doc__ or "",
                group="inspect"),
    ),
)
