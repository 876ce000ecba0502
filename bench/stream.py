"""Streaming classification on the stepper vs today's ``run_chunk``, in one run:

    flock /work/.cpu.lock python bench/stream.py            # about a minute on 2 cores
    python bench/stream.py --quick                          # seconds: checks the script

A default-size text classifier (``rnnkit train classify``'s defaults: embedding 128, one
layer of 256 units, max pooling, character tokenizer; weights random, speed does not depend
on them) for each ``--cells``, one :class:`~rnnkit.tasks.classify.StreamSession` fed chunks
of ``--chunks`` characters (16 and 128 by default). Two programs on the same chunks,
interleaved in rounds (new, old, new, old, ...) so both see the same machine load:

* ``stepper``: ``run_chunk`` as it is now (the layer's stepper: weights prepared once, the
  first layer's input projection read from a table, one C recurrence; the weights compared
  byte for byte at the session's first chunk, by version counter at the others);
* ``today``: ``run_chunk`` before this change, ``rnn(x, state)`` (the layer's whole-sequence
  kernel chosen by ``kernel="auto"`` on every chunk), swapped in for the peer's rounds.

Reports the median chunks/s of each (whole ``feed`` calls: tokenizer, embedding, pooling and
head included) and their ratio, and checks that after every chunk both sessions' probabilities
equal the one-shot prediction of the text so far (max abs difference). Prints a markdown table
and writes it with JSON to ``--out`` (default ``bench/results``).
"""

from __future__ import annotations  # noqa: I001  (rnnkit first, see below)

# first: rnnkit's runtime bounds OpenMP's spin (GOMP_SPINCOUNT) before torch loads, as the CLI
import rnnkit  # noqa: F401
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import rnnkit.tasks.classify.api as api
from rnnkit.data import build_tokenizer
from rnnkit.tasks.classify import Classifier, TextClassifier

TEXT = ("hello this is your bank calling about the account we noticed a suspicious payment "
        "please confirm your card number and the code we just sent you thanks for calling "
        "ok sure i can do that tomorrow lunch at noon see you ")
STEPPER = api.run_chunk


def today_run_chunk(rnn, x, state, lengths=None, verify=None, embed=None):
    """``run_chunk`` as it was before streaming ran on the stepper (``verify`` ignored): the
    embedding, then the layer's whole-sequence kernel."""
    x = x if embed is None else embed(x)
    return rnn(x, state) if lengths is None else rnn(x, state, lengths=lengths)


def make(cell: str, hidden: int, embed: int) -> TextClassifier:
    torch.manual_seed(0)
    tok = build_tokenizer("char", [TEXT])
    m = Classifier(tok.vocab_size, 2, cell=cell, embed=embed, hidden=hidden, layers=1,
                   pool="max", dropout=0.0)
    return TextClassifier(m, tok, ["ok", "fraud"])


def feed_rate(clf: TextClassifier, chunks: list[str], impl, seconds: float) -> float:
    """chunks/s of one session fed ``chunks`` in turn for about ``seconds``."""
    api.run_chunk = impl
    try:
        s = clf.stream()
        for c in chunks[:3]:  # warm: the stepper is built, buffers allocated
            s.feed(c)
        n, t0 = 0, time.perf_counter()
        while True:
            s.feed(chunks[n % len(chunks)])
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 5:
                return n / dt
    finally:
        api.run_chunk = STEPPER


def max_error(clf: TextClassifier, chunks: list[str]) -> float:
    """Max abs difference, over every chunk, of both programs' probabilities from the one-shot
    prediction of the text so far."""
    err = 0.0
    for impl in (STEPPER, today_run_chunk):
        api.run_chunk = impl
        try:
            s, so_far = clf.stream(), ""
            for c in chunks:
                so_far += c
                got = np.array(list(s.feed(c).values()))
                err = max(err, float(np.abs(got - clf.predict_proba([so_far])[0]).max()))
        finally:
            api.run_chunk = STEPPER
    return err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["gru", "lstm", "rnn"])
    p.add_argument("--chunks", nargs="+", type=int, default=[16, 128])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="per program and round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 0.2 s, hidden 64")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.hidden, a.embed = 2, 0.2, 64, 32
    if a.threads:
        torch.set_num_threads(a.threads)
    text = TEXT * 40
    rows = []
    for cell in a.cells:
        clf = make(cell, a.hidden, a.embed)
        for n in a.chunks:
            chunks = [text[i:i + n] for i in range(0, len(text) - n + 1, n)][:64]
            new, old = [], []
            for _ in range(a.rounds):
                new.append(feed_rate(clf, chunks, STEPPER, a.seconds))
                old.append(feed_rate(clf, chunks, today_run_chunk, a.seconds))
            row = {"cell": cell, "hidden": a.hidden, "embed": a.embed, "chunk": n,
                   "stepper": statistics.median(new), "today": statistics.median(old),
                   "max_err": max_error(clf, chunks[:12])}
            row["ratio"] = row["stepper"] / row["today"]
            rows.append(row)
            print(f"{cell} {n:4d} chars: stepper {row['stepper']:8.0f} chunks/s, today "
                  f"{row['today']:8.0f}, ratio {row['ratio']:.2f}x, max |dp| "
                  f"{row['max_err']:.1e}", flush=True)
    head = (f"streaming `StreamSession.feed`, embed {a.embed}, 1x{a.hidden}, max pooling, char "
            f"tokenizer; {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}; "
            f"`python bench/stream.py` (median of {a.rounds} interleaved rounds)")
    md = [head, "", "| cell | chunk (chars) | stepper chunks/s | today chunks/s | ratio | "
          "max abs diff vs one-shot |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['cell']} | {r['chunk']} | {r['stepper']:,.0f} | {r['today']:,.0f} | "
           f"**{r['ratio']:.2f}x** | {r['max_err']:.1e} |" for r in rows]
    print("\n".join(md))
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "stream-quick" if a.quick else "stream-cpu"
    (a.out / f"{tag}.md").write_text("\n".join(md) + "\n")
    (a.out / f"{tag}.json").write_text(json.dumps({"rows": rows, "threads":
                                                   torch.get_num_threads()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
