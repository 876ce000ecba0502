"""n-gram vs RNN vs GRU vs LSTM on one corpus and one split: the README's comparison table.

    python bench/lm_compare.py                       # Python stdlib corpus, 4.25 min per network
    python bench/lm_compare.py --data ../shared/data/tinyshakespeare.txt --minutes 10 \
        --hidden 512 --lr 3e-3

Every network gets the same wall-clock budget, batch, BPTT length, optimizer, schedule, dropout
and precision (the `rnnkit train lm` defaults); the n-gram is fitted for each order in --orders
and the best order on validation is reported (an optimistic, hence fair, baseline). Prints a
markdown table and writes it, with the validation curves (bits/char against minutes), to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rnnkit.tasks.lm import LMTask, load_data, resolve_precision
from rnnkit.tasks.lm.cli import DEFAULTS, OWN, VALID_FRACTION
from rnnkit.tasks.lm.ngram import NGramLM
from rnnkit.train import TrainConfig, train

LN2 = math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="text file or folder (default: the Python stdlib corpus)")
    ap.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                    help="budget per network")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--cells", default="rnn,gru,lstm")
    ap.add_argument("--hidden", type=int, default=DEFAULTS["hidden"])
    ap.add_argument("--orders", default="7,8,9", help="n-gram orders to fit (9 is the highest "
                    "the 64-bit keys allow for ~100 symbols)")
    ap.add_argument("--precision", default=OWN["precision"],
                    help="auto (bf16 autocast where the CPU has it, as rnnkit train lm), fp32, "
                         "bf16")
    ap.add_argument("--out", default="runs/lm_compare")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = {"data": str(Path(args.data).resolve()) if args.data else None,
              "max_chars": None if args.data else OWN["max_chars"],
              "valid_fraction": VALID_FRACTION, "split_seed": 0}
    data = load_data(source, "char")
    name = Path(args.data).name if args.data else "Python stdlib"
    print(f"corpus {name}: {len(data.train):,} train / {len(data.valid):,} validation chars",
          file=sys.stderr)

    rows = []
    best_ng = None
    for k in (int(o) for o in args.orders.split(",")):
        t = time.perf_counter()
        ng = NGramLM.fit(data.train, data.tokenizer.vocab_size, k)
        nats = ng.nll(data.valid)
        secs = time.perf_counter() - t
        print(f"n-gram order {k}: {nats / LN2:.3f} bits/char ({secs:.1f} s)", file=sys.stderr)
        if best_ng is None or nats < best_ng[1]:
            best_ng = (k, nats, secs, sum(int((ng.state_dict()[f"counts_{n}"] > 0).sum())
                                          for n in range(1, k + 1)))
    k, nats, secs, ngrams = best_ng
    rows.append((f"n-gram, order {k} (Kneser–Ney, best order)", f"{ngrams:,} n-grams", "—",
                 secs / 60, nats))

    curves = {}
    for cell in args.cells.split(","):
        mcfg = {"cell": cell, "hidden": args.hidden, "layers": DEFAULTS["layers"],
                "embed": DEFAULTS["embed"], "dropout": DEFAULTS["dropout"], "tie": OWN["tie"]}
        task = LMTask(data, mcfg, DEFAULTS["batch_size"], OWN["seq"], OWN["eval_rows"],
                      resolve_precision(args.precision))
        run = out / f"{cell}-{time.strftime('%Y%m%d-%H%M%S')}"
        res = train(task, TrainConfig(out=str(run), minutes=args.minutes, lr=args.lr,
                                      eval_every=DEFAULTS["eval_every"]))
        n_params = sum(p.numel() for p in task.build_model().parameters())
        best = res.best or res.metrics
        rows.append((f"{cell.upper()} 1×{args.hidden}", f"{n_params:,} parameters",
                     f"{res.step:,}", res.elapsed / 60, best["loss"]))
        recs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
        curves[cell] = [(r["time"] / 60, r["valid_bpc"]) for r in recs if "valid_bpc" in r]

    table = [f"Corpus: {name} ({len(data.train):,} training / {len(data.valid):,} validation "
             f"characters); validation over the whole validation text.", "",
             "| model | size | steps | minutes | validation bits/char | nats/char |",
             "|---|---|---|---|---|---|"]
    table += [f"| {m} | {s} | {st} | {mi:.1f} | **{n / LN2:.3f}** | {n:.4f} |"
              for m, s, st, mi, n in rows]
    text = "\n".join(table)
    print(text)
    (out / "table.md").write_text(text + "\n")

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for cell, pts in curves.items():
        ax.plot(*zip(*pts, strict=True), "o-", ms=3, label=cell.upper())
    ax.axhline(best_ng[1] / LN2, color="gray", ls="--", label=f"n-gram (order {best_ng[0]})")
    ax.set_xlabel("minutes of training (2 CPU cores)")
    ax.set_ylabel("validation bits/char")
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    print(f"wrote {out / 'table.md'} and {out / 'curves.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
