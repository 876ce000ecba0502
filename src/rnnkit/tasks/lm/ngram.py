"""Character n-gram baseline: interpolated modified Kneser–Ney (Chen & Goodman 1998).

    P_n(w | h) = max(c(hw) - D_n(c(hw)), 0) / c(h•) + γ(h) · P_{n-1}(w | h'),
    γ(h) = (D_n1 N1(h•) + D_n2 N2(h•) + D_n3+ N3+(h•)) / c(h•),     h' = h without its oldest
    symbol, P_0 = 1 / V. The highest order counts n-grams; lower orders count continuations
    (the number of distinct symbols seen before ``hw``). Discounts come from counts of counts:
    Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3.
    A history never seen falls back to the next lower order.

Counting and scoring are vectorised with numpy over 64-bit integer keys (an n-gram of ids
``a b c`` is ``(a·V + b)·V + c``), so fitting millions of characters takes seconds. The model
is an ``nn.Module`` whose buffers hold the sorted keys and counts, so it is saved and loaded in
the same safetensors run-folder format as the neural models, and it offers the same
``step(ids, state) -> (log-probabilities, state)`` call for sampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def max_order(vocab_size: int) -> int:
    """Highest order whose n-gram keys fit in 64-bit integers."""
    return int(62 / math.log2(max(vocab_size, 2)))


def _keys(ids: np.ndarray, n: int, V: int) -> np.ndarray:
    """Keys of all n-grams of ``ids`` (length len(ids) - n + 1)."""
    k = np.zeros(len(ids) - n + 1, dtype=np.int64)
    for j in range(n):
        k = k * V + ids[j: len(ids) - n + 1 + j]
    return k


def _discounts(counts: np.ndarray) -> np.ndarray:
    """[D1, D2, D3+] from the counts of counts (Chen & Goodman's estimates, clipped)."""
    n = [int((counts == i).sum()) for i in (1, 2, 3, 4)]
    if n[0] == 0 or n[1] == 0:
        return np.array([0.5, 1.0, 1.5])
    y = n[0] / (n[0] + 2 * n[1])
    d = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1] if n[1] else 1.0,
         3 - 4 * y * n[3] / n[2] if n[2] else 1.5]
    return np.clip(np.array(d), [0.05, 0.05, 0.05], [1.0, 2.0, 3.0])


def _lookup(sorted_keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, found) of each query key in a sorted key array."""
    i = np.searchsorted(sorted_keys, q)
    i = np.minimum(i, max(len(sorted_keys) - 1, 0))
    found = sorted_keys[i] == q if len(sorted_keys) else np.zeros(len(q), bool)
    return i, found


class NGramLM(nn.Module):
    """Order-``order`` interpolated modified Kneser–Ney model over ``vocab_size`` ids.

    Buffers per order n (1..order): ``keys_n`` (sorted n-gram keys), ``counts_n`` (their counts
    or continuation counts), ``ctx_n`` (sorted history keys), ``ctx_stats_n`` ``(C, 4)``:
    total, N1, N2, N3+ per history; ``disc`` ``(order, 3)``.
    """

    def __init__(self, vocab_size: int, order: int) -> None:
        super().__init__()
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if order > max_order(vocab_size):
            raise ValueError(f"order {order} with {vocab_size} symbols does not fit 64-bit keys; "
                             f"use order <= {max_order(vocab_size)}")
        self.vocab_size, self.order = vocab_size, order
        for n in range(1, order + 1):
            for name, shape in ((f"keys_{n}", (0,)), (f"counts_{n}", (0,)), (f"ctx_{n}", (0,)),
                                (f"ctx_stats_{n}", (0, 4))):
                self.register_buffer(name, torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("disc", torch.zeros(order, 3, dtype=torch.float64))

    @classmethod
    def fit(cls, ids: Tensor | np.ndarray, vocab_size: int, order: int) -> NGramLM:
        m = cls(vocab_size, order)
        a = np.asarray(ids, dtype=np.int64)
        if len(a) < order:
            raise ValueError(f"an order-{order} n-gram needs at least {order} tokens of training "
                             f"text, got {len(a)}")
        V = vocab_size
        keys, counts = np.unique(_keys(a, order, V), return_counts=True)
        for n in range(order, 0, -1):
            ctx = keys // V
            ctx_keys, inv = np.unique(ctx, return_inverse=True)
            stats = np.zeros((len(ctx_keys), 4), dtype=np.int64)
            np.add.at(stats[:, 0], inv, counts)
            for j, sel in enumerate((counts == 1, counts == 2, counts >= 3), start=1):
                np.add.at(stats[:, j], inv, sel.astype(np.int64))
            m.disc[n - 1] = torch.from_numpy(_discounts(counts))
            for name, v in (("keys", keys), ("counts", counts), ("ctx", ctx_keys),
                            ("ctx_stats", stats)):
                setattr(m, f"{name}_{n}", torch.from_numpy(v))
            # lower orders: continuation counts (distinct left extensions of each (n-1)-gram)
            keys, counts = np.unique(keys % V ** (n - 1), return_counts=True)
        return m

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], vocab_size: int, order: int) -> NGramLM:
        m = cls(vocab_size, order)
        for k in m.state_dict():
            if k not in tensors:
                raise ValueError(f"n-gram checkpoint lacks tensor {k!r}")
            setattr(m, k, tensors[k])
        return m

    def _prob(self, hist: np.ndarray, w: np.ndarray, n_avail: np.ndarray) -> np.ndarray:
        """P(w | history) for many queries. ``hist`` ``(Q, order-1)`` ids, oldest first (only
        the last ``n_avail[q]`` entries are real); ``w`` ``(Q,)``."""
        V = self.vocab_size
        p = np.full(len(w), 1.0 / V)
        for n in range(1, self.order + 1):
            h = np.zeros(len(w), dtype=np.int64)
            for j in range(n - 1):
                h = h * V + hist[:, self.order - n + j]
            ci, cfound = _lookup(getattr(self, f"ctx_{n}").numpy(), h)
            stats = getattr(self, f"ctx_stats_{n}").numpy()
            ki, kfound = _lookup(getattr(self, f"keys_{n}").numpy(), h * V + w)
            c = np.where(kfound, getattr(self, f"counts_{n}").numpy()[ki], 0)
            d = self.disc[n - 1].numpy()
            st = stats[ci]
            tot = np.maximum(st[:, 0], 1)
            dc = np.where(c == 0, 0.0, d[np.clip(c, 1, 3) - 1])
            gamma = (d[0] * st[:, 1] + d[1] * st[:, 2] + d[2] * st[:, 3]) / tot
            pn = np.maximum(c - dc, 0) / tot + gamma * p
            use = cfound & (n - 1 <= n_avail)
            p = np.where(use, pn, p)
        return p

    def nll(self, ids: Tensor) -> float:
        """Mean negative log-likelihood (nats per token) of ``ids[1:]`` given what precedes."""
        a = np.asarray(ids, dtype=np.int64)
        K = self.order - 1
        pad = np.concatenate([np.zeros(K, np.int64), a])
        pos = np.arange(1, len(a))
        hist = np.stack([pad[pos + j] for j in range(K)], 1) if K else np.zeros((len(pos), 0),
                                                                                np.int64)
        p = self._prob(hist, a[1:], np.minimum(pos, K))
        return float(-np.log(p).mean())

    # -- the sampling interface shared with the neural models -----------------------------------
    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Log-probabilities of the next id after each position: ``x`` ``(B, T)`` ->
        ``(B, T, V)``; ``state`` ``(B, order-1)`` holds the last ids (-1 = none yet)."""
        outs = []
        for t in range(x.shape[1]):
            o, state = self.step(x[:, t], state)
            outs.append(o)
        return torch.stack(outs, 1), state

    def step(self, ids: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """One token: ``ids`` ``(B,)`` -> log-probabilities ``(B, V)`` of the next one."""
        B, K, V = ids.shape[0], self.order - 1, self.vocab_size
        if state is None:
            state = torch.full((B, K), -1, dtype=torch.long)
        state = torch.cat([state, ids.long().cpu()[:, None]], 1)[:, 1:] if K else state
        hist = state.numpy()
        n_avail = (hist >= 0).sum(1)
        q_hist = np.repeat(np.maximum(hist, 0), V, axis=0)
        w = np.tile(np.arange(V), B)
        p = self._prob(q_hist, w, np.repeat(n_avail, V)).reshape(B, V)
        return torch.from_numpy(np.log(p)).float(), state
