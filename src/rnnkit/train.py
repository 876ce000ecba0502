"""The one training loop every task uses.

A task is any object with these members (no base class needed)::

    name: str
    build_model() -> nn.Module
    batches(rank, world_size) -> stream      # next(stream) -> a batch (tensors, nested ok);
                                             # stream.state_dict() / load_state_dict(d)
                                             # save / restore its position for --resume
    loss(model, batch, carry) -> (loss, carry, n_items)
                                             # loss: scalar mean over this rank's items;
                                             # carry: recurrent state for truncated BPTT
                                             # (None for tasks without), detached between
                                             # batches by the trainer; n_items: tokens or
                                             # examples in the batch (for items/s)
    evaluate(model) -> dict[str, float]      # called in eval mode under torch.no_grad()
    config() -> dict                         # JSON: {"task": name, model sizes, tokenizer...}

and, optionally, ``unit`` (what ``n_items`` counts, e.g. ``"chars"``; shown in the progress
line), ``loss_label`` (the loss and its unit, e.g. ``"cross-entropy (nats/char)"``, the y axis
of ``loss.png``) and ``baselines`` (``{label: validation loss}`` drawn as lines in
``loss.png``).

:func:`train` runs AdamW with gradient-norm clipping and warmup + cosine decay under a
``steps`` and/or ``minutes`` budget, evaluates every ``eval_every`` steps, keeps ``last/``
(resumable) and ``best/`` checkpoints (by any metric, ``best_metric``/``best_mode``), writes
``metrics.jsonl`` and ``loss.png`` in the run folder, shows progress, and stops with a clear
error on a non-finite loss, before the bad update, keeping the last good checkpoint. The run
folder is locked for the whole run (a second process is refused, naming the holder's PID).

The budget is the run's total: training steps and evaluations, counted from the run's first
step, across resumes. ``resume=True`` continues a run towards its budget (pass a larger one to
train further); a run that already used its budget is refused with a message that says so.

Under ``torchrun --nproc-per-node N`` it runs DistributedDataParallel (gloo on CPU, nccl on GPU):
each rank reads its own share of the batch (``batches(rank, N)``), so the global batch, and the
loss curve, stay those of one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rnnkit import checkpoint as ckpt
from rnnkit.runtime import choose_threads, keep_freed_memory, usable_cores


class Task(Protocol):
    name: str

    def build_model(self) -> nn.Module: ...
    def batches(self, rank: int, world_size: int) -> Any: ...
    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[Tensor, Any, int]: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def config(self) -> dict[str, Any]: ...


class TrainingDiverged(ValueError):
    """The loss or gradient norm became NaN/inf; parameters were not updated with it."""


def _check(name: str, v: Any, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, integer: bool = False, none_ok: bool = False) -> None:
    """A config value is a finite number in range, or a ValueError naming it."""
    if v is None and none_ok:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and
                                                                  not isinstance(v, int)):
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi:g}, got {v:g}")


@dataclass
class TrainConfig:
    """How to train. At least one of ``steps`` / ``minutes`` bounds the run; with both, the
    first reached stops it. The learning rate warms up linearly over ``warmup`` steps, then
    follows a cosine from ``lr`` down to ``lr * min_lr_ratio`` over the budget (by steps, or by
    wall-clock time when only ``minutes`` is given)."""

    out: str = "runs/run"
    steps: int | None = None
    minutes: float | None = None
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 50
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # or "constant"
    grad_clip: float | None = 1.0
    eval_every: int = 200
    log_every: int = 20
    seed: int = 0
    best_metric: str = "loss"
    best_mode: str = "min"
    resume: bool = False
    progress: bool = True
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: the cores free at start (runtime)

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("give a budget: steps or minutes (or both)")
        _check("steps", self.steps, lo=1, integer=True, none_ok=True)
        _check("minutes", self.minutes, lo=0, lo_open=True, none_ok=True)
        _check("lr", self.lr, lo=0, lo_open=True)
        _check("weight_decay", self.weight_decay, lo=0)
        _check("warmup", self.warmup, lo=0, integer=True)
        _check("min_lr_ratio", self.min_lr_ratio, lo=0, hi=1)
        _check("grad_clip", self.grad_clip, lo=0, lo_open=True, none_ok=True)
        _check("eval_every", self.eval_every, lo=1, integer=True)
        _check("log_every", self.log_every, lo=1, integer=True)
        _check("seed", self.seed, lo=0, integer=True)
        _check("threads", self.threads, lo=1, integer=True, none_ok=True)
        self.betas = tuple(self.betas)  # type: ignore[assignment]  (JSON gives a list)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **defaults: Any) -> TrainConfig:
        """From the shared training flags (:func:`rnnkit.tasks.args.add_train_args`): each flag
        left out (``None``) takes ``defaults[field]`` (the task's default), else the field's
        own default. ``--clip 0`` turns clipping off; ``--quiet`` hides the progress bar."""
        flags = {"out": "out", "steps": "steps", "minutes": "minutes", "lr": "lr",
                 "weight_decay": "weight_decay", "warmup": "warmup", "grad_clip": "clip",
                 "eval_every": "eval_every", "log_every": "log_every", "seed": "seed",
                 "device": "device", "threads": "threads"}
        kw = {k: v for k, v in defaults.items() if v is not None}
        for fld, flag in flags.items():
            v = getattr(args, flag, None)
            if v is not None:
                kw[fld] = v
        if kw.get("grad_clip") == 0:
            kw["grad_clip"] = None
        kw["progress"] = not getattr(args, "quiet", False)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("resume")
        d.pop("progress")
        d.pop("threads")  # a setting of the machine it runs on, not of the run
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], **override: Any) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**d, **override}.items() if k in known})

    def budget(self) -> str:
        """The budget in words: ``"1000 steps / 4.25 minutes"``."""
        return " / ".join(([f"{self.steps:,} steps"] if self.steps else []) +
                          ([f"{self.minutes:g} minutes"] if self.minutes else []))


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed: float  # seconds of training and evaluation, over the whole run (all resumes)
    metrics: dict[str, float]  # last evaluation
    best: dict[str, float]  # evaluation of the best checkpoint
    train_loss: float  # mean over the last log interval


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Learning rate for ``step`` (0-based) at budget fraction ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.schedule == "constant":
        return cfg.lr * warm
    lo = cfg.lr * cfg.min_lr_ratio
    return warm * (lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, progress))))


# -- small helpers ------------------------------------------------------------------------------
def tree_map(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in nested tuples/lists/dicts."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple | list):
        return type(obj)(tree_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None


def is_main_process() -> bool:
    """True in a plain process and in rank 0 under torchrun (the one that reports)."""
    return int(os.environ.get("RANK", "0")) == 0


def _init_distributed() -> tuple[int, int, bool]:
    """(rank, world_size, we_initialized_it). Starts the process group under torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        return dist.get_rank(), world, True
    return 0, 1, False


def _rng_state() -> dict[str, Tensor]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict[str, Tensor]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


def _rate(v: float) -> str:
    return f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e4 else f"{v:.0f}"


# -- the run log: metrics.jsonl and loss.png ----------------------------------------------------
class RunLog:
    """``metrics.jsonl`` (one JSON record per log interval and per evaluation) and the curve
    ``loss.png`` drawn from it; rank 0 only."""

    def __init__(self, run_dir: Path, task: Task, upto: int) -> None:
        self.run_dir, self.path = run_dir, run_dir / "metrics.jsonl"
        self.loss_label = getattr(task, "loss_label", "loss")
        self.baselines: dict[str, float] = dict(getattr(task, "baselines", {}) or {})
        self.records = [r for r in read_metrics(self.path) if r.get("step", 0) <= upto]
        ckpt.atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def plot(self, metric: str) -> None:
        plot_curves(self.run_dir, self.records, metric, self.loss_label, self.baselines)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A torn final line (a process killed mid-write) is
    dropped with a notice; a bad line elsewhere is a ValueError naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                print(f"rnnkit: {path}: dropped a torn last line (the process writing it was "
                      f"stopped mid-line)", file=sys.stderr)
                break
            raise ValueError(f"{path}, line {i + 1}, is not valid JSON ({e})") from None
    return out


def plot_curves(run_dir: Path, records: list[dict[str, Any]], metric: str = "loss",
                loss_label: str = "loss", baselines: dict[str, float] | None = None) -> None:
    """``loss.png``: training loss (per log interval) and validation ``metric`` against step,
    with each baseline (validation loss of a reference model) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    va = [(r["step"], r[f"valid_{metric}"]) for r in records if f"valid_{metric}" in r]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    if tr:
        ax.plot(*zip(*tr, strict=True), label="training loss", lw=1, alpha=0.8)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", ms=3,
                label="validation loss" if metric == "loss" else f"validation {metric}")
    if metric == "loss":
        for k, (name, v) in enumerate((baselines or {}).items()):
            ax.axhline(v, ls="--", lw=1, color=f"C{k + 2}", label=f"{name} (validation)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(loss_label if metric == "loss" else metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(run_dir.name, fontsize=9)
    fig.tight_layout()
    tmp = run_dir / f".loss.png.tmp{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, run_dir / "loss.png")


# -- progress -----------------------------------------------------------------------------------
class Progress:
    """Progress of a run towards its budget. On a terminal: one live bar (percent of the
    budget, elapsed time, step, loss, rate in the task's unit, time left), redrawn at most
    twice a second from the first step on. Elsewhere (a log file, CI, a pipe): one plain line
    per log interval, no carriage returns. ``quiet`` hides both; :meth:`note` lines (the
    evaluations) always print.

    **Slowdown notice**: the best rate of the first :data:`BASE_INTERVALS` log intervals is the
    rate the machine gave at start; when a later interval runs below :data:`SLOW_FRACTION` of
    it (another job took the CPU), one line says so and how to react, once per run."""

    BASE_INTERVALS = 3
    SLOW_FRACTION = 0.4

    def __init__(self, cfg: TrainConfig, desc: str, unit: str, start_step: int,
                 start_elapsed: float, enabled: bool) -> None:
        self.cfg, self.unit, self.enabled = cfg, unit, enabled
        self.budget_s = cfg.minutes * 60 if cfg.minutes is not None else math.inf
        self.step0, self.t0 = start_step, start_elapsed
        self.loss: float | None = None
        self.rate: float | None = None
        self.shown = 0.0
        self.bar = None
        self.rates: list[float] = []  # the rates of the first intervals
        self.slow_noted = False
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            # the status goes in {desc}, after the bar: tqdm's {postfix} starts with ", "
            self.bar = tqdm(total=1000, desc=desc, file=sys.stderr, dynamic_ncols=True,
                            bar_format="{percentage:3.0f}%|{bar}| {desc}")
        self.name = desc

    def fraction(self, step: int, elapsed: float) -> float:
        p = step / self.cfg.steps if self.cfg.steps else 0.0
        return min(1.0, max(p, elapsed / self.budget_s))

    def left(self, step: int, elapsed: float) -> float:
        left = self.budget_s - elapsed
        done = step - self.step0
        if self.cfg.steps and done > 0:
            left = min(left, (self.cfg.steps - step) * (elapsed - self.t0) / done)
        return max(0.0, left)

    def status(self, step: int, elapsed: float) -> str:
        total = f"/{self.cfg.steps:,}" if self.cfg.steps else ""
        parts = [f"step {step:,}{total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.rate is not None:
            parts.append(f"{_rate(self.rate)} {self.unit}/s")
        parts.append(f"left {_clock(self.left(step, elapsed))}")
        return "  ".join(parts)

    def line(self, step: int, elapsed: float) -> str:
        """What the bar shows after itself: the run, its status, the training time so far
        (resumed runs included)."""
        return f"{self.name}  {self.status(step, elapsed)}  elapsed {_clock(elapsed)}"

    def update(self, step: int, elapsed: float, force: bool = False) -> None:
        """After every step: redraw the bar when half a second has passed."""
        if self.bar is None or (not force and time.perf_counter() - self.shown < 0.5):
            return
        self.shown = time.perf_counter()
        self.bar.n = int(1000 * self.fraction(step, elapsed))
        self.bar.set_description_str(self.line(step, elapsed), refresh=False)
        self.bar.refresh()

    def interval(self, step: int, elapsed: float, loss: float, rate: float) -> None:
        """At every log interval: the plain line (off a terminal) or a bar update."""
        self.loss, self.rate = loss, rate
        self.check_rate(rate)
        if self.bar is not None:
            self.update(step, elapsed, force=True)
        elif self.enabled:
            print(f"{self.status(step, elapsed)}  elapsed {_clock(elapsed)}", file=sys.stderr,
                  flush=True)

    def check_rate(self, rate: float) -> str | None:
        """The slowdown notice, when this interval's ``rate`` is far below the start's (printed
        once; also returned)."""
        if len(self.rates) < self.BASE_INTERVALS:
            self.rates.append(rate)
            return None
        base = max(self.rates)
        if self.slow_noted or not rate < self.SLOW_FRACTION * base:
            return None
        self.slow_noted = True
        line = (f"notice: training slowed to {_rate(rate)} {self.unit}/s, {rate / base:.0%} of "
                f"the {_rate(base)} {self.unit}/s measured at start: another job is using the "
                f"CPU? (torch uses {torch.get_num_threads()} threads; --threads 1 leaves it a "
                f"core)")
        self.note(line)
        return line

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self, step: int, elapsed: float, finished: bool) -> None:
        if self.bar is not None:
            if finished:
                self.bar.n = 1000
            self.bar.set_description_str(self.line(step, elapsed), refresh=False)
            self.bar.close()


# -- checkpoints: last/ (resumable) and best/ ---------------------------------------------------
@dataclass
class RunState:
    """What a resumed run continues from (the trainer's own state, not the model's)."""

    step: int = 0
    elapsed: float = 0.0  # seconds used by the run before this process started
    best_value: float | None = None
    best: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    carry: Any = None


class Checkpoints:
    """Writes ``last/`` (weights + optimizer, data position, carried state, RNG: resumable)
    and ``best/`` (weights of the best evaluation so far), and reads ``last/`` back."""

    def __init__(self, run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, stream: Any,
                 config: dict[str, Any], rank: int, world: int) -> None:
        self.last, self.best = run_dir / "last", run_dir / "best"
        self.model, self.opt, self.stream, self.config = model, opt, stream, config
        self.rank, self.world = rank, world

    @staticmethod
    def holds_last(last: Path) -> bool:
        """Whether ``last`` (or the ``.last.old`` of an interrupted swap) holds weights."""
        return (last / ckpt.MODEL).is_file() or (
            last.with_name(".last.old") / ckpt.MODEL).is_file()

    def has_last(self) -> bool:
        return self.holds_last(self.last)

    def resume(self, device: torch.device) -> RunState:
        src = ckpt.resolve(self.last)
        ckpt.load_weights(self.model, src)  # clear error on a different model shape
        rec = ckpt.load_trainer(src)
        if "state" not in rec or "step" not in rec:
            raise ValueError(f"{src / ckpt.TRAINER_JSON} has no trainer state ('state', "
                             f"'step'); this checkpoint cannot be resumed")
        st = rec["state"]
        if len(st["ranks"]) != self.world:
            raise ValueError(f"{self.last.parent} was trained with {len(st['ranks'])} "
                             f"process(es); resume it with the same number, got {self.world}")
        self.opt.load_state_dict(st["optimizer"])
        mine = st["ranks"][self.rank]
        self.stream.load_state_dict(mine["data"])
        _set_rng_state(mine["rng"])
        return RunState(rec["step"], rec["elapsed"], st.get("best_value"), rec.get("best", {}),
                        rec.get("metrics", {}), tree_map(lambda t: t.to(device), mine["carry"]))

    def save_last(self, s: RunState, elapsed: float) -> None:
        """Every rank contributes its data position, carry and RNG; rank 0 writes."""
        mine = {"data": self.stream.state_dict(),
                "carry": tree_map(lambda t: t.detach().cpu(), s.carry), "rng": _rng_state()}
        ranks = [mine]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        if self.rank == 0:
            state = {"optimizer": self.opt.state_dict(), "best_value": s.best_value,
                     "ranks": ranks}
            ckpt.save(self.last, self.model, self.config,
                      {"step": s.step, "elapsed": elapsed, "metrics": s.last_metrics,
                       "best": s.best}, state)

    def save_best(self, step: int, metrics: dict[str, float]) -> None:
        ckpt.save(self.best, self.model, self.config, {"step": step, "metrics": metrics})


# -- the loop -----------------------------------------------------------------------------------
def train(task: Task, cfg: TrainConfig, *, on_step: Callable[[int], None] | None = None
          ) -> TrainResult:
    """Train ``task`` under ``cfg``; returns the final and best evaluations.

    ``on_step(step)`` (optional) is called after every optimizer step (tests use it to
    simulate a crash). Makes the process keep freed memory for reuse
    (:func:`rnnkit.runtime.keep_freed_memory`): steps then reuse their buffers without
    page faults."""
    keep_freed_memory()
    rank, world, own_group = _init_distributed()
    if cfg.threads is not None or world == 1:  # torchrun sets OMP_NUM_THREADS itself
        threads, why = choose_threads(cfg.threads if cfg.threads is not None
                                      else _threads_of_run(cfg))
        if rank == 0 and cfg.progress and threads < usable_cores():
            print(f"threads: {threads} ({why})", file=sys.stderr, flush=True)
    try:
        if rank == 0:
            with ckpt.run_lock(cfg.out):
                result = _train(task, cfg, rank, world, on_step)
        else:
            result = _train(task, cfg, rank, world, on_step)
        if own_group:  # every rank done (rank 0 writes the last checkpoint) before teardown:
            dist.barrier()  # a rank that tore down early aborted its peer now and then
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def _threads_of_run(cfg: TrainConfig) -> int | None:
    """On ``--resume`` (no ``--threads``, no thread variable set): the thread count the run
    started with, so that the resumed steps sum in the same order (bit-exact resume on the
    same machine) whatever the load is now."""
    if not cfg.resume or os.environ.get("RNNKIT_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        n = json.loads((Path(cfg.out) / ckpt.CONFIG).read_text()).get("threads")
    except (OSError, ValueError):
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases and norm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=cfg.betas)


def start_or_resume(cfg: TrainConfig, ckpts: Checkpoints, device: torch.device,
                    budget_s: float, main: bool) -> RunState:
    """A fresh :class:`RunState` (refusing a folder that already holds a run), or the one
    saved in ``last/`` for ``--resume`` (refusing a run whose budget is used up)."""
    run_dir = ckpts.last.parent
    if main:
        ckpt.clean_stale(run_dir)
    if cfg.resume:
        if not ckpts.has_last():
            only_best = (ckpts.best / ckpt.MODEL).is_file()
            raise FileNotFoundError(
                f"cannot resume: {run_dir} has no last/ checkpoint ({ckpts.last}/{ckpt.MODEL})"
                + (f"; its best/ holds weights but not the optimizer and data position. Train "
                   f"it afresh with --restart --out {run_dir}" if only_best else ""))
        s = ckpts.resume(device)
        if (cfg.steps is not None and s.step >= cfg.steps) or s.elapsed >= budget_s:
            raise ValueError(f"{run_dir} already used its budget ({cfg.budget()}; it stopped "
                             f"at step {s.step:,} after {s.elapsed / 60:.2f} minutes): nothing "
                             f"to train. To train further, give a larger total budget "
                             f"(--steps / --minutes)")
        if main:
            print(f"resuming {run_dir} at step {s.step:,} ({s.elapsed / 60:.2f} minutes used) "
                  f"towards {cfg.budget()}", file=sys.stderr)
    else:
        s = RunState()
        if main and ckpts.has_last():
            raise ValueError(f"{run_dir} already holds a run; resume it (--resume {run_dir}), "
                             f"clear it (--restart) or choose another output folder")
        if main and (ckpts.best / ckpt.MODEL).is_file():
            raise ValueError(f"{run_dir} holds a best/ checkpoint but no last/ to resume from; "
                             f"clear it (--restart) or choose another output folder")
    return s


def evaluate_and_save(task: Task, model: nn.Module, cfg: TrainConfig, s: RunState,
                      ckpts: Checkpoints, log: RunLog | None, progress: Progress,
                      elapsed: float) -> float:
    """Evaluate (rank 0), log, write last/ then best/ (so a kill between the two leaves a
    resumable run), redraw the curve. Every rank joins the last/ save. Returns the seconds
    the evaluation took (the clock keeps room for the next one)."""
    eval_secs, is_best = 0.0, False
    if log is not None:
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            m = {k: float(v) for k, v in task.evaluate(model).items()}
        model.train()
        eval_secs = time.perf_counter() - t
        if cfg.best_metric not in m:
            raise ValueError(f"best_metric {cfg.best_metric!r} is not among the "
                             f"evaluation's metrics: {', '.join(m)}")
        v = m[cfg.best_metric]
        is_best = math.isfinite(v) and (
            s.best_value is None or not math.isfinite(s.best_value) or
            (v < s.best_value if cfg.best_mode == "min" else v > s.best_value))
        s.last_metrics = m
        if is_best:
            s.best_value, s.best = v, {"step": s.step, **m}
        log.add({"step": s.step, "time": round(elapsed, 3),
                 **{f"valid_{k}": x for k, x in m.items()}})
        progress.note(f"step {s.step:,}: " + "  ".join(f"valid {k} {x:.4f}"
                                                     for k, x in m.items()))
        if not math.isfinite(m.get("loss", 0.0)):  # the weights diverged: keep the last good
            raise TrainingDiverged(_diverged_msg("validation loss", m["loss"], s.step - 1,
                                                 ckpts, updated=True))
    ckpts.save_last(s, elapsed + eval_secs)  # the evaluation's time included
    if log is not None:
        if is_best:
            ckpts.save_best(s.step, s.last_metrics)
        log.plot("loss" if "loss" in s.last_metrics else cfg.best_metric)
    return eval_secs


def _train(task: Task, cfg: TrainConfig, rank: int, world: int,
           on_step: Callable[[int], None] | None) -> TrainResult:
    run_dir, main, device = Path(cfg.out), rank == 0, pick_device(cfg.device)
    config = {**task.config(), "train": cfg.to_json(), "threads": torch.get_num_threads()}

    # -- model, optimizer, data ------------------------------------------------------------
    if cfg.resume and Checkpoints.holds_last(run_dir / "last"):  # a model its checkpoint does
        ckpt.check_shapes(task.build_model, run_dir / "last")  # not fit: refused, unallocated
    torch.manual_seed(cfg.seed)  # after the check (building draws random numbers)
    model = task.build_model().to(device)
    if rank:
        torch.manual_seed(cfg.seed + rank)  # different dropout masks per rank
    opt = make_optimizer(model, cfg)
    stream = task.batches(rank, world)
    ckpts = Checkpoints(run_dir, model, opt, stream, config, rank, world)
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else math.inf

    # -- a fresh run, or where the last one stopped ----------------------------------------
    s = start_or_resume(cfg, ckpts, device, budget_s, main)
    log: RunLog | None = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(run_dir / ckpt.CONFIG, json.dumps(config, indent=1))
        log = RunLog(run_dir, task, s.step)
    dmodel: nn.Module = model
    if world > 1:
        dmodel = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    progress = Progress(cfg, f"train {task.name}", getattr(task, "unit", "items"), s.step,
                        s.elapsed, main and cfg.progress)
    model.train()
    t0 = time.perf_counter()
    t_int, sum_loss, n_losses, n_items = t0, 0.0, 0, 0
    train_loss, eval_secs, last_eval_step = math.nan, 0.0, -1
    checkpoint = functools.partial(evaluate_and_save, task, model, cfg, s, ckpts, log, progress)
    elapsed, finished = s.elapsed, False
    try:
        while True:
            # -- the clock: stop when the next evaluation would overrun the budget ---------
            elapsed = s.elapsed + time.perf_counter() - t0
            if world > 1:  # all ranks agree on the clock and on the room the next evaluation
                # needs (only rank 0 evaluates, so only it knows how long that takes): they
                # stop together (a rank that trained on alone would wait in its all_reduce
                # for ever) and use the same lr
                e = torch.tensor([elapsed, eval_secs], dtype=torch.float64, device=device)
                dist.all_reduce(e, op=dist.ReduceOp.MAX)
                elapsed, eval_secs = float(e[0]), float(e[1])
            if (cfg.steps is not None and s.step >= cfg.steps) or \
                    elapsed + eval_secs >= budget_s:
                finished = True
                break
            # -- learning rate -------------------------------------------------------------
            lr = lr_at(cfg, s.step, progress.fraction(s.step, elapsed))
            for g in opt.param_groups:
                g["lr"] = lr
            # -- forward and backward --------------------------------------------------------
            batch = tree_map(lambda t: t.to(device, non_blocking=True), next(stream))
            loss, carry, items = task.loss(dmodel, batch, s.carry)
            s.carry = tree_map(lambda t: t.detach(), carry)
            lv = loss.detach().clone()
            if world > 1:
                dist.all_reduce(lv)
                lv /= world
            lv = float(lv)
            if not math.isfinite(lv):
                raise TrainingDiverged(_diverged_msg("loss", lv, s.step, ckpts))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # -- clip and step ---------------------------------------------------------------
            if cfg.grad_clip:
                gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if not math.isfinite(gn):
                    raise TrainingDiverged(_diverged_msg("gradient norm", gn, s.step, ckpts))
            opt.step()
            s.step += 1
            sum_loss, n_losses, n_items = sum_loss + lv, n_losses + 1, n_items + items * world
            if on_step is not None:
                on_step(s.step)
            progress.update(s.step, elapsed)
            # -- log -------------------------------------------------------------------------
            is_eval = s.step % cfg.eval_every == 0
            if s.step % cfg.log_every == 0 or is_eval:
                now = time.perf_counter()
                train_loss, rate = sum_loss / n_losses, n_items / max(now - t_int, 1e-9)
                if main:
                    log.add({"step": s.step, "time": round(elapsed, 3), "lr": lr,
                             "train_loss": train_loss, "items_per_s": round(rate, 1)})
                progress.interval(s.step, s.elapsed + now - t0, train_loss, rate)
                t_int, sum_loss, n_losses, n_items = now, 0.0, 0, 0
            # -- evaluate and checkpoint -------------------------------------------------------
            if is_eval:
                eval_secs = checkpoint(s.elapsed + time.perf_counter() - t0)
                last_eval_step, t_int = s.step, time.perf_counter()
        if n_losses:
            train_loss = sum_loss / n_losses
        if last_eval_step != s.step:  # the final evaluation and checkpoint
            checkpoint(s.elapsed + time.perf_counter() - t0)
    finally:
        elapsed = s.elapsed + time.perf_counter() - t0
        progress.close(s.step, elapsed, finished)
    return TrainResult(run_dir, s.step, elapsed, s.last_metrics, s.best, train_loss)


def _diverged_msg(what: str, value: float, step: int, ckpts: Checkpoints,
                  updated: bool = False) -> str:
    keep = (f"the last good checkpoint is in {ckpts.last}" if ckpts.has_last()
            else "no checkpoint had been written yet")
    done = ("these weights were not saved" if updated else
            "the parameters were not updated with it")
    return (f"training stopped: the {what} became {value} at step {step + 1}; {done} and "
            f"{keep}. Try a lower learning rate, less weight decay or gradient clipping.")
