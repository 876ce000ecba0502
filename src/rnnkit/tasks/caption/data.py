"""Captioning data: a folder of images with ``captions.tsv`` (``file<TAB>caption``, several
lines per image allowed; the Flickr8k layout), or the built-in ``digits`` set; the split by
image; the training batches.

Images are held as one float tensor ``(I, 3, H, W)`` in ``[0, 1]``. Reading a folder
(PNG through ``matplotlib.image``; other formats need Pillow): grayscale becomes RGB (the
channel repeated), RGBA is composited over white, and an image of another size is resized
(bilinear, antialiased) to ``image_size`` (default: the first image's size). Lines without a
tab or with an empty caption, captions naming a missing file and files that do not open are
skipped and counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.data.text import decode_utf8
from rnnkit.tasks.common import holdout

EMOJI_SIZE = 32  # default side of the built-in emoji images
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class Captions:
    """``images`` ``(I, 3, H, W)``, ``captions[i]`` the captions of image ``i`` (at least one),
    ``names[i]`` its file (or id), ``skipped`` counts by reason, ``origin`` what it came
    from."""

    images: Tensor
    captions: list[list[str]]
    names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    origin: str = ""

    def __len__(self) -> int:
        return len(self.captions)


def to_rgb(a: np.ndarray, name: str = "image") -> np.ndarray:
    """An image array ``(H, W)``, ``(H, W, 1|3|4)`` (floats in [0, 1] or integers 0..255)
    → ``(3, H, W)`` float32 in [0, 1]; alpha composited over white."""
    a = np.asarray(a)
    if a.dtype.kind in "ui":
        a = a.astype(np.float32) / (65535.0 if a.dtype == np.uint16 else 255.0)
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"{name}: expected an image (H, W), (H, W, 3) or (H, W, 4), got "
                         f"shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, 2)
    elif a.shape[2] == 4:
        a = a[:, :, :3] * a[:, :, 3:] + (1.0 - a[:, :, 3:])
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``(3, h, w)`` → ``(3, H, W)`` (bilinear, antialiased; unchanged when equal)."""
    if tuple(x.shape[1:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> Tensor:
    """One image file → ``(3, H, W)`` (resized to ``size`` when given). A file that does not
    open is a ValueError naming it."""
    import matplotlib.image as mpimg

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such image")
    try:
        a = mpimg.imread(p)
    except Exception as e:  # any decoder failure is a bad image
        raise ValueError(f"{p}: cannot read it as an image ({type(e).__name__}: {e})") from None
    x = torch.from_numpy(to_rgb(a, str(p)))
    return resize(x, size) if size else x


def read_folder(folder: str | Path, image_size: tuple[int, int] | None = None) -> Captions:
    """``FOLDER/captions.tsv`` (``file<TAB>caption`` per line, paths relative to the folder;
    an optional header ``image<TAB>caption`` is skipped) and its images."""
    root = Path(folder)
    tsv = root / "captions.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{root}: expected a folder of images with captions.tsv "
                                f"(file<TAB>caption), found no {tsv}")
    skipped = Counter({"no_tab": 0, "empty_caption": 0, "missing_file": 0, "unreadable": 0})
    by_file: dict[str, list[str]] = {}
    for n, line in enumerate(decode_utf8(tsv.read_bytes(), tsv).splitlines()):
        if not line.strip():
            continue
        if "\t" not in line:
            skipped["no_tab"] += 1
            continue
        f, cap = line.split("\t", 1)
        f, cap = f.strip(), " ".join(cap.split())
        if n == 0 and f.lower() in ("image", "file", "filename") and not (root / f).is_file():
            continue
        if not cap:
            skipped["empty_caption"] += 1
            continue
        by_file.setdefault(f, []).append(cap)
    images, caps, names = [], [], []
    for f, cs in by_file.items():
        if not (root / f).is_file():
            skipped["missing_file"] += len(cs)
            continue
        try:
            x = read_image(root / f)
        except ValueError:
            skipped["unreadable"] += len(cs)
            continue
        image_size = image_size or (int(x.shape[1]), int(x.shape[2]))
        images.append(resize(x, image_size))
        caps.append(cs)
        names.append(f)
    if not images:
        raise ValueError(f"{tsv}: no usable image with a caption (skipped: {dict(skipped)})")
    return Captions(torch.stack(images), caps, names, dict(skipped), str(root.resolve()))


def digit_strips(n: int = 3000, seed: int = 0, min_digits: int = 1, max_digits: int = 5,
                 scale: int = 2) -> Captions:
    """The built-in set: ``n`` strips of ``min_digits..max_digits`` handwritten digits from
    scikit-learn's ``load_digits`` (8×8, drawn ``scale`` times larger, side by side from the
    left on a black strip of ``max_digits`` places; white ink), each captioned with the digits'
    names, e.g. "three seven one". The captions are generated from the labels, not written
    by people. Deterministic in ``seed``; needs no download."""
    from sklearn.datasets import load_digits

    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    d = load_digits()
    ims = torch.from_numpy(d.images.astype(np.float32) / 16.0)           # (1797, 8, 8)
    ims = ims.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    S = 8 * scale
    rng = np.random.default_rng(seed)
    out = torch.zeros(n, 3, S, S * max_digits)
    caps, names = [], []
    for i in range(n):
        k = int(rng.integers(min_digits, max_digits + 1))
        pick = rng.integers(0, len(ims), size=k)
        for j, p in enumerate(pick.tolist()):
            out[i, :, :, j * S:(j + 1) * S] = ims[p]
        caps.append([" ".join(NAMES[int(d.target[p])] for p in pick.tolist())])
        names.append(f"strip{i:05d}")
    return Captions(out, caps, names, {}, f"builtin:digits:{n}:{seed}")


def load_captions(data: str | None, *, size: int = 3000, image_size: Any = None,
                  lang: str = "en") -> Captions:
    """``data``: a folder, ``digits`` or None (the built-in digits), ``emoji`` (the built-in
    emoji set in ``lang``, :mod:`rnnkit.tasks.caption.emoji_set`; ``image_size`` default
    32 × 32, a non-square size is resized from the ``H × H`` render)."""
    if data in (None, "digits"):
        return digit_strips(size, 0)
    if data == "emoji":
        from rnnkit.tasks.caption.emoji_set import emoji_set

        H, W = (tuple(image_size) if image_size else (EMOJI_SIZE, EMOJI_SIZE))
        d = emoji_set(lang, int(H))
        if W != H:
            d.images = F.interpolate(d.images, size=(int(H), int(W)), mode="bilinear",
                                     antialias=True, align_corners=False).clamp(0, 1)
        return d
    return read_folder(data, tuple(image_size) if image_size else None)


# -- the split ----------------------------------------------------------------------------------
@dataclass
class Split:
    """Image indices of each part (into ``data``) and the record written to split.json."""

    data: Captions
    train: list[int]
    valid: list[int]
    test: list[int]
    record: dict[str, Any]


def make_split(data: Captions, *, test_fraction: float = 0.1, valid_fraction: float = 0.05,
               seed: int = 0) -> Split:
    """By image (all captions of an image in one part): a permutation by
    ``np.random.default_rng(seed)``; its first rows are the test images, the next the
    validation images."""
    N = len(data)
    te, va, tr = holdout(N, test_fraction, valid_fraction, seed, "images")
    record = {"data": data.origin, "images": N, "captions": sum(map(len, data.captions)),
              "seed": seed, "test_fraction": test_fraction, "valid_fraction": valid_fraction,
              "skipped": data.skipped, "image_size": list(data.images.shape[2:]),
              "test_images": [data.names[i] for i in te],
              "valid_images": [data.names[i] for i in va]}
    return Split(data, tr, va, te, record)


# -- batches ------------------------------------------------------------------------------------
def collate(images: Tensor, caps: list[list[int]], bos: int, eos: int) -> dict[str, Tensor]:
    """``images`` ``(B, 3, H, W)``, ``y_in`` ``(B, T+1)`` = BOS + caption, ``y_out`` = caption
    + EOS, padded with 0."""
    B, T = len(caps), max(len(c) for c in caps) + 1
    y_in = torch.zeros(B, T, dtype=torch.long)
    y_out = torch.zeros(B, T, dtype=torch.long)
    for i, c in enumerate(caps):
        y_in[i, :len(c) + 1] = torch.tensor([bos, *c])
        y_out[i, :len(c) + 1] = torch.tensor([*c, eos])
    return {"images": images, "y_in": y_in, "y_out": y_out}


class CaptionStream:
    """Endless training batches of (image, caption) pairs: each epoch a fresh permutation of
    every training pair (deterministic in (seed, epoch)), cut into global batches of
    ``batch_size``. With several processes each keeps every ``world``-th row of the same
    global batch; ``tokens`` is the global batch's target-token count, so that per-rank
    summed losses divided by it add up to the global mean. ``state_dict`` = epoch, position."""

    def __init__(self, images: Tensor, pairs: list[tuple[int, list[int]]], batch_size: int,
                 seed: int, bos: int, eos: int, rank: int = 0, world: int = 1) -> None:
        self.images, self.pairs, self.bs, self.seed = images, pairs, batch_size, seed
        self.bos, self.eos, self.rank, self.world = bos, eos, rank, world
        self.epoch, self.pos = 0, 0
        self._perm = self._make(0)

    def _make(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def __len__(self) -> int:
        return math.ceil(len(self.pairs) / self.bs)

    def __iter__(self) -> CaptionStream:
        return self

    def __next__(self) -> dict[str, Tensor]:
        if self.pos >= len(self):
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._make(self.epoch)
        glob = self._perm[self.pos * self.bs:(self.pos + 1) * self.bs].tolist()
        self.pos += 1
        tokens = sum(len(self.pairs[i][1]) + 1 for i in glob)
        mine = glob[self.rank::self.world] or glob[:1]
        b = collate(self.images[[self.pairs[i][0] for i in mine]],
                    [self.pairs[i][1] for i in mine], self.bos, self.eos)
        b["tokens"] = torch.tensor(float(tokens) / self.world)
        return b

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.epoch, self.pos = int(d["epoch"]), int(d["pos"])
        self._perm = self._make(self.epoch)
