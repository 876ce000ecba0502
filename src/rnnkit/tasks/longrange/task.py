"""A long-range problem for one cell, in the trainer's protocol: fresh random batches (each
from its own seeded generator, so the data position is one integer), a fixed test set."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.common import one_of
from rnnkit.tasks.longrange import data as problems
from rnnkit.tasks.longrange.data import COPY_SYMBOLS, N_COPY, N_TEST, PROBLEMS
from rnnkit.tasks.longrange.model import LONGRANGE_CELLS, LongRangeModel
from rnnkit.train import TrainConfig, train

# tuned defaults (per problem): hidden units, batch, learning rate
DEFAULTS = {"adding": (64, 64, 3e-3), "copy": (128, 64, 3e-3), "digits": (128, 64, 3e-3)}


class Stream:
    """Training batches; batch ``i`` comes from its own seeded generator, so the position is
    one integer (saved with the checkpoint for ``--resume``). Under torchrun every rank draws
    the same global batch and keeps its share of the rows: N processes train on the batches
    of one."""

    def __init__(self, task: LongRangeTask, rank: int, world: int) -> None:
        self.task, self.rank, self.world, self.i = task, rank, world, 0

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed((self.task.seed + 1) * 1_000_003 + self.i)
        self.i += 1
        x, y = self.task.make_batch(self.task.batch, gen)
        share = self.task.batch // self.world
        rows = slice(self.rank * share, (self.rank + 1) * share)
        return x[rows], y[rows]

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.i = int(d["i"])


class LongRangeTask:
    """``task`` in ``adding``/``copy``/``digits`` for one ``cell``; see the module docstring."""

    def __init__(self, task: str, length: int, cell: str, *, hidden: int | None = None,
                 batch: int | None = None, seed: int = 0, permute: bool = False,
                 init: str | float = "chrono") -> None:
        one_of("the problem", task, PROBLEMS)
        one_of("cell", cell, LONGRANGE_CELLS)
        if permute and task != "digits":
            raise ValueError(f"--permute applies to the digits task only, got task {task!r}")
        if task == "digits" and length not in (64, 0):
            raise ValueError(f"the digits task has 64 steps (8×8 pixels); --length must be "
                             f"64 or left out, got {length}")
        h, b, _ = DEFAULTS[task]
        self.task, self.cell, self.seed, self.permute = task, cell, seed, permute
        self.length = 64 if task == "digits" else length
        self.hidden, self.batch, self.init = hidden or h, batch or b, init
        self.name = f"{task}{'-permuted' if permute else ''}-T{self.length}-{cell}"
        self.n_in, self.n_out = {"adding": (2, 1), "copy": (COPY_SYMBOLS + 2, COPY_SYMBOLS + 1),
                                 "digits": (1, 10)}[task]
        self.unit = "sequences"
        self.loss_label = {"adding": "MSE", "copy": "cross-entropy per step (nats)",
                           "digits": "cross-entropy (nats per image)"}[task]
        self.baselines = {"ignore the input": self.baseline}
        if task == "digits":
            self.x_train, self.y_train, x_te, y_te = problems.digits_data(permute)
            self.test = (x_te, y_te)
        else:
            self.test = self.make_batch(N_TEST, torch.Generator().manual_seed(10**6 + seed))

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> LongRangeTask:
        return cls(c["problem"], c["length"], c["cell"], hidden=c["hidden"], batch=c["batch"],
                   seed=c["seed"], permute=c["permute"], init=c["init"])

    def make_batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.task == "adding":
            return problems.adding_data(n, self.length, gen)
        if self.task == "copy":
            return problems.copy_data(n, self.length, gen)
        idx = torch.randint(0, len(self.y_train), (n,), generator=gen)
        return self.x_train[idx], self.y_train[idx]

    def test_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` test examples."""
        return self.test[0][:n], self.test[1][:n]

    # the trainer's protocol
    def build_model(self) -> LongRangeModel:
        t_max = self.length + (2 * N_COPY if self.task == "copy" else 0)
        return LongRangeModel(self.cell, self.n_in, self.hidden, self.n_out, self.init, t_max)

    def batches(self, rank: int, world_size: int) -> Stream:
        return Stream(self, rank, world_size)

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        """Adding: ``(B,)`` from the last step; copy: ``(B, L, 9)``; digits: ``(B, 10)``."""
        dev = next(model.parameters()).device
        out = model(x.to(dev, next(model.parameters()).dtype))
        if self.task == "adding":
            return out[:, -1, 0]
        return out if self.task == "copy" else out[:, -1]

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[Tensor, None, int]:
        x, y = batch
        p = self.predict(model, x)
        y = y.to(p.device)
        if self.task == "adding":
            loss = F.mse_loss(p, y.to(p.dtype))
        elif self.task == "copy":
            loss = F.cross_entropy(p.flatten(0, 1), y.flatten())
        else:
            loss = F.cross_entropy(p, y)
        return loss, None, x.shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.test
        p = torch.cat([self.predict(model, xb) for xb in x.split(500)]).float().cpu()
        return {"adding": problems.adding_metrics, "copy": problems.copy_metrics,
                "digits": problems.digits_metrics}[self.task](p, y)

    def config(self) -> dict[str, Any]:
        return {"task": "longrange", "problem": self.task, "length": self.length,
                "cell": self.cell, "hidden": self.hidden, "batch": self.batch,
                "seed": self.seed, "permute": self.permute, "init": self.init}

    @property
    def baseline(self) -> float:
        """The metric of the best input-ignoring predictor."""
        if self.task == "adding":
            return 1 / 6
        if self.task == "copy":
            return problems.copy_baseline(self.length)
        return math.log(10)

    def train_model(self, steps: int | None, out: str, minutes: float | None = None,
                    lr: float | None = None, progress: bool = True) -> LongRangeModel:
        """Train through :func:`rnnkit.train.train`; returns the final model."""
        cfg = TrainConfig(out=out, steps=steps, minutes=minutes, lr=lr or DEFAULTS[self.task][2],
                          seed=self.seed, eval_every=100, log_every=50, progress=progress)
        res = train(self, cfg)
        model = self.build_model()
        ckpt.load_weights(model, ckpt.resolve(res.run_dir / "last"))
        return model


def make_task(task: str, length: int, cell: str, **kw: Any) -> LongRangeTask:
    return LongRangeTask(task, length, cell, **kw)
