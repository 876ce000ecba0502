"""The README's emoji picture: held-out (test split) emoji of a run, skin-tone and gender
variants first, with the run's greedy caption above the true CLDR name.

    PYTHONPATH=src python docs/caption/emoji_grid.py RUN docs/caption/emoji_attend_captions.png
"""

from __future__ import annotations

import sys

import rnnkit
from rnnkit.tasks.caption.cli import test_part
from rnnkit.tasks.caption.plot import plot_grid
from rnnkit.tasks.caption.task import load_split

TONES = {f"{c:X}" for c in range(0x1F3FB, 0x1F400)}
GENDERS = {"2640", "2642", "1F468", "1F469"}


def main(run: str, out: str, n: int = 12) -> None:
    cap = rnnkit.load(run)
    sp = load_split(cap.config["settings"])
    idx, _ = test_part(sp)
    d = sp.data

    def kind(i: int) -> int:
        cps = set(d.names[i][2:].split("_"))
        return 0 if cps & TONES and cps & GENDERS else 1 if cps & (TONES | GENDERS) else 2

    def spread(ks: list[int], k: int) -> list[int]:  # k of them, evenly through the list
        return [ks[round(j * (len(ks) - 1) / max(k - 1, 1))] for j in range(k)] if ks else []

    both = [i for i in idx if kind(i) == 0]
    one = [i for i in idx if kind(i) == 1]
    rest = [i for i in idx if kind(i) == 2]
    pick = spread(both, n // 3) + spread(one, n // 3) + spread(rest, n - 2 * (n // 3))
    hyps = cap.caption(d.images[pick], beam=1)
    plot_grid(d.images[pick], hyps, [d.captions[i][0] for i in pick], out, cols=4)
    for i, h in zip(pick, hyps, strict=True):
        print(f"{d.names[i]}\t{h}\t(true: {d.captions[i][0]})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
