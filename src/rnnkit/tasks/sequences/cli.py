"""The sequence classifier's command line: ``rnnkit train sequences``, ``rnnkit eval RUN``,
``rnnkit predict RUN --file FILE`` and ``rnnkit predict RUN --stream`` (CSV rows on stdin)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit import checkpoint as ckpt
from rnnkit.data.text import read_pieces
from rnnkit.inspect import count_params
from rnnkit.layers import CELLS
from rnnkit.tasks.args import POS_INT, add_split_args, pick
from rnnkit.tasks.classify.metrics import format_table, plot_confusion
from rnnkit.tasks.classify.model import POOLS
from rnnkit.tasks.sequences.api import SequenceModel, load
from rnnkit.tasks.sequences.data import (
    BUILTINS,
    FILLS,
    Sequences,
    fill_missing,
    load_source,
    make_split,
)
from rnnkit.tasks.sequences.task import SequenceTask, baselines
from rnnkit.tasks.spec import record_split, task_spec, verb
from rnnkit.train import TrainResult

DESCRIPTION = """Classify sequences of real-valued vectors (sensor streams, shape (T, F)) or
video frames (T, H, W[, C]): per-feature normalisation with training-split statistics, for
frames a small CNN on every frame, an rnnkit GRU/LSTM/RNN stack run with each sequence's own
length, pooling over time, linear. --data is a file (.npz with X, lengths, y; a long-form CSV
with id, time, features, label; a UEA/UCR .ts file) or a built-in set: synthetic (default;
(20, 6) sequences, no download), basicmotions, japanesevowels (both bundled with sktime),
moving-digits (synthetic motion of real digits). --window/--stride cut long recordings into
windows for training; at evaluation each recording's window probabilities are averaged. The
job prints test metrics beside two baselines on the same split: the majority class and
logistic regression on mean-pooled features and on the last step alone."""

DEFAULTS: dict[str, Any] = {
    "epochs": 30, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "warmup": 20,
    "clip": 1.0, "log_every": 20, "seed": 0, "device": "auto",
    "cell": "gru", "hidden": 64, "layers": 1, "embed": 64, "dropout": 0.1,
    "bidirectional": False,
}
OWN: dict[str, Any] = {"data": "synthetic", "test": None, "valid_fraction": 0.2,
                       "test_fraction": 0.2, "split_seed": 0, "fill": None, "normalise": True,
                       "pool": "last", "window": None, "stride": None, "id_column": "id",
                       "time_column": "time", "label_column": "label"}
COLUMNS = ("id_column", "time_column", "label_column")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sequences")
    a = g.add_argument
    a("--data", help=f"a .npz, long-form .csv or .ts file, a folder of clips, or a built-in "
      f"set: {', '.join(BUILTINS)} (default: synthetic)")
    a("--test", help="test file (default: the built-in set's own test split, else "
      "--test-fraction of --data)")
    add_split_args(g, OWN, valid="of the training part, held out for validation",
                   test="of a file without --test, held out for testing", stratified=True)
    a("--fill", choices=FILLS, help="fill NaN inputs: ffill (carry the last value forward) or "
      "zero (default: NaN is an error naming its position)")
    a("--normalise", action=argparse.BooleanOptionalAction, default=None,
      help="per-feature mean/std from the training split, saved in the run (default: on)")
    a("--pool", choices=POOLS, help="pooling over time (default: last)")
    a("--window", type=POS_INT, metavar="T", help="cut recordings into windows of T steps "
      "for training; evaluation averages each recording's windows (default: whole sequences)")
    a("--stride", type=POS_INT, metavar="S", help="steps between windows (default: --window)")
    a("--id-column", help="long CSV: sequence id column (default: id)")
    a("--time-column", help="long CSV: time column (default: time)")
    a("--label-column", help="long CSV: label column (default: label)")


def _columns(s: dict[str, Any]) -> dict[str, str]:
    return {k: s[k] for k in COLUMNS if s.get(k)}


def split_of(s: dict[str, Any]):
    return make_split(s["data"], s.get("test"), valid_fraction=s["valid_fraction"],
                      test_fraction=s["test_fraction"], seed=s["split_seed"], fill=s["fill"],
                      columns=_columns(s))


def from_args(args: argparse.Namespace, out: str) -> SequenceTask:
    s = {**pick(args, OWN, *OWN), **pick(args, DEFAULTS, "batch_size", "seed")}
    if s["stride"] is not None and s["window"] is None:
        raise ValueError("--stride needs --window (the window length)")
    split = split_of(s)
    model = {**pick(args, DEFAULTS, "cell", "hidden", "layers", "bidirectional", "dropout",
                    "embed"), "pool": s["pool"]}
    task = SequenceTask(split, s, model)
    record_split(out, split.record)
    n_test = len(split.test) if split.test is not None else 0
    lens = [len(x) for x in split.train.X]
    counts = ", ".join(f"{c} {n}" for c, n in task.counts.items())
    print(f"train {len(split.train):,} sequences ({counts}; {min(lens)}-{max(lens)} steps of shape "
          f"{task.step_shape}), validation {len(split.valid):,}, test {n_test:,}"
          + (f"; {len(task.train_X):,} training windows of {s['window']} steps"
             if s["window"] else ""), file=sys.stderr)
    return task


def from_config(config: dict[str, Any], run_dir: Path) -> SequenceTask:
    s = config["settings"]
    split = split_of(s)
    return SequenceTask(split, s, config["model"], config["labels"], config["normalisation"])


def saved_flags(config: dict[str, Any]) -> dict[str, Any]:
    s = config.get("settings", {})
    return {**{k: s.get(k) for k in OWN}, **config["model"], "batch_size": s.get("batch_size")}


def _report(name: str, m: dict[str, Any], run: Path) -> None:
    print(format_table(m, name))
    png = run / f"confusion_{name}.png"
    plot_confusion(m, png, f"{run.name}: {name}")
    print(f"wrote {png}")


def plot_early(curve: dict[float, float], path: Path, title: str,
               chance: float | None = None) -> None:
    """Accuracy against the percentage of each sequence observed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    xs = [100 * f for f in curve]
    ax.plot(xs, list(curve.values()), "o-", label="network")
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="majority class")
    ax.set_xlabel("% of the sequence observed")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _early(sm: SequenceModel, part: Sequences, run: Path, name: str, chance: float) -> dict:
    curve = sm.early(part.X, part.y)
    print("accuracy vs % observed: " + "  ".join(f"{100 * f:.0f}% {a:.3f}"
                                                 for f, a in curve.items()))
    png = run / f"early_{name}.png"
    plot_early(curve, png, f"{run.name}: {name}", chance)
    print(f"wrote {png}")
    return {str(k): v for k, v in curve.items()}


def report(task: SequenceTask, res: TrainResult, args: argparse.Namespace) -> None:
    out = res.run_dir
    sm = load(out)
    summary: dict[str, Any] = {"best_step": res.best.get("step"), "steps": res.step,
                               "train_seconds": round(res.elapsed, 1),
                               "parameters": count_params(sm.model)}
    for name, part in (("valid", task.split.valid), ("test", task.split.test)):
        if part is not None:
            summary[name] = m = sm.metrics(part.X, part.y)
            _report(name, m, out)
    part, name = ((task.split.test, "test") if task.split.test is not None
                  else (task.split.valid, "valid"))
    base = summary["baselines"] = baselines(task, part)
    net = summary[name]["accuracy"]
    print(f"{name} accuracy: network {net:.4f} ({summary['parameters']:,} parameters); "
          + "; ".join(f"{k} {v:.4f}" for k, v in base.items()))
    if not task.model_cfg.get("bidirectional"):
        summary["early"] = _early(sm, part, out, name, base["majority class"])
    ckpt.atomic_write(out / "metrics.json", json.dumps(summary, indent=1))
    print(f"wrote {out / 'metrics.json'}")


# -- rnnkit eval --------------------------------------------------------------------------------
def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--early", action="store_true", help="sequences: also accuracy against the "
                   "%% of each sequence observed (a plot)")


def evaluate(args: argparse.Namespace) -> int:
    """``rnnkit eval RUN [--data FILE]``: metrics on a labelled file or built-in set (its test
    split), default the run's own test split."""
    run = Path(args.run_dir)
    sm = load(run)
    s = sm.config["settings"]
    if args.data:
        full, test = load_source(args.data, _columns(s))
        part = fill_missing(test if test is not None else full, s.get("fill"), args.data)
        name = f"eval_{Path(args.data).stem}"
    else:
        split = split_of(s)
        part, name = ((split.test, "eval_test") if split.test is not None
                      else (split.valid, "eval_valid"))
    m = sm.metrics(part.X, part.y)
    _report(name, m, run)
    if getattr(args, "early", False):
        counts = np.unique(part.y, return_counts=True)[1]
        m["early"] = _early(sm, part, run, name, counts.max() / counts.sum())
    m["data"] = str(args.data or s["data"])
    ckpt.atomic_write(run / f"{name}.json", json.dumps(m, indent=1))
    print(f"wrote {run / f'{name}.json'}")
    return 0


# -- rnnkit predict -----------------------------------------------------------------------------
def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", metavar="TEXT", help="'-' for stdin")
    p.add_argument("--file", help="sequences: a .npz, long .csv or .ts file (with --stream: "
                   "CSV rows, one time step each)")
    p.add_argument("--stream", action="store_true", help="sequences: read one time step per "
                   "CSV row (stdin, or --file) and print the running probabilities")
    p.set_defaults(_trailing="text")


def _fmt(labels: list[str], p: Any) -> str:
    p = list(p.values()) if isinstance(p, dict) else list(p)
    return labels[int(np.argmax(p))] + "\t" + " ".join(
        f"{c}={v:.4f}" for c, v in zip(labels, p, strict=True))


MAX_ROW = 1 << 16  # characters of one streamed row at most


def _stream_rows(file: str | None) -> Iterator[tuple[int, list[str], str]]:
    """``(line number, CSV fields, source name)`` of each line of ``file`` or stdin, read as
    it arrives and decoded as strict UTF-8 like every other input (a bad byte is an error
    naming the byte offset); a line past :data:`MAX_ROW` characters is an error, not a
    memory blow-up."""
    if file:
        if not Path(file).is_file():
            raise FileNotFoundError(f"{file}: no such file")
        raw, name = open(file, "rb"), file
    else:
        raw = getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode())
        name = "stdin"
    with raw:
        for k, piece in enumerate(read_pieces(raw, name, MAX_ROW), 1):
            if len(piece) == MAX_ROW and not piece.endswith("\n"):
                raise ValueError(f"{name} line {k} is longer than {MAX_ROW:,} characters; "
                                 f"expected one row of numbers per line")
            yield k, (next(csv.reader([piece])) if piece.strip() else []), name


def predict(args: argparse.Namespace) -> int:
    """Print each sequence's label and class probabilities (--file), or with --stream the
    running probabilities after every time step (CSV rows of F numbers on stdin)."""
    sm = load(args.run_dir)
    if args.stream:
        session = sm.stream()
        for k, row, name in _stream_rows(args.file):
            if not row or not "".join(row).strip():
                continue
            try:
                v = np.array([float(c) for c in row], dtype=np.float32)
            except ValueError:
                if k == 1:  # a header
                    continue
                raise ValueError(f"{name} line {k}: expected {sm.model.step_shape[0]} numbers, "
                                 f"got {row[:8]}") from None
            if v.shape != sm.model.step_shape:
                raise ValueError(f"line {k}: expected {sm.model.step_shape[0]} values per row, "
                                 f"got {len(v)}")
            print(f"{session.steps + 1}\t" + _fmt(sm.labels, session.feed(v)), flush=True)
        return 0
    if not args.file:
        raise ValueError("rnnkit predict of a sequence classifier needs --file FILE (or "
                         "--stream with rows on stdin)")
    d = load_source(args.file)[0]
    d = fill_missing(d, sm.config["settings"].get("fill"), args.file)
    for i, p in zip(d.ids or range(len(d)), sm.predict_proba(d.X), strict=True):
        print(f"{i}\t" + _fmt(sm.labels, p))
    return 0


SPEC = task_spec(
    globals(), "sequences", "classify sequences of vectors (sensors) or video frames",
    model_cells=list(CELLS), verbs=(verb(predict, "classify sequences with a trained sequence "
                                         "classifier", add_predict_args),),
)
