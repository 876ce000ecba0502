"""Endless, resumable training batches by epoch: the one batching loop every task with a fixed
set of examples uses (texts, vector sequences, sentence pairs).

Each epoch is a plan: a fresh permutation of the ``n`` examples (deterministic in ``seed`` and
the epoch), cut into batches of ``batch_size``. With a ``key`` (a length per example), the
permutation is cut into pools of ``pool`` batches, each pool sorted by key (similar lengths
together, little padding) and cut into batches, and the batches are shuffled. The position is
two integers (``state_dict``: epoch and batch), so a resumed run reads on exactly. Under
torchrun every rank plans the same global batches and takes every ``world``-th example of
each: N processes train on the batches of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class EpochBatches:
    """Subclasses say how a batch of example indices becomes tensors: :meth:`make`."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 key: Sequence[int] | np.ndarray | None = None, pool: int = 50) -> None:
        if batch_size < world:
            raise ValueError(f"a batch of {batch_size} cannot be shared by {world} processes: "
                             f"give --batch-size >= {world}")
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.key = None if key is None else np.asarray(key)
        self.pool = pool
        self.epoch, self.pos = 0, 0
        self._plan = self._make_plan(0)

    def make(self, idx: np.ndarray) -> Any:
        """The batch of examples ``idx`` (this rank's share)."""
        raise NotImplementedError

    def _make_plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.n)
        if self.key is None:
            return [perm[k:k + self.bs] for k in range(0, len(perm), self.bs)]
        plan = []
        for k in range(0, len(perm), self.bs * self.pool):
            chunk = perm[k:k + self.bs * self.pool]
            chunk = chunk[np.argsort(self.key[chunk], kind="stable")]
            plan += [chunk[j:j + self.bs] for j in range(0, len(chunk), self.bs)]
        return [plan[i] for i in rng.permutation(len(plan))]

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> Any:
        if self.pos >= len(self._plan):
            self.epoch, self.pos = self.epoch + 1, 0
            self._plan = self._make_plan(self.epoch)
        idx = self._plan[self.pos][self.rank::self.world]
        self.pos += 1
        return self.make(idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.epoch, self.pos = int(d["epoch"]), int(d["pos"])
        self._plan = self._make_plan(self.epoch)
