"""Video clips: the built-in ``moving-digits`` set and folders of frame images.

``moving-digits`` is synthetic motion on real digits: each clip is 10 frames of 32×32 in
which one of scikit-learn's 8×8 handwritten digits (upscaled to 16×16) moves in a straight
line at 2 pixels per frame in one of 8 directions (E, NE, N, NW, W, SW, S, SE: the label),
from a uniform random start, wrapping around the edges (a torus). Every single frame is then a
digit at a uniformly random place whatever the direction, so no frame alone tells the label,
and a last-frame model stays at chance (1/8). The digit
images are split by image: clips of the test split use digits no training clip uses.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from rnnkit.data.text import decode_utf8
from rnnkit.tasks.sequences.data import Sequences

DIRECTIONS = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")
SIZE, DIGIT, FRAMES, SPEED = 32, 16, 10, 2.0


def _clip(img: np.ndarray, direction: int, rng: np.random.Generator) -> np.ndarray:
    """Frames ``(FRAMES, SIZE, SIZE, 1)`` of ``img`` ``(DIGIT, DIGIT)`` moving ``direction``
    from a uniform random start, wrapping around the frame's edges."""
    ang = direction * np.pi / 4
    dx, dy = SPEED * np.cos(ang), -SPEED * np.sin(ang)      # rows grow downwards
    x0, y0 = rng.uniform(0, SIZE, 2)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[:DIGIT, :DIGIT] = img
    out = np.empty((FRAMES, SIZE, SIZE, 1), dtype=np.float32)
    for t in range(FRAMES):
        shift = (round(y0 + dy * t) % SIZE, round(x0 + dx * t) % SIZE)
        out[t, :, :, 0] = np.roll(canvas, shift, axis=(0, 1))
    return out


def moving_digits(split: str = "train", n: int | None = None, seed: int = 0) -> Sequences:
    """``n`` clips (default 2,000 train / 600 test) ``(10, 32, 32, 1)`` in [0, 1], labels the
    direction names. Digits images 0-1,299 make the training clips, the rest the test clips."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    imgs = load_digits().images / 16.0                                   # (1797, 8, 8)
    imgs = imgs[:1300] if split == "train" else imgs[1300:]
    big = np.kron(imgs, np.ones((2, 2)))                                  # (n, 16, 16)
    n = n or (2000 if split == "train" else 600)
    rng = np.random.default_rng([seed, split == "test"])
    which = rng.integers(0, len(big), n)
    y = rng.integers(0, 8, n)
    X = [_clip(big[i], int(d), rng) for i, d in zip(which, y, strict=True)]
    return Sequences(X, [DIRECTIONS[d] for d in y], [str(i) for i in range(n)])


def read_clip_folder(root: Path) -> Sequences:
    """A folder with ``labels.tsv`` (``clip<TAB>label`` per line) and one sub-folder of frame
    images per clip (read in name order with matplotlib; grey or RGB, values in [0, 1])."""
    import matplotlib.image as mpimg

    tsv = root / "labels.tsv"
    if not tsv.is_file():
        raise ValueError(f"{root}: a folder of clips needs a labels.tsv (clip<TAB>label)")
    X, y, ids = [], [], []
    with io.StringIO(decode_utf8(tsv.read_bytes(), tsv), newline="") as f:  # strict UTF-8
        for k, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{tsv}, line {k}: expected clip<TAB>label, got {row}")
            d = root / row[0]
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg",
                                                                           ".jpeg"))
            if not files:
                raise ValueError(f"{d}: no frame images (.png, .jpg)")
            frames = [np.asarray(mpimg.imread(p), dtype=np.float32) for p in files]
            frames = [f[..., None] if f.ndim == 2 else f[..., :3] for f in frames]
            if frames[0].max() > 1.5:
                frames = [f / 255.0 for f in frames]
            X.append(np.stack(frames))
            y.append(row[1])
            ids.append(row[0])
    return Sequences(X, y, ids)
