"""Long-range dependency benchmarks: can the cell carry information across T steps?

* ``adding`` (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015): input ``(T, 2)``,
  a value in [0, 1] and a marker; exactly two markers are 1, one in each half of the
  sequence; the target is the sum of the two marked values. Predicting the mean (1) scores
  MSE 1/6 ≈ 0.167; a sequence is *solved* when its absolute error is < 0.04.
* ``copy`` (Arjovsky et al. 2016): 10 symbols from {1..8}, T-1 blanks (0), a delimiter (9),
  10 blanks — ``T + 20`` steps; the output is blank for ``T + 10`` steps, then the 10 symbols.
  A memoryless model that knows when to speak scores cross-entropy ``10 ln 8 / (T + 20)`` per
  step; a sequence is solved when all 10 symbols come out right.
* ``digits``: scikit-learn's bundled 8×8 digits (1797 images), one pixel per step (64 steps;
  ``--permute``: a fixed random pixel order); cross-entropy, solved = classified correctly;
  a fixed stratified 80/20 split.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

PROBLEMS = ("adding", "copy", "digits")
SOLVED_TOL = 0.04  # adding: a sequence is solved when |prediction - target| < 0.04
N_COPY, COPY_SYMBOLS = 10, 8
N_TEST = 1000


def adding_data(n: int, T: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``x`` ``(n, T, 2)`` (value, marker) and target ``y`` ``(n,)``: the sum of the values
    at the two markers, one uniformly in ``[0, T/2)``, one in ``[T/2, T)``."""
    if T < 2:
        raise ValueError(f"the adding problem needs length T >= 2, got {T}")
    values = torch.rand(n, T, generator=gen)
    half = T // 2
    first = torch.randint(0, half, (n,), generator=gen)
    second = torch.randint(half, T, (n,), generator=gen)
    marks = torch.zeros(n, T)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return torch.stack([values, marks], -1), y


def copy_data(n: int, T: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One-hot input ``(n, T + 20, 10)`` and target symbols ``(n, T + 20)`` (int64, 0..8)."""
    if T < 1:
        raise ValueError(f"the copy task needs a delay T >= 1, got {T}")
    L = T + 2 * N_COPY
    sym = torch.randint(1, COPY_SYMBOLS + 1, (n, N_COPY), generator=gen)
    inp = torch.zeros(n, L, dtype=torch.long)
    inp[:, :N_COPY] = sym
    inp[:, T + N_COPY - 1] = COPY_SYMBOLS + 1  # the delimiter: "now repeat"
    tgt = torch.zeros(n, L, dtype=torch.long)
    tgt[:, -N_COPY:] = sym
    return F.one_hot(inp, COPY_SYMBOLS + 2).float(), tgt


def copy_baseline(T: int) -> float:
    """Cross-entropy per step of the best memoryless strategy: ``10 ln 8 / (T + 20)``."""
    return N_COPY * math.log(COPY_SYMBOLS) / (T + 2 * N_COPY)


def digits_data(permute: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8×8 digits as pixel sequences: ``x`` ``(N, 64, 1)`` in [0, 1], labels
    ``(N,)``; returns train x, y, test x, y (a fixed stratified 80/20 split). ``permute``
    reads the pixels in one fixed random order (seed 0)."""
    from sklearn.datasets import load_digits

    from rnnkit.data import stratified_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if permute:
        x = x[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    tr, te = stratified_split(y.tolist(), 0.2, seed=0)
    x = x.unsqueeze(-1)
    return x[tr], y[tr], x[te], y[te]


# -- metrics ------------------------------------------------------------------------------------
def adding_metrics(pred: Tensor, y: Tensor) -> dict[str, float]:
    """MSE and the fraction of sequences with absolute error < 0.04."""
    err = pred - y
    return {"loss": float(err.square().mean()), "solved": float((err.abs() < SOLVED_TOL).float()
                                                                 .mean())}


def copy_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Cross-entropy per step (all ``T + 20``), and the fraction of sequences whose 10
    recalled symbols are all right. ``logits`` ``(n, L, 9)``, ``y`` ``(n, L)``."""
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    ok = (logits[:, -N_COPY:].argmax(-1) == y[:, -N_COPY:]).all(-1)
    return {"loss": float(ce), "solved": float(ok.float().mean())}


def digits_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Cross-entropy and accuracy (``solved``)."""
    return {"loss": float(F.cross_entropy(logits, y)),
            "solved": float((logits.argmax(-1) == y).float().mean())}
