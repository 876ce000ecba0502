"""The classifier's command line: ``rnnkit train classify``, ``rnnkit predict RUN``,
``rnnkit eval RUN --data FILE``."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit import checkpoint as ckpt
from rnnkit.data import KINDS
from rnnkit.data.text import read_pieces
from rnnkit.layers import CELLS
from rnnkit.tasks.args import POS_INT, add_split_args, pick
from rnnkit.tasks.classify.api import TextClassifier, load
from rnnkit.tasks.classify.data import TRUNCATE, make_split, read_data
from rnnkit.tasks.classify.metrics import choose_threshold, format_table, plot_confusion
from rnnkit.tasks.classify.model import POOLS
from rnnkit.tasks.classify.task import ClassifyTask, split_args
from rnnkit.tasks.spec import record_split, task_spec, tell, verb
from rnnkit.train import TrainResult

DESCRIPTION = """Train a recurrent text classifier on a labelled CSV, TSV or JSONL file:
embedding, rnnkit GRU/LSTM/RNN stack run with the texts' lengths, pooling over time (last, mean,
max or attention), linear. Without --valid a stratified --valid-fraction is held out, and
--test-fraction holds out a test set, both fixed by --split-seed and recorded in split.json.
The best checkpoint is kept by validation macro-F1; for two classes a decision threshold for
the minority class is chosen on validation (decision.json). Metrics, confusion matrices and
the curves go to the run folder."""

DEFAULTS: dict[str, Any] = {
    "epochs": 10, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0, "warmup": 100,
    "clip": 1.0, "log_every": 20, "seed": 0, "device": "auto",
    "cell": "gru", "hidden": 256, "layers": 1, "embed": 128, "dropout": 0.2,
    "bidirectional": False,
}
OWN = {"valid_fraction": 0.1, "test_fraction": 0.0, "split_seed": 0, "tokenizer": "char",
       "vocab_size": None, "min_freq": 1, "max_len": 512, "truncate": "both", "pool": "max",
       "class_weights": "auto"}
SETTINGS = ("data", "valid", "test", "text_column", "label_column", *OWN)


def add_columns(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--text-column", help="text column: name or index (default: guessed)")
    p.add_argument("--label-column", help="label column: name or index (default: guessed)")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier")
    a = g.add_argument
    a("--data", help="labelled training file (.csv, .tsv/.txt, .jsonl); required")
    a("--valid", help="validation file (default: a stratified split of --data)")
    a("--test", help="test file (default: --test-fraction of --data)")
    add_columns(g)
    add_split_args(g, OWN, stratified=True)
    a("--tokenizer", choices=KINDS, help="default: char")
    a("--vocab-size", type=POS_INT, help="cap (char/jamo/word) or target (bpe)")
    a("--min-freq", type=POS_INT, help="tokens seen fewer times become <unk> (default: 1)")
    a("--max-len", type=POS_INT, help="tokens kept per text (default: 512)")
    a("--truncate", choices=TRUNCATE, help="which part of a long text to keep (default: both "
      "ends)")
    a("--pool", choices=POOLS, help="pooling over time (default: max)")
    a("--class-weights", choices=("auto", "on", "off"), help="weight the loss by inverse "
      "class frequency; auto: on when the majority class is over 80%% (default: auto)")


def from_args(args: argparse.Namespace, out: str) -> ClassifyTask:
    if not args.data:
        raise ValueError("rnnkit train classify needs --data FILE (a labelled .csv, .tsv or "
                         ".jsonl)")
    s = {**pick(args, OWN, *OWN), "data": args.data, "valid": args.valid, "test": args.test,
         "text_column": args.text_column, "label_column": args.label_column,
         **pick(args, DEFAULTS, "batch_size", "seed")}
    split = make_split(**split_args(s))
    s["rows"] = split.record["rows"]
    model = pick(args, DEFAULTS, "cell", "embed", "hidden", "layers", "bidirectional", "pool",
                 "dropout")
    model["pool"] = s["pool"]
    task = ClassifyTask(split, s, model)
    record_split(out, split.record)
    counts = ", ".join(f"{c} {n:,}" for c, n in task.counts.items())
    tell(f"train {len(task.train[0]):,} ({counts}), validation {len(task.valid[0]):,}, test "
         f"{len(split.test[1]) if split.test else 0:,}",
         "empty texts skipped: " + ", ".join(f"{v} in {k}" for k, v in split.skipped.items()),
         f"{task.tok.kind} vocabulary {task.tok.vocab_size:,}",
         f"class weights {'on' if task.class_weights else 'off'} (majority class "
         f"{task.majority:.1%})")
    return task


def from_config(config: dict[str, Any], run_dir: Path) -> ClassifyTask:
    if "settings" not in config:
        raise ValueError(f"{run_dir} was trained by an older rnnkit whose config.json lacks "
                         f"'settings'; it cannot be resumed")
    return ClassifyTask.from_config(config)


def saved_flags(config: dict[str, Any]) -> dict[str, Any]:
    s = config.get("settings", {})
    return {**{k: s.get(k) for k in SETTINGS}, **config["model"],
            "batch_size": s.get("batch_size"),  # what the classifier reads back:
            **{k: config[k] for k in ("max_len", "truncate") if k in config}}


def report(task: ClassifyTask, res: TrainResult, args: argparse.Namespace) -> None:
    out = res.run_dir
    clf = load(out)
    split = task.split
    summary: dict[str, Any] = {"best_step": res.best.get("step"), "steps": res.step,
                               "train_seconds": round(res.elapsed, 1),
                               "skipped_empty": split.skipped}
    if len(task.labels) == 2:  # decision threshold for the minority class, on validation
        pos = task.labels.index(min(task.labels, key=lambda c: (task.counts[c], c)))
        p = clf.predict_proba(split.valid[0])[:, pos]
        thr = choose_threshold(np.array(task.valid[1]), p, pos)
        ckpt.atomic_write(out / "decision.json", json.dumps(
            {"positive": task.labels[pos], "threshold": thr,
             "chosen_on": "validation macro-F1"}))
        clf.positive, clf.threshold = pos, thr
        print(f"decision: {decision_rule(clf)} (chosen on validation macro-F1; "
              f"{out / 'decision.json'})")
    for name, part in (("valid", split.valid), ("test", split.test)):
        if part is not None:
            summary[name] = m = clf.metrics(*part)
            _report(name, m, out, split.skipped.get(name, 0))
    ckpt.atomic_write(out / "metrics.json", json.dumps(summary, indent=1))
    print(f"wrote {out / 'metrics.json'}")


def decision_rule(clf: TextClassifier) -> str:
    if clf.positive is None or clf.threshold is None:
        return "the most probable class"
    pos = clf.labels[clf.positive]
    return f"{pos!r} when p({pos}) >= {clf.threshold:.4f}, else the most probable other class"


def _report(name: str, m: dict[str, Any], run: Path, skipped: int = 0) -> None:
    title = f"{name}" + (f" ({skipped} empty text(s) skipped)" if skipped else "")
    print(format_table(m, title))
    png = run / f"confusion_{name}.png"
    plot_confusion(m, png, f"{run.name}: {name}")
    print(f"wrote {png}")


# -- rnnkit eval ---------------------------------------------------------------------------------
def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_columns(p)


def evaluate(args: argparse.Namespace) -> int:
    """``rnnkit eval RUN_DIR --data FILE``: the same metrics on a labelled file."""
    if not args.data:
        raise ValueError("rnnkit eval of a classifier needs --data FILE (a labelled table)")
    run = Path(args.run_dir)
    clf = load(run)
    d = read_data(args.data, args.text_column, args.label_column)
    m = clf.metrics(d.texts, d.labels)
    m["skipped_empty"] = d.skipped_empty
    m["data"] = str(args.data)
    stem = Path(args.data).stem
    _report(f"eval_{stem}", m, run, d.skipped_empty)
    ckpt.atomic_write(run / f"eval_{stem}.json", json.dumps(m, indent=1))
    print(f"wrote {run / f'eval_{stem}.json'}")
    return 0


# -- rnnkit predict ------------------------------------------------------------------------------
MAX_LINE = 4096  # characters of one stdin line fed as one chunk at most (longer lines are cut)
BATCH_LINES = 256  # lines scored at once by a batch predict (memory stays bounded)


def _fmt(labels: Sequence[str], label: str, p: dict[str, float] | Sequence[float]) -> str:
    vals = p.values() if isinstance(p, dict) else p
    return label + "\t" + " ".join(f"{c}={v:.4f}" for c, v in zip(labels, vals, strict=True))


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", metavar="TEXT", help="a text, or '-' for stdin (one text "
                   "per line)")
    p.add_argument("--file", help="one text per line (with --stream: the whole file, chunk by "
                   "chunk)")
    p.add_argument("--stream", action="store_true",
                   help="score text as it arrives (stdin line by line, or --file chunk by "
                        "chunk), printing the running probabilities after each chunk")
    p.add_argument("--chunk-chars", type=POS_INT, default=64, help="--stream --file chunk size")
    p.set_defaults(_trailing="text")


def _input(args: argparse.Namespace) -> tuple[Any, str]:
    if args.file:
        p = Path(args.file)
        if not p.is_file():
            raise FileNotFoundError(f"{args.file}: no such file")
        return open(p, "rb"), args.file
    raw = getattr(sys.stdin, "buffer", None)  # bytes, decoded strictly by read_pieces
    if raw is None:  # a text stream put in place of stdin (tests, notebooks)
        raw = io.BytesIO(sys.stdin.read().encode("utf-8"))
    return raw, "stdin"


def predict(args: argparse.Namespace) -> int:
    """Print each text's label and class probabilities. Two classes: the label follows the
    decision threshold chosen on validation (printed once on stderr), which may differ from
    the more probable class."""
    try:
        return _predict(args)
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0


def _predict(args: argparse.Namespace) -> int:
    clf = load(args.run_dir)
    if clf.threshold is not None:
        print(f"rnnkit: decision: {decision_rule(clf)}", file=sys.stderr)
    if args.stream:
        session = clf.stream()
        if args.file or args.text in (None, "-"):
            f, name = _input(args)
            chunks: Iterator[str] = read_pieces(f, name, args.chunk_chars if args.file
                                                else MAX_LINE, by_line=not args.file)
        else:
            chunks = iter([args.text])
        for i, chunk in enumerate(chunks, 1):
            p = session.feed(chunk)
            print(f"{i}\t" + _fmt(clf.labels, session.label(p), p), flush=True)
        return 0
    if args.file or args.text in (None, "-"):
        f, name = _input(args)
        lines: Iterator[str] = (ln.removesuffix("\n") for ln in read_pieces(f, name, 10**6))
    else:
        lines = iter([args.text])
    n = empty = 0
    while batch := list(itertools.islice(lines, BATCH_LINES)):
        texts = [t for t in batch if t.strip()]
        probs = iter(clf.predict_proba(texts)) if texts else iter(())
        for t in batch:
            n += 1
            if not t.strip():
                empty += 1
                print("(empty)")
                continue
            p = next(probs)
            print(_fmt(clf.labels, clf.labels[int(clf.decide(p[None])[0])], p))
    if n == 0:
        raise ValueError("no text to classify: give TEXT, --file FILE or '-' for stdin")
    if empty:
        print(f"rnnkit: {empty} empty line(s) printed as (empty)", file=sys.stderr)
    return 0


SPEC = task_spec(
    globals(), "classify", "train a text classifier (CSV/TSV/JSONL)", model_cells=list(CELLS),
    verbs=(verb(predict, "classify text with a trained classifier", add_predict_args),),
)
