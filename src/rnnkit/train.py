"""The one training loop every task uses.

A task is any object with these five members (no base class needed)::

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

:func:`train` runs AdamW with gradient-norm clipping and warmup + cosine decay under a
``steps`` and/or ``minutes`` budget, evaluates every ``eval_every`` steps, keeps ``last/``
(resumable) and ``best/`` checkpoints (by any metric, ``best_metric``/``best_mode``), writes
``metrics.jsonl`` and ``loss.png`` in the run folder, shows a progress bar, and stops with a
clear error on a non-finite loss, before the bad update, keeping the last good checkpoint.

Under ``torchrun --nproc-per-node N`` it runs DistributedDataParallel (gloo on CPU, nccl on GPU):
each rank reads its own share of the batch (``batches(rank, N)``), so the global batch, and the
loss curve, stay those of one process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rnnkit import checkpoint as ckpt
from rnnkit.kernels.memory import keep_freed_memory


class Task(Protocol):
    name: str

    def build_model(self) -> nn.Module: ...
    def batches(self, rank: int, world_size: int) -> Any: ...
    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[Tensor, Any, int]: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def config(self) -> dict[str, Any]: ...


class TrainingDiverged(ValueError):
    """The loss or gradient norm became NaN/inf; parameters were not updated with it."""


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

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("give a budget: steps or minutes (or both)")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.eval_every <= 0 or self.log_every <= 0:
            raise ValueError("eval_every and log_every must be positive")
        self.betas = tuple(self.betas)  # type: ignore[assignment]  (JSON gives a list)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("resume")
        d.pop("progress")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], **override: Any) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**d, **override}.items() if k in known})


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed: float  # seconds of training (excluding the time before a --resume)
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
    return torch.device(name)


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


def plot_curves(run_dir: Path, records: list[dict[str, Any]], metric: str = "loss") -> None:
    """``loss.png``: training loss (per log interval) and validation ``metric`` against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    va = [(r["step"], r[f"valid_{metric}"]) for r in records if f"valid_{metric}" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train loss", lw=1, alpha=0.8)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label=f"validation {metric}", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per item)" if metric == "loss" else metric)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(run_dir.name, fontsize=9)
    fig.tight_layout()
    tmp = run_dir / ".loss.png.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, run_dir / "loss.png")


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if r.get("step", 0) <= upto]


# -- the loop -----------------------------------------------------------------------------------
def train(task: Task, cfg: TrainConfig, *, on_step: Callable[[int], None] | None = None
          ) -> TrainResult:
    """Train ``task`` under ``cfg``; returns the final and best evaluations.

    ``on_step(step)`` (optional) is called after every optimizer step (tests use it to
    simulate a crash). Makes the process keep freed memory for reuse
    (:func:`rnnkit.kernels.memory.keep_freed_memory`): steps then reuse their buffers without
    page faults."""
    keep_freed_memory()
    rank, world, own_group = _init_distributed()
    try:
        result = _train(task, cfg, rank, world, on_step)
        if own_group:  # every rank done (rank 0 writes the last checkpoint) before teardown:
            dist.barrier()  # a rank that tore down early aborted its peer now and then
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(task: Task, cfg: TrainConfig, rank: int, world: int,
           on_step: Callable[[int], None] | None) -> TrainResult:
    run_dir = Path(cfg.out)
    main = rank == 0
    device = pick_device(cfg.device)
    last_dir, best_dir = run_dir / "last", run_dir / "best"
    config = {**task.config(), "train": cfg.to_json()}

    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    if rank:
        torch.manual_seed(cfg.seed + rank)  # different dropout masks per rank
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas)
    stream = task.batches(rank, world)
    carry: Any = None
    step, prev_elapsed, best_value, best_metrics = 0, 0.0, None, {}
    metrics_path = run_dir / "metrics.jsonl"

    if cfg.resume:
        if not (last_dir / ckpt.MODEL).is_file() and not (run_dir / ".last.old").is_dir():
            raise FileNotFoundError(f"cannot resume: {run_dir} has no checkpoint "
                                    f"({last_dir}/{ckpt.MODEL})")
        src = ckpt.resolve(last_dir)
        ckpt.load_weights(model, src)  # clear error on a different model shape
        rec = ckpt.load_trainer(src)
        st = rec["state"]
        if len(st["ranks"]) != world:
            raise ValueError(f"{run_dir} was trained with {len(st['ranks'])} process(es); "
                             f"resume it with the same number, got {world}")
        opt.load_state_dict(st["optimizer"])
        mine = st["ranks"][rank]
        stream.load_state_dict(mine["data"])
        carry = tree_map(lambda t: t.to(device), mine["carry"])
        _set_rng_state(mine["rng"])
        step, prev_elapsed = rec["step"], rec["elapsed"]
        best_value, best_metrics = st.get("best_value"), rec.get("best", {})
    elif main and ((last_dir / ckpt.MODEL).is_file() or (best_dir / ckpt.MODEL).is_file()):
        raise ValueError(f"{run_dir} already holds a run; resume it (--resume {run_dir}) or "
                         f"choose another output folder")

    records: list[dict[str, Any]] = []
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(run_dir / ckpt.CONFIG, json.dumps(config, indent=1))
        records = _read_metrics(metrics_path, step)
        ckpt.atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in records))

    dmodel: nn.Module = model
    if world > 1:
        dmodel = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    last_metrics: dict[str, float] = {}
    last_eval_step = -1
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else math.inf
    eval_secs = 0.0

    def progress_of(step: int, elapsed: float) -> float:
        p = step / cfg.steps if cfg.steps else 0.0
        return max(p, elapsed / budget_s)

    def evaluate() -> dict[str, float]:
        nonlocal eval_secs
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            m = {k: float(v) for k, v in task.evaluate(model).items()}
        model.train()
        eval_secs = time.perf_counter() - t
        return m

    def save_last(step: int, elapsed: float) -> None:
        state = {"optimizer": opt.state_dict(), "best_value": best_value,
                 "ranks": [{"data": stream.state_dict(),
                            "carry": tree_map(lambda t: t.detach().cpu(), carry),
                            "rng": _rng_state()}]}
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, state["ranks"][0])
            state["ranks"] = gathered
        if main:
            ckpt.save(last_dir, model, config,
                      {"step": step, "elapsed": elapsed, "metrics": last_metrics,
                       "best": best_metrics}, state)

    def better(v: float) -> bool:
        if best_value is None or not math.isfinite(best_value):
            return math.isfinite(v)
        return v < best_value if cfg.best_mode == "min" else v > best_value

    def eval_and_log(step: int, elapsed: float, bar: Any) -> None:
        """Evaluate (rank 0), log, keep the best checkpoint, redraw the curve."""
        nonlocal last_metrics, best_value, best_metrics, last_eval_step
        last_eval_step = step
        if not main:
            return
        m = last_metrics = evaluate()
        rec = {"step": step, "time": round(elapsed, 3), **{f"valid_{k}": v for k, v in m.items()}}
        records.append(rec)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if cfg.best_metric not in m:
            raise ValueError(f"best_metric {cfg.best_metric!r} is not among the evaluation's "
                             f"metrics: {', '.join(m)}")
        if better(m[cfg.best_metric]):
            best_value, best_metrics = m[cfg.best_metric], {"step": step, **m}
            ckpt.save(best_dir, model, config, {"step": step, "metrics": m})
        plot_curves(run_dir, records, "loss" if "loss" in m else cfg.best_metric)
        if bar is not None:
            bar.write(f"step {step}: " + "  ".join(f"valid {k} {v:.4f}" for k, v in m.items()))

    bar = None
    if main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=1000, bar_format="{l_bar}{bar}| {postfix}", dynamic_ncols=True,
                   leave=True, desc=f"train {task.name}")
    model.train()
    t0 = time.perf_counter()
    interval_loss, interval_n, interval_items, t_int = 0.0, 0, 0, time.perf_counter()
    train_loss = math.nan
    elapsed = prev_elapsed
    try:
        while True:
            elapsed = prev_elapsed + time.perf_counter() - t0
            if world > 1:  # all ranks agree on the clock (stop together, same lr)
                e = torch.tensor([elapsed], dtype=torch.float64, device=device)
                dist.all_reduce(e, op=dist.ReduceOp.MAX)
                elapsed = float(e)
            prog = progress_of(step, elapsed)
            if (cfg.steps is not None and step >= cfg.steps) or \
                    elapsed + eval_secs >= budget_s:
                break
            lr = lr_at(cfg, step, prog)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = tree_map(lambda t: t.to(device, non_blocking=True), next(stream))
            loss, carry, n_items = task.loss(dmodel, batch, carry)
            carry = tree_map(lambda t: t.detach(), carry)
            lval = loss.detach().clone()
            if world > 1:
                dist.all_reduce(lval)
                lval /= world
            lv = float(lval)
            if not math.isfinite(lv):
                raise TrainingDiverged(_diverged_msg("loss", lv, step, last_dir))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if not math.isfinite(gn):
                    raise TrainingDiverged(_diverged_msg("gradient norm", gn, step, last_dir))
            opt.step()
            step += 1
            interval_loss += lv
            interval_n += 1
            interval_items += n_items * world
            if on_step is not None:
                on_step(step)

            is_eval = step % cfg.eval_every == 0
            if step % cfg.log_every == 0 or is_eval:
                now = time.perf_counter()
                train_loss = interval_loss / interval_n
                rate = interval_items / max(now - t_int, 1e-9)
                if main:
                    rec = {"step": step, "time": round(elapsed, 3), "lr": lr,
                           "train_loss": train_loss, "items_per_s": round(rate, 1)}
                    records.append(rec)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                if bar is not None:
                    left = _time_left(cfg, step, elapsed, budget_s)
                    bar.set_postfix_str(f"step {step} loss {train_loss:.3f} "
                                        f"{rate:,.0f} items/s left {left}")
                    bar.n = min(1000, int(1000 * progress_of(step, elapsed)))
                    bar.refresh()
                interval_loss, interval_n, interval_items, t_int = 0.0, 0, 0, time.perf_counter()
            if is_eval:
                eval_and_log(step, elapsed, bar)
                save_last(step, prev_elapsed + time.perf_counter() - t0)
                t_int = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
    elapsed = prev_elapsed + time.perf_counter() - t0
    if last_eval_step != step:  # final evaluation and checkpoint
        if interval_n:
            train_loss = interval_loss / interval_n
        eval_and_log(step, elapsed, None)
        save_last(step, elapsed)
    return TrainResult(run_dir, step, elapsed, last_metrics, best_metrics, train_loss)


def _time_left(cfg: TrainConfig, step: int, elapsed: float, budget_s: float) -> str:
    left = budget_s - elapsed
    if cfg.steps:
        left = min(left, (cfg.steps - step) * elapsed / max(step, 1))
    left = max(0, int(left))
    return f"{left // 60}:{left % 60:02d}"


def _diverged_msg(what: str, value: float, step: int, last_dir: Path) -> str:
    keep = (f"the last good checkpoint is in {last_dir}" if (last_dir / ckpt.MODEL).is_file()
            else "no checkpoint had been written yet")
    return (f"training stopped: the {what} became {value} at step {step + 1}; the parameters "
            f"were not updated with it and {keep}. Try a lower learning rate or gradient "
            f"clipping.")
