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

Every cell trains through :func:`rnnkit.train.train` (the one training loop) under the same
time budget; ``rnnkit longrange`` prints one table and draws all learning curves on one PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import rnnkit
from rnnkit import checkpoint as ckpt
from rnnkit.inspect.params import count_params

TASKS = ("adding", "copy", "digits")
CELLS = ("rnn", "lstm", "gru")
SOLVED_TOL = 0.04  # adding: a sequence is solved when |prediction - target| < 0.04
N_COPY, COPY_SYMBOLS = 10, 8
N_TEST = 1000
# tuned defaults (per task): hidden units, batch, learning rate
DEFAULTS = {"adding": (64, 64, 3e-3), "copy": (128, 64, 3e-3), "digits": (128, 64, 3e-3)}


# -- data, exactly as defined above -------------------------------------------------------------
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


# -- model --------------------------------------------------------------------------------------
def init_keep_gate(layer: nn.Module, how: str | float, t_max: int) -> None:
    """Initialise the bias of the gate that keeps the state — LSTM's forget gate, GRU's update
    gate — so that at initialisation the cell remembers rather than forgets:

    * ``"chrono"`` (Tallec & Ollivier 2018): ``b ~ log U(1, t_max - 1)``, so unit k starts
      with a memory of about ``e^b`` steps, spread over the range the task needs (LSTM: input
      gate bias ``-b``);
    * a number: that constant bias (1.0: Gers et al. 2000; Jozefowicz et al. 2015);
    * ``"torch"``: leave torch.nn's initialisation (every bias ~ U(-1/√H, 1/√H)).

    The bias sits in ``bias_ih`` (``bias_hh`` of that block set to 0). RNN layers have no gate
    and are left alone."""
    if how == "torch" or getattr(layer, "mode", "").startswith("rnn"):
        return
    H = layer.hidden_size
    with torch.no_grad():
        for c in layer.cells:  # gate blocks: LSTM i, f, g, o; GRU r, z, n
            if how == "chrono":
                b = torch.log(torch.empty(H).uniform_(1.0, max(float(t_max) - 1, 2.0)))
            else:
                b = torch.full((H,), float(how))
            c.bias_ih[H:2 * H] = b
            c.bias_hh[H:2 * H] = 0.0
            if how == "chrono" and layer.mode == "lstm":
                c.bias_ih[:H] = -b
                c.bias_hh[:H] = 0.0


def parse_init(v: str) -> str | float:
    """``--init`` value: ``chrono``, ``torch`` or a number."""
    if v in ("chrono", "torch"):
        return v
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"--init must be 'chrono', 'torch' or a number, got {v!r}") from None


class LongRangeModel(nn.Module):
    """One recurrent layer and a linear readout: ``x`` ``(B, T, I)`` -> ``(B, T, O)``; the
    keep gate initialised by :func:`init_keep_gate` (``init``, ``t_max``)."""

    def __init__(self, cell: str, n_in: int, hidden: int, n_out: int,
                 init: str | float = "chrono", t_max: int = 100) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        self.rnn = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[cell](
            n_in, hidden)
        self.head = nn.Linear(hidden, n_out)
        init_keep_gate(self.rnn, init, t_max)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


# -- the task, in the trainer's protocol --------------------------------------------------------
class Stream:
    """Training batches; batch ``i`` comes from its own seeded generator, so the position is
    one integer (saved with the checkpoint for ``--resume``)."""

    def __init__(self, task: LongRangeTask, rank: int, world: int) -> None:
        self.task, self.rank, self.world, self.i = task, rank, world, 0

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(
            (self.task.seed + 1) * 1_000_003 + self.i * self.world + self.rank)
        self.i += 1
        return self.task.make_batch(self.task.batch // self.world, gen)

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.i = int(d["i"])


class LongRangeTask:
    """``task`` in ``adding``/``copy``/``digits`` for one ``cell``; see the module docstring."""

    def __init__(self, task: str, length: int, cell: str, *, hidden: int | None = None,
                 batch: int | None = None, seed: int = 0, permute: bool = False,
                 init: str | float = "chrono") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
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
        if task == "digits":
            self.x_train, self.y_train, x_te, y_te = digits_data(permute)
            self.test = (x_te, y_te)
        else:
            self.test = self.make_batch(N_TEST, torch.Generator().manual_seed(10**6 + seed))

    def make_batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.task == "adding":
            return adding_data(n, self.length, gen)
        if self.task == "copy":
            return copy_data(n, self.length, gen)
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
        return {"adding": adding_metrics, "copy": copy_metrics,
                "digits": digits_metrics}[self.task](p, y)

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
            return copy_baseline(self.length)
        return math.log(10)

    def train_model(self, steps: int | None, out: str, minutes: float | None = None,
                    lr: float | None = None, progress: bool = True) -> LongRangeModel:
        """Train through :func:`rnnkit.train.train`; returns the final model."""
        from rnnkit.train import TrainConfig, train

        cfg = TrainConfig(out=out, steps=steps, minutes=minutes, lr=lr or DEFAULTS[self.task][2],
                          seed=self.seed, eval_every=100, log_every=50, progress=progress)
        res = train(self, cfg)
        model = self.build_model()
        ckpt.load_weights(model, ckpt.resolve(res.run_dir / "last"))
        return model


def make_task(task: str, length: int, cell: str, **kw: Any) -> LongRangeTask:
    return LongRangeTask(task, length, cell, **kw)


# -- the command --------------------------------------------------------------------------------
def fresh_dir(base: str) -> Path:
    """``base``, or ``base-2``, ``base-3``… if it already holds runs."""
    p, k = Path(base), 2
    while p.exists() and any(p.iterdir()):
        p, k = Path(f"{base}-{k}"), k + 1
    return p


def plot_curves(rows: list[dict[str, Any]], task: LongRangeTask, out: Path) -> None:
    """Test metric and fraction solved against training steps, one line per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = {"adding": "test MSE", "copy": "test cross-entropy per step",
              "digits": "test cross-entropy"}[task.task]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for r in rows:
        recs = [json.loads(s) for s in (r["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        ev = [x for x in recs if "valid_loss" in x]
        t = [x["step"] for x in ev]
        lab = f"{r['cell'].upper()} ({r['params']:,} params)"
        a1.semilogy(t, [x["valid_loss"] for x in ev], label=lab)
        a2.plot(t, [x["valid_solved"] for x in ev], label=lab)
    a1.axhline(task.baseline, color="gray", ls="--", lw=1, label="baseline")
    if task.task == "adding":
        a1.axhline(0.01, color="gray", ls=":", lw=1, label="0.01")
    a1.set_ylabel(metric)
    a2.set_ylabel("fraction solved" if task.task != "digits" else "test accuracy")
    a2.set_ylim(-0.02, 1.02)
    for a in (a1, a2):
        a.set_xlabel("training steps")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    fig.suptitle(f"{task.task}{' (permuted)' if task.permute else ''}, T = {task.length}",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


# Per cell: (minutes, steps), the first reached stops it. Equal steps (the same data) make the
# cells comparable across machines; the time cap keeps 3 cells within 15 minutes on a slow one.
# On the 2-core machine (README) a tanh RNN leaves the adding baseline at T = 100 only after
# ~24,000 steps, which a 4-minute budget alone allows there (LSTM and GRU solve it in ~2,000).
DEFAULT_BUDGET = (4.0, 10_000)


def format_table(rows: list[dict[str, Any]], task: LongRangeTask) -> str:
    metric = {"adding": "test MSE", "copy": "test CE", "digits": "test CE"}[task.task]
    solved = "accuracy" if task.task == "digits" else "solved"
    lines = [f"| cell | parameters | {metric} | {solved} | wall time | steps |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] >= 1e-3 else f"{r['loss']:.1e}"
        lines.append(f"| {r['cell'].upper()} | {r['params']:,} | {loss} | "
                     f"{100 * r['solved']:.1f}% | {r['seconds'] / 60:.1f} min | {r['steps']:,} |")
    lines.append(f"baseline (ignore the input): {metric} {task.baseline:.4f}")
    return "\n".join(lines)


def run_longrange(args: argparse.Namespace) -> None:
    """Train each cell on the task under the same budget; print the table, write the plot."""
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        raise ValueError(f"--cells takes a comma-separated list from {', '.join(CELLS)}, "
                         f"got {args.cells!r}")
    if args.minutes is None and args.steps is None:  # the same steps for every cell, capped
        args.minutes, args.steps = DEFAULT_BUDGET  # by time on a slow machine
    length = args.length if args.length is not None else (64 if args.task == "digits" else 100)
    base = f"{args.task}{'-perm' if args.permute else ''}-T{length}-s{args.seed}"
    out = fresh_dir(args.out or f"runs/longrange/{base}")
    rows = []
    for cell in cells:
        task = make_task(args.task, length, cell, hidden=args.hidden, batch=args.batch,
                         seed=args.seed, permute=args.permute, init=parse_init(args.init))
        t0 = time.perf_counter()
        from rnnkit.train import TrainConfig, train

        cfg = TrainConfig(out=str(out / cell), steps=args.steps, minutes=args.minutes,
                          lr=args.lr or DEFAULTS[args.task][2], seed=args.seed,
                          eval_every=args.eval_every, log_every=50)
        res = train(task, cfg)
        rows.append({"cell": cell, "params": count_params(task.build_model()),
                     "loss": res.metrics["loss"], "solved": res.metrics["solved"],
                     "seconds": time.perf_counter() - t0, "steps": res.step,
                     "run_dir": res.run_dir})
    table = format_table(rows, task)
    print(table)
    (out / "table.md").write_text(table + "\n")
    plot = Path(args.plot) if args.plot else out / "curves.png"
    plot_curves(rows, task, plot)
    print(f"runs in {out}; learning curves in {plot}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("longrange", help="long-range benchmarks: adding, copy, sequential digits",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="adding")
    p.add_argument("--length", type=int, default=None,
                   help="T: sequence length (adding), delay (copy); digits: 64 (default 100)")
    p.add_argument("--cells", default="rnn,lstm,gru")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget per cell (default: 10,000 steps or 4 minutes, whichever "
                        "comes first, so 3 cells fit in 15 minutes)")
    p.add_argument("--steps", type=int, default=None, help="step budget per cell")
    p.add_argument("--permute", action="store_true", help="digits: fixed random pixel order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=None, help="units (default per task)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--init", default="chrono", help="bias of LSTM's forget / GRU's update gate: "
                   "chrono (default; Tallec & Ollivier 2018), torch, or a number")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--out", default=None, help="run folder (default runs/longrange/...)")
    p.add_argument("--plot", default=None, help="PNG path (default <out>/curves.png)")
    p.set_defaults(func=run_longrange)
