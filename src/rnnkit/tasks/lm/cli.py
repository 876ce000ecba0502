"""The language model's command line: ``rnnkit train lm``, ``rnnkit sample RUN``,
``rnnkit eval RUN --data FILE``, ``rnnkit inspect cells RUN``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rnnkit import checkpoint as ckpt
from rnnkit.data import read_text_file
from rnnkit.layers import CELLS
from rnnkit.tasks.args import GENERATED, NONNEG_FLOAT, NONNEG_INT, POS_INT, SEED, number, pick
from rnnkit.tasks.lm.api import LanguageModel, generate, load, load_run
from rnnkit.tasks.lm.data import LMData, load_data, read_split
from rnnkit.tasks.lm.ngram import NGramLM, max_order
from rnnkit.tasks.lm.task import LMTask, bits_per_char, resolve_precision
from rnnkit.tasks.spec import Command, task_spec, verb
from rnnkit.train import TrainResult, is_main_process, pick_device

DESCRIPTION = """Character-level language model: embedding, rnnkit RNN/LSTM/GRU stack, linear
head. Training is truncated BPTT: --batch-size rows, each reading its own contiguous slice of
the training text, --seq tokens per step, the recurrent state carried from batch to batch.
Validation is nats per token and bits per character over the whole validation text.

Without --data the corpus is the code of the running Python's standard library (generated files
and character-mapping tables left out), split by file. --cell ngram fits an interpolated
Kneser-Ney n-gram on the same split instead."""

# Defaults: tuned for `rnnkit train lm` (the stdlib corpus, 4.25 minutes on two CPU cores, the
# same budget for every candidate, README): an LSTM 1x512 with dropout 0.1, AdamW 3e-3, bf16
# mixed precision where the CPU has it (~4,300 steps) beat 1x256 (~7,000 steps), 1x640 and
# 1x768, without dropout or with 0.2. Validation over 0.75 M characters costs ~5.5 s at 1x512,
# hence an evaluation every 1,000 steps.
DEFAULTS: dict[str, Any] = {
    "minutes": 4.25, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "warmup": 50,
    "clip": 1.0, "eval_every": 1000, "log_every": 20, "seed": 0, "device": "auto",
    "cell": "lstm", "hidden": 512, "layers": 1, "embed": 64, "dropout": 0.1,
}
OWN = {"tokenizer": "char", "max_chars": 3_000_000, "min_freq": 1, "tie": False, "order": 9,
       "seq": 100, "eval_rows": 16, "precision": "auto", "baseline_order": 9,
       "sample_length": 400}
VALID_FRACTION = 0.1


def _precision(v: str) -> str:
    if v not in ("auto", "fp32", "bf16"):
        raise argparse.ArgumentTypeError(f"expected auto, fp32 or bf16, got {v!r}")
    return resolve_precision(v)


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("language model")
    a = g.add_argument
    a("--data", help="UTF-8 text file or folder (default: the Python standard library)")
    a("--tokenizer", choices=["char", "jamo"], help="char or jamo (Korean) (default: char)")
    a("--max-chars", type=POS_INT, help="cap on the training text (default: 3,000,000 for the "
      "stdlib corpus, none for --data)")
    a("--min-freq", type=POS_INT, help="characters seen fewer times become <unk> (default: 1)")
    a("--tie", action="store_true", default=None, help="tie the head to the embedding (needs "
      "--embed equal to --hidden)")
    a("--order", type=POS_INT, help="n-gram order for --cell ngram, capped to what 64-bit keys "
      "allow (default: 9)")
    a("--seq", type=POS_INT, help="BPTT length in tokens (default: 100)")
    a("--eval-rows", type=POS_INT, help="parallel slices the validation text is read in "
      "(default: 16)")
    a("--precision", type=_precision, metavar="{auto,fp32,bf16}", help="bf16: bfloat16 mixed "
      "precision for the training forward/backward pass (weights, optimizer and evaluation "
      "stay float32); auto: bf16 on a CPU with native bfloat16 instructions (avx512_bf16 or "
      "AMX), fp32 elsewhere, GPUs included (default: auto)")
    a("--baseline-order", type=NONNEG_INT, default=OWN["baseline_order"], help="also fit an "
      "n-gram of this order (capped as --order) on the same split and print its bits/char; 0 = "
      "skip")
    a("--sample-length", type=number(int, lo=0, hi=10**6), default=OWN["sample_length"],
      help="characters sampled at the end; 0 = none")


def _source(args: argparse.Namespace) -> dict[str, Any]:
    return {"data": str(Path(args.data).resolve()) if args.data else None,
            "max_chars": args.max_chars if args.max_chars is not None
            else (OWN["max_chars"] if args.data is None else None),
            "valid_fraction": VALID_FRACTION, "split_seed": 0}


def _ngram(data: LMData, order: int) -> tuple[NGramLM, float, float]:
    """A Kneser–Ney n-gram fitted on the training text (order capped to what 64-bit keys
    allow) and its validation nats per token and bits per character."""
    ng = NGramLM.fit(data.train, data.tokenizer.vocab_size,
                     min(order, max_order(data.tokenizer.vocab_size)))
    nats = ng.nll(data.valid)
    return ng, nats, bits_per_char(nats, len(data.valid), data.valid_chars)


def from_args(args: argparse.Namespace, out: str) -> LMTask:
    t = time.perf_counter()
    own = pick(args, OWN, "tokenizer", "min_freq", "seq", "eval_rows", "tie")
    data = load_data(_source(args), own["tokenizer"], own["min_freq"])
    main = is_main_process()
    if main:
        print(f"corpus: {'Python stdlib' if args.data is None else args.data}: "
              f"{len(data.train):,} training / {len(data.valid):,} validation tokens, "
              f"vocabulary {data.tokenizer.vocab_size} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    model = {**pick(args, DEFAULTS, "cell", "hidden", "layers", "embed", "dropout"),
             "tie": bool(own["tie"])}
    precision = args.precision or resolve_precision(OWN["precision"], args.device or "auto")
    task = LMTask(data, model, pick(args, DEFAULTS, "batch_size")["batch_size"], own["seq"],
                  own["eval_rows"], precision)
    if args.baseline_order and main:
        t = time.perf_counter()
        ng, nats, bpc = _ngram(data, args.baseline_order)
        order = ng.order
        task.ngram = (order, bpc)
        task.baselines[f"n-gram, order {order}"] = nats
        print(f"n-gram baseline (order {order}, Kneser–Ney) on the same split: {bpc:.3f} "
              f"bits/char ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    m = task.model_cfg
    if main:
        print(f"model: {m['cell'].upper()} {m['layers']}×{m['hidden']} (embedding {m['embed']}, "
              f"dropout {m['dropout']:g}, {precision})", file=sys.stderr)
    return task


def fit_ngram(args: argparse.Namespace, out: str) -> bool:
    """``--cell ngram``: fit the n-gram (no training loop) and save it as a run folder."""
    if args.cell != "ngram":
        return False
    if (Path(out) / "best" / ckpt.MODEL).is_file():
        raise ValueError(f"{out} already holds a run; choose another output folder")
    own = pick(args, OWN, "tokenizer", "min_freq", "order")
    data = load_data(_source(args), own["tokenizer"], own["min_freq"])
    t = time.perf_counter()
    model, nats, bpc = _ngram(data, own["order"])
    order = model.order
    config = {"task": "lm", "model": {"cell": "ngram", "order": order,
                                      "vocab_size": data.tokenizer.vocab_size},
              "tokenizer": data.tokenizer.to_json(),
              "data": {**data.source, "train_tokens": len(data.train),
                       "valid_tokens": len(data.valid), "valid_chars": data.valid_chars}}
    ckpt.save(Path(out) / "best", model, config, {"step": 0, "metrics": {"loss": nats,
                                                                       "bpc": bpc}})
    ckpt.atomic_write(Path(out) / ckpt.CONFIG, json.dumps(config, indent=1))
    print(f"n-gram (order {order}, interpolated Kneser–Ney): validation {bpc:.4f} bits/char "
          f"({nats:.4f} nats per {data.tokenizer.kind}; {time.perf_counter() - t:.1f} s); run "
          f"folder {out}")
    return True


def from_config(config: dict[str, Any], run_dir: Path) -> LMTask:
    if config["model"].get("cell") == "ngram":
        raise ValueError(f"{run_dir} is an n-gram model: it is fitted in one pass, there is "
                         f"nothing to resume")
    return LMTask.from_config(config)


def saved_flags(config: dict[str, Any]) -> dict[str, Any]:
    m, d = config["model"], config["data"]
    return {**{k: m.get(k) for k in ("cell", "hidden", "layers", "dropout", "tie", "order")},
            "embed": m.get("embed", m.get("emb")), "batch_size": config.get("batch"),
            "seq": config.get("seq"), "eval_rows": config.get("eval_rows"),
            "data": d.get("data"), "max_chars": d.get("max_chars"),
            "tokenizer": config["tokenizer"]["kind"],
            "precision": config.get("precision", "fp32")}


def comparison(net: float, base: float, order: int) -> str:
    """The network against the n-gram, in words that fit the sign."""
    diff = base - net
    if abs(diff) < 5e-4:
        how = "as good as the n-gram"
    else:
        how = f"{abs(diff):.3f} bits/char {'better' if diff > 0 else 'worse'} than the n-gram"
    return f"n-gram baseline (order {order}): {base:.3f} bits/char; the network is {how}"


def report(task: LMTask, res: TrainResult, args: argparse.Namespace) -> None:
    lm = load(res.run_dir, device=str(pick_device()))
    n = getattr(args, "sample_length", 0) or 0
    if n:
        prime = "def " if task.data.source.get("data") is None else ""
        print(f"\n--- sample (temperature 0.8) from {res.run_dir} ---")
        for piece in lm.generate(prime=prime, length=n, seed=0):
            print(piece, end="", flush=True)
        print("\n---")
    best = res.best or res.metrics
    print(f"validation: {best['bpc']:.3f} bits/char ({best['loss']:.4f} nats per "
          f"{task.data.tokenizer.kind}) at step {best.get('step', res.step):,} of {res.step:,}")
    ng = getattr(task, "ngram", None)
    if ng is not None:
        print(comparison(best["bpc"], ng[1], ng[0]))


# -- rnnkit eval / sample / inspect cells ------------------------------------------------------
def add_eval_args(p: argparse.ArgumentParser) -> None:
    return None  # --data and --batch-size are shared


def evaluate(args: argparse.Namespace) -> int:
    if not args.data:
        raise ValueError("rnnkit eval of a language model needs --data FILE (UTF-8 text)")
    lm = load(args.run_dir, device=str(pick_device()))
    text = read_text_file(args.data)
    nats, n = lm.nats_per_token(text, rows=args.batch_size)
    bpc = bits_per_char(nats, n, len(text))
    unk = lm.tokenizer.encode(text).count(lm.tokenizer.unk_id)
    unit = lm.tokenizer.kind
    print(f"{args.data}: {bpc:.4f} bits/char ({nats:.4f} nats per {unit}) over {n - 1:,} "
          f"predictions, {len(text):,} characters" + (
              f"; {unk} unknown {unit}(s) mapped to <unk>" if unk else ""))
    return 0


def add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prime", default="", help="text to start from (read once)")
    p.add_argument("--length", type=GENERATED, default=500, help="tokens to generate")
    p.add_argument("--temperature", type=NONNEG_FLOAT, default=0.8,
                   help="sampling temperature; 0 = greedy (deterministic)")
    p.add_argument("--top-k", type=POS_INT, default=None,
                   help="sample among the K most likely (default: all)")
    p.add_argument("--seed", type=SEED, default=None, help="random seed (default: random)")


def sample(args: argparse.Namespace) -> int:
    model, tok, _ = load_run(args.run_dir, device=str(pick_device()))
    for piece in generate(model, tok, args.prime, args.length, args.temperature, args.top_k,
                          args.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def add_cells_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a character LM run folder (rnnkit train lm)")
    p.add_argument("--text", help="UTF-8 Python source to read (default: the run's validation "
                   "text)")
    p.add_argument("--max-chars", type=POS_INT, default=10000, help="characters read")
    p.add_argument("--html", help="write a self-contained page here")
    p.add_argument("--html-units", default="32", help="units in the page's picker: a count, "
                   "or comma-separated names such as l0.c17,l0.h3")


def inspect_cells(args: argparse.Namespace) -> int:
    """Correlate every unit with text features; best unit per feature; gate statistics."""
    from rnnkit.inspect.units import analyse, write_html

    if not Path(args.run_dir).exists():
        raise FileNotFoundError(f"no run folder {args.run_dir}")
    model, tok, config = load_run(args.run_dir)
    if config["model"].get("cell") == "ngram":
        raise ValueError(f"{args.run_dir} is an n-gram model; inspect cells needs a recurrent one")
    if args.text:
        text = read_text_file(args.text)[: args.max_chars]
    else:  # the start of the run's validation text (whole files, so the code starts cleanly)
        text = read_split(config["data"])[1][: args.max_chars]
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    report = analyse(model, ids, text)
    print(report.format())
    if args.html:
        units: int | list[str] = (int(args.html_units) if args.html_units.isdigit()
                                  else [u.strip() for u in args.html_units.split(",")])
        p = write_html(report, args.html, units=units)
        print(f"wrote {p} (open it in a browser; #unit=NAME in the URL picks a unit)")
    return 0


SPEC = task_spec(
    globals(), "lm", "character-level language model (default corpus: Python's stdlib source)",
    model_cells=[*CELLS, "ngram"], fit=fit_ngram,
    verbs=(verb(sample, "generate text from a trained language model", add_sample_args,
                "Stream text from a trained run, one token at a time, carrying the recurrent "
                "state."),),
    commands=(Command("cells", "units that track strings, comments, indentation, brackets",
                      add_cells_args, inspect_cells, group="inspect",
                      description="Which units of a character language model track strings, "
                      "comments, indentation, line position and bracket depth (correlations "
                      "over Python source), and how saturated its gates are; --html writes a "
                      "page colouring the text by a unit."),),
)

__all__ = ["SPEC", "LanguageModel", "comparison"]
