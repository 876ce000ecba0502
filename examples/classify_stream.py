"""Score a transcript as it arrives, with a trained classifier's streaming session.

    python examples/classify_stream.py RUN_DIR [--text "..."] [--png stream.png]

Feeds the text word by word (the way speech-to-text delivers a call), prints the running
probability of every class after each word, and plots the running score of the decision's
positive class. Each ``feed`` costs time for its own words only; memory stays constant.
"""

from __future__ import annotations

import argparse
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rnnkit.tasks import classify

SAMPLE = ("Hello, this is the security team of your bank. We noticed a suspicious payment on "
          "your account. To block it you must confirm your card number and the code we just "
          "sent you. Call 09061701461 now to claim your refund.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--text", default=SAMPLE)
    ap.add_argument("--png", default=None, help="plot of the running score")
    args = ap.parse_args()

    model = classify.load(args.run_dir)
    session = model.stream()
    pos = model.labels[model.positive if model.positive is not None else -1]
    words, scores = re.findall(r"\S+\s*", args.text), []
    for w in words:
        p = session.feed(w)
        scores.append(p[pos])
        print(f"{p[pos]:.3f}  {w.strip()}")
    one_shot = model.predict_proba([args.text])[0][model.labels.index(pos)]
    print(f"one-shot P({pos}) of the whole text: {one_shot:.6f}; streamed: {scores[-1]:.6f}")
    if args.png:
        fig, ax = plt.subplots(figsize=(7, 3), dpi=110)
        ax.plot(range(1, len(scores) + 1), scores, "o-", ms=3)
        if model.threshold is not None:
            ax.axhline(model.threshold, ls="--", c="gray", lw=1, label="decision threshold")
            ax.legend(loc="lower right")
        ax.set_xlabel("words received")
        ax.set_ylabel(f"P({pos})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title("running score of a streamed transcript", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.png)


if __name__ == "__main__":
    main()
