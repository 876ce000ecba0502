"""The translator's command line: ``rnnkit train translate``, ``rnnkit translate RUN``,
``rnnkit eval RUN``."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from rnnkit import checkpoint as ckpt
from rnnkit.data import KINDS
from rnnkit.data.text import read_pieces
from rnnkit.seq2seq import ATTENTIONS, BRIDGES, DECODER_CELLS
from rnnkit.tasks.args import (
    BEAM,
    FRACTION,
    NONNEG_INT,
    PENALTY,
    POS_INT,
    add_split_args,
    number,
    pick,
)
from rnnkit.tasks.spec import record_split, task_spec, verb
from rnnkit.tasks.translate.api import load, warn_cut
from rnnkit.tasks.translate.data import Pairs, read_pairs, target_language
from rnnkit.tasks.translate.metrics import baselines, scores
from rnnkit.tasks.translate.task import TranslateTask, load_split
from rnnkit.train import TrainResult, is_main_process

DESCRIPTION = """Train an encoder-decoder with attention to translate: a bidirectional rnnkit
LSTM/GRU encoder, a decoder with additive (Bahdanau) or multiplicative (Luong dot, general)
attention, masked so that padding never gets weight, input feeding and a bridge from the
encoder's final state. --data names a TSV/CSV/JSONL file of sentence pairs (source and target
columns guessed or named); without it, the built-in corpus: numbers to their English words
(40,512 -> forty thousand five hundred twelve), needing no data. A fixed test and validation
split (--test-fraction, --valid-fraction by --split-seed) is recorded in split.json; the best
checkpoint is kept by validation chrF. The job ends with chrF and BLEU (sacrebleu) of greedy
and beam-search translations of the test split, beside two baselines on the same split:
copying the source, and retrieval (the translation of the nearest training source by
character n-gram TF-IDF)."""

DEFAULTS: dict[str, Any] = {
    "epochs": 10, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.0, "warmup": 100,
    "clip": 1.0, "log_every": 20, "seed": 0, "device": "auto",
    "cell": "lstm", "hidden": 256, "layers": 1, "embed": 128, "dropout": 0.2,
    "bidirectional": True, "best_metric": "chrf", "best_mode": "max",
}
OWN: dict[str, Any] = {
    "test_fraction": 0.05, "valid_fraction": 0.05, "split_seed": 0, "src_tokenizer": "char",
    "tgt_tokenizer": "char", "src_vocab_size": None, "tgt_vocab_size": None, "min_freq": 1,
    "max_len": 200, "attention": "general", "input_feed": True, "bridge": "linear",
    "tie": False, "label_smoothing": 0.1, "eval_sentences": 500, "beam": 5, "alpha": 0.6,
    "max_ratio": 2.0, "max_extra": 10, "synthetic_size": 8000, "fuzzy": False,
    "fuzzy_min": 0.5, "fuzzy_bands": [0.6, 0.7, 0.8, 0.9, 0.95], "copy": None,
    "copy_source": False,
}
SETTINGS = ("data", "source_column", "target_column", "target_lang", *OWN)
MODEL_KEYS = ("cell", "embed", "hidden", "layers", "bidirectional", "dropout")


def add_columns(p: Any) -> None:
    p.add_argument("--source-column", help="source column: name or index (default: the "
                   "first)")
    p.add_argument("--target-column", help="target column: name or index (default: the "
                   "second)")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("translation")
    a = g.add_argument
    a("--data", metavar="PAIRS", help="sentence pairs (.tsv, .csv, .jsonl); default: the "
      "built-in numbers-to-words corpus")
    add_columns(g)
    a("--target-lang", help="target language code (BLEU tokenizes ko/ja/zh by character; "
      "default: the target column's name, else guessed from the script)")
    add_split_args(g, OWN)
    a("--src-tokenizer", choices=KINDS, help="source tokenizer (default: char)")
    a("--tgt-tokenizer", choices=KINDS, help="target tokenizer (default: char; jamo for "
      "Korean)")
    a("--src-vocab-size", type=POS_INT, help="cap (char/jamo/word) or target (bpe)")
    a("--tgt-vocab-size", type=POS_INT, help="cap (char/jamo/word) or target (bpe)")
    a("--min-freq", type=POS_INT, help="symbols seen fewer times become <unk> (default: 1)")
    a("--max-len", type=POS_INT, help="tokens kept per sentence, longer ones cut and counted "
      "(default: 200)")
    a("--attention", choices=ATTENTIONS, help="score function; none: the plain encoder-"
      "decoder (default: general)")
    a("--input-feed", action=argparse.BooleanOptionalAction, default=None,
      help="feed the previous attentional vector into the next step (default: on)")
    a("--bridge", choices=BRIDGES, help="decoder's initial state from the encoder's final "
      "state (linear) or zeros (default: linear)")
    a("--tie", action=argparse.BooleanOptionalAction, default=None,
      help="tie the output layer to the target embedding (needs --embed = --hidden)")
    a("--fuzzy", action=argparse.BooleanOptionalAction, default=None,
      help="translation memory (Neural Fuzzy Repair): the encoder reads each source with the "
      "translation of its nearest training source (char n-gram TF-IDF), so the network "
      "learns to repair fuzzy matches; the memory is saved as memory.jsonl (default: off)")
    a("--fuzzy-min", type=FRACTION, help="cosine below which no match is given (default: "
      "0.5; unrelated short texts score about 0.3 by their shared spaces)")
    a("--fuzzy-bands", type=bands, metavar="EDGES", help="similarity bands, told to the "
      "encoder by the separator before the match (comma-separated edges above --fuzzy-min, "
      "or 'none' for one separator; default: 0.6,0.7,0.8,0.9,0.95)")
    a("--copy", action=argparse.BooleanOptionalAction, default=None,
      help="the decoder can copy the fuzzy match's pieces (pointer-generator, See et al. "
      "2017; needs --fuzzy and attention; default: on with --fuzzy)")
    a("--copy-source", action=argparse.BooleanOptionalAction, default=None,
      help="read the source with the target tokenizer (so --src-tokenizer and "
      "--src-vocab-size are not used) and let the decoder copy its pieces: option names, "
      "placeholders and file names that a translation keeps as they are (needs attention; "
      "default: off)")
    a("--label-smoothing", type=FRACTION, help="default: 0.1")
    a("--eval-sentences", type=NONNEG_INT, help="validation pairs translated at each "
      "evaluation, 0 = all (default: 500)")
    add_decode_args(g, final=True)
    a("--synthetic-size", type=POS_INT, help="pairs of the built-in corpus (default: 8000)")


def bands(text: str) -> list[float]:
    """``--fuzzy-bands``: ``0.6,0.7,0.9`` → increasing cosines in (0, 1]; ``none`` → []."""
    if text.strip().lower() in ("none", ""):
        return []
    try:
        edges = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated cosines such as "
                                         f"0.6,0.8,0.9 (or none), got {text!r}") from None
    if edges != sorted(set(edges)) or not all(0 < e <= 1 for e in edges):
        raise argparse.ArgumentTypeError(f"expected increasing cosines in (0, 1], got {text!r}")
    return edges


def add_decode_args(g: Any, final: bool = False) -> None:
    a = g.add_argument
    a("--beam", type=BEAM, help=("beam size of the final test translations" if final else
                                    "beam size, 1 = greedy") + " (default: 5)")
    a("--alpha", type=PENALTY, help="GNMT length penalty ((5+len)/6)^alpha (default: 0.6)")
    a("--max-ratio", type=number(float, lo=0, hi=100), help="longest translation: ratio x "
      "source length + --max-extra (default: 2.0)")
    a("--max-extra", type=number(int, lo=0, hi=10_000), help="default: 10")


def from_args(args: argparse.Namespace, out: str) -> TranslateTask:
    s: dict[str, Any] = {**pick(args, OWN, *OWN), "data": args.data,
                         "source_column": args.source_column, "target_column": args.target_column,
                         **pick(args, DEFAULTS, "batch_size", "seed")}
    split = load_split({**s, "target_lang": None})
    lang = target_language(Pairs(split.train[0], split.train[1],
                                 columns=tuple(split.record["columns"])), args.target_lang)
    s.update(target_lang=lang, rows=split.record["rows"])
    if s["tie"] and pick(args, DEFAULTS, "embed")["embed"] != pick(args, DEFAULTS,
                                                                  "hidden")["hidden"]:
        raise ValueError("--tie needs --embed equal to --hidden (the output layer reads the "
                         "attentional vector, of --hidden features)")
    if getattr(args, "fuzzy_bands", None) is None:   # the default's edges above --fuzzy-min
        s["fuzzy_bands"] = [b for b in OWN["fuzzy_bands"] if b > s["fuzzy_min"]]
    if s["copy"] is None:
        s["copy"] = bool(s["fuzzy"]) and s["attention"] != "none"
    if s["copy"] and not (s["fuzzy"] and s["attention"] != "none"):
        raise ValueError(f"--copy copies from the fuzzy match with the attention weights: it "
                         f"needs --fuzzy and an --attention other than none (got fuzzy "
                         f"{s['fuzzy']}, attention {s['attention']})")
    if s["copy_source"] and s["attention"] == "none":
        raise ValueError("--copy-source copies with the attention weights: it needs an "
                         "--attention other than none")
    model = {**pick(args, DEFAULTS, *MODEL_KEYS), "attention": s["attention"],
             "input_feed": s["input_feed"], "bridge": s["bridge"], "tie": s["tie"]}
    if model["cell"] not in DECODER_CELLS:
        raise ValueError(f"--cell for translation must be one of {', '.join(DECODER_CELLS)}, "
                         f"got {model['cell']!r}")
    task = TranslateTask(split, s, model)
    record_split(out, split.record)
    if task.memory and is_main_process():
        task.memory.save(out)
    sk = split.record["skipped"]
    print(f"{split.record['data'] or 'built-in corpus'}: {split.record['rows']:,} pairs "
          f"(skipped: {sk['one_column']} with one column, {sk['empty']} with an empty side); "
          f"train {len(task.train[0]):,}, validation {len(task.valid[0]):,}, test "
          f"{len(split.test[0]):,}; cut to {s['max_len']} tokens: {sum(task.cut.values())}; "
          + ("source read with the target tokenizer (--copy-source), " if s["copy_source"]
             else f"source {task.src_tok.kind} vocabulary {task.src_tok.vocab_size:,}, ") +
          f"target "
          f"{task.tgt_tok.kind} {task.tgt_tok.vocab_size:,}; target language {lang}"
          + (f"; translation memory of {len(task.memory.src):,} pairs" if task.memory else ""),
          file=sys.stderr)
    return task


def from_config(config: dict[str, Any], run_dir: Path) -> TranslateTask:
    return TranslateTask.from_config(config)


def saved_flags(config: dict[str, Any]) -> dict[str, Any]:
    s = config.get("settings", {})
    return {**{k: s.get(k) for k in SETTINGS}, **{k: config["model"].get(k) for k in MODEL_KEYS},
            "batch_size": s.get("batch_size")}


def table(rows: dict[str, dict[str, Any]]) -> str:
    w = max(len(k) for k in rows)
    lines = [f"{'system':<{w}}  {'chrF':>6}  {'BLEU':>6}"]
    lines += [f"{k:<{w}}  {v['chrf']:6.1f}  {v['bleu']:6.1f}" for k, v in rows.items()]
    return "\n".join(lines)


def report(task: TranslateTask, res: TrainResult, args: argparse.Namespace) -> None:
    out = res.run_dir
    tr = load(out)
    s = task.settings
    test = task.split.test if task.split.test[0] else task.split.valid
    part = "test" if task.split.test[0] else "validation"
    rows = baselines(task.split.train, test, s["target_lang"],
                     task.memory.retrieval if task.memory else None)  # one TF-IDF fit
    greedy = tr.translate(test[0], beam=1)
    rows["rnnkit greedy"] = scores(greedy, test[1], s["target_lang"])
    rows[f"rnnkit beam {s['beam']}"] = tr.evaluate(test[0], test[1], beam=s["beam"],
                                                   alpha=s["alpha"])
    if task.memory:   # the same search without the match as a candidate of its own
        rows[f"rnnkit beam {s['beam']}, no match candidate"] = tr.evaluate(
            test[0], test[1], beam=s["beam"], alpha=s["alpha"], match_candidate=False)
    print(f"{part} split, {len(test[0]):,} pairs:")
    print(table(rows))
    print(f"signatures: {rows['copy']['chrf_signature']}; {rows['copy']['bleu_signature']}")
    best = rows[f"rnnkit beam {s['beam']}"]["chrf"]
    d = best - rows["retrieval"]["chrf"]
    print(f"rnnkit (beam {s['beam']}) is {abs(d):.1f} chrF {'above' if d >= 0 else 'below'} "
          f"the retrieval baseline and {best - rows['copy']['chrf']:+.1f} against copying")
    for i in range(min(3, len(test[0]))):
        print(f"  {test[0][i]}\n    → {greedy[i]}\n    ref {test[1][i]}")
    ckpt.atomic_write(out / "metrics.json", json.dumps(
        {"split": part, "n": len(test[0]), "best_step": res.best.get("step"),
         "steps": res.step, "train_seconds": round(res.elapsed, 1), "systems": rows,
         "examples": [{"source": test[0][i], "greedy": greedy[i], "reference": test[1][i]}
                      for i in range(min(3, len(test[0])))]}, indent=1, ensure_ascii=False))
    print(f"wrote {out / 'metrics.json'}")


# -- rnnkit eval ---------------------------------------------------------------------------------
def add_eval_args(p: Any) -> None:
    add_columns(p)
    add_decode_args(p)
    add_candidate_arg(p)


def add_candidate_arg(p: Any) -> None:
    p.add_argument("--no-match-candidate", action="store_true", help="a model with a "
                   "translation memory: do not rank the fuzzy match itself among the "
                   "searched translations (the model's own output only)")


def evaluate(args: argparse.Namespace) -> int:
    """``rnnkit eval RUN [--data PAIRS]``: chrF and BLEU of greedy and beam translations of
    the run's test split (or of a file of pairs)."""
    run = Path(args.run_dir)
    tr = load(run)
    s = tr.config["settings"]
    if getattr(args, "max_ratio", None) is not None:
        tr.ratio = args.max_ratio
    if getattr(args, "max_extra", None) is not None:
        tr.extra = args.max_extra
    if args.data:
        p = read_pairs(args.data, args.source_column, args.target_column)
        src, ref, name = p.src, p.tgt, Path(args.data).stem
    else:
        sp = load_split(s)
        src, ref, name = (*sp.test, "test") if sp.test[0] else (*sp.valid, "valid")
    beam = args.beam or s.get("beam", 5)
    alpha = s.get("alpha", 0.6) if args.alpha is None else args.alpha
    cand = not getattr(args, "no_match_candidate", False)
    rows = {"rnnkit greedy": tr.evaluate(src, ref, beam=1, match_candidate=cand)}
    if beam > 1:
        rows[f"rnnkit beam {beam}"] = tr.evaluate(src, ref, beam=beam, alpha=alpha,
                                                  match_candidate=cand)
    warn_cut(tr)
    print(f"{name}: {len(src):,} pairs")
    print(table(rows))
    ckpt.atomic_write(run / f"eval_{name}.json", json.dumps(rows, indent=1))
    print(f"wrote {run / f'eval_{name}.json'}")
    return 0


# -- rnnkit translate ----------------------------------------------------------------------------
def add_translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", metavar="TEXT", help="a sentence, or '-' for stdin (one "
                   "per line)")
    p.add_argument("--file", help="one sentence per line")
    p.add_argument("--n-best", type=BEAM, default=1, help="print the N best translations "
                   "(tab-separated)")
    p.add_argument("--block-ngram", type=NONNEG_INT, default=0, help="forbid repeating an "
                   "n-gram of this size (0 = off)")
    p.add_argument("--attention-png", metavar="PNG", help="draw the attention matrix of the "
                   "(first) sentence")
    add_decode_args(p)
    add_candidate_arg(p)
    p.set_defaults(_trailing="text")


def translate(args: argparse.Namespace) -> int:
    """Translate TEXT, each line of --file, or stdin line by line (empty lines are printed
    as empty lines)."""
    tr = load(args.run_dir)
    beam = args.beam or 5
    if args.n_best > beam:
        raise ValueError(f"--n-best {args.n_best} needs --beam of at least {args.n_best}, got "
                         f"{beam}")
    if args.max_ratio is not None:
        tr.ratio = args.max_ratio
    if args.max_extra is not None:
        tr.extra = args.max_extra
    alpha = 0.6 if args.alpha is None else args.alpha
    if args.text not in (None, "-") and not args.file:
        lines = iter([args.text])
    else:
        if args.file:
            if not Path(args.file).is_file():
                raise FileNotFoundError(f"{args.file}: no such file")
            f = open(args.file, "rb")
            name = args.file
        else:
            f = getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode())
            name = "stdin"
        lines = (ln.removesuffix("\n") for ln in read_pieces(f, name, 10**6))
    first = None
    try:
        for line in lines:
            if not line.strip():
                print()
                continue
            first = first or line
            out = tr.translate([line], beam=beam, n_best=args.n_best, alpha=alpha,
                               block_ngram=args.block_ngram,
                               match_candidate=not args.no_match_candidate)[0]
            print(out if isinstance(out, str) else "\t".join(out), flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")
        return 0
    warn_cut(tr)
    if first is None:
        raise ValueError("no text to translate: give TEXT, --file FILE or '-' for stdin")
    if args.attention_png:
        from rnnkit.tasks.translate.plot import plot_attention
        note = plot_attention(tr, first, args.attention_png, beam=beam)
        print(f"wrote {args.attention_png}{note}", file=sys.stderr)
    return 0


SPEC = task_spec(
    globals(), "translate", "train an encoder-decoder with attention to translate (TSV pairs)",
    model_cells=list(DECODER_CELLS),
    verbs=(verb(translate, "translate text with a trained translation model", add_translate_args),),
)
