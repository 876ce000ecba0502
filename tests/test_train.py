"""The trainer: exact resume, NaN stop keeping the last good checkpoint, incompatible resume,
best-by-metric, the schedule, and 2-process torchrun == 1 process with the same global batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import checkpoint as ckpt
from rnnkit.train import TrainConfig, TrainingDiverged, lr_at, train


class Stream:
    """Each of ``rows`` rows reads its own contiguous slice of ``data``; this rank reads rows
    ``[rank*rows/world, (rank+1)*rows/world)``. Position saved for resume."""

    def __init__(self, data: torch.Tensor, rows: int, T: int, rank: int, world: int) -> None:
        n = (len(data) - 1) // rows
        mine = range(rank * rows // world, (rank + 1) * rows // world)
        self.x = torch.stack([data[r * n: r * n + n + 1] for r in mine])
        self.T, self.pos = T, 0

    def __next__(self):
        if self.pos + self.T + 1 > self.x.shape[1]:
            self.pos = 0
        chunk = self.x[:, self.pos: self.pos + self.T + 1]
        self.pos += self.T
        return chunk

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, d):
        self.pos = d["pos"]


class TinyLM(nn.Module):
    def __init__(self, V: int = 7, H: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.rnn = rnnkit.LSTM(H, H)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(H, V)

    def forward(self, x, state=None):  # x (B, T) -> logits (B, T, V)
        out, state = self.rnn(self.drop(self.emb(x)), state)
        return self.head(self.drop(out)), state


class ToyTask:
    """Next-token prediction on a fixed pseudo-random token sequence, with carried state."""

    name = "toy"

    def __init__(self, H: int = 16, rows: int = 4, T: int = 8, nan_at: int | None = None,
                 dropout: float = 0.1):
        g = torch.Generator().manual_seed(1)
        self.data = torch.randint(0, 7, (400,), generator=g)
        self.H, self.rows, self.T, self.nan_at, self.calls = H, rows, T, nan_at, 0
        self.dropout = dropout

    def build_model(self):
        return TinyLM(H=self.H, dropout=self.dropout)

    def batches(self, rank, world):
        return Stream(self.data, self.rows, self.T, rank, world)

    def loss(self, model, batch, carry):
        self.calls += 1
        logits, carry = model(batch[:, :-1], carry)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return loss, carry, batch[:, 1:].numel()

    def evaluate(self, model):
        logits, _ = model(self.data[None, :-1])
        loss = nn.functional.cross_entropy(logits[0], self.data[1:])
        return {"loss": float(loss), "acc": float((logits[0].argmax(-1) == self.data[1:])
                                                  .float().mean())}

    def config(self):
        return {"task": self.name, "hidden": self.H}


def cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / name), steps=20, eval_every=10, log_every=5, warmup=3,
                lr=1e-2, progress=False)
    return TrainConfig(**{**base, **kw})


def params(path) -> dict[str, torch.Tensor]:
    return ckpt.read_tensors(Path(path) / ckpt.MODEL)[0]


def test_run_folder_contents(tmp_path):
    res = train(ToyTask(), cfg(tmp_path))
    run = res.run_dir
    assert res.step == 20
    for f in ("config.json", "metrics.jsonl", "loss.png", "last/model.safetensors",
              "last/trainer.json", "last/trainer.safetensors", "best/model.safetensors"):
        assert (run / f).is_file(), f
    conf = json.loads((run / "config.json").read_text())
    assert conf["task"] == "toy" and conf["train"]["steps"] == 20
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "train_loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in recs if "valid_loss" in r] == [10, 20]
    # the saved weights are the trained model's: re-evaluating them gives the logged loss
    m = TinyLM()
    ckpt.load_weights(m, run / "last")
    m.eval()
    with torch.no_grad():
        assert ToyTask().evaluate(m)["loss"] == pytest.approx(res.metrics["loss"], abs=1e-6)
    assert res.metrics["loss"] < math.log(7)  # learned something


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    full = train(ToyTask(), cfg(tmp_path, "full"))

    def crash(step):
        if step == 13:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        train(ToyTask(), cfg(tmp_path, "cut"), on_step=crash)
    assert json.loads((tmp_path / "cut/last/trainer.json").read_text())["step"] == 10
    res = train(ToyTask(), cfg(tmp_path, "cut", resume=True))
    assert res.step == 20
    a, b = params(full.run_dir / "last"), params(res.run_dir / "last")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert res.metrics["loss"] == full.metrics["loss"]
    # metrics.jsonl holds each step once (entries after the checkpoint were dropped)
    def steps(run):
        return [json.loads(s)["step"] for s in (tmp_path / run / "metrics.jsonl").read_text()
                .splitlines()]

    assert steps("cut") == steps("full")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = cfg(tmp_path, steps=30)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 16.*last good checkpoint"):
        train(ToyTask(nan_at=16), c)
    rec = ckpt.load_trainer(tmp_path / "run/last")
    assert rec["step"] == 10
    # the kept checkpoint resumes; without the NaN the result equals an uninterrupted run
    res = train(ToyTask(), cfg(tmp_path, steps=30, resume=True))
    full = train(ToyTask(), cfg(tmp_path, "full", steps=30))
    a, b = params(full.run_dir / "last"), params(res.run_dir / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incompatible_resume_names_tensor_and_shapes(tmp_path):
    train(ToyTask(H=16), cfg(tmp_path, steps=10))
    with pytest.raises(ValueError, match=r"'emb.weight'.*\(7, 16\).*\(7, 24\)"):
        train(ToyTask(H=24), cfg(tmp_path, steps=20, resume=True))


def test_resume_without_checkpoint_and_clobber_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(ToyTask(), cfg(tmp_path, resume=True))
    train(ToyTask(), cfg(tmp_path, steps=5))
    with pytest.raises(ValueError, match="already holds a run"):
        train(ToyTask(), cfg(tmp_path, steps=5))


def test_best_checkpoint_by_max_metric(tmp_path):
    res = train(ToyTask(), cfg(tmp_path, steps=40, best_metric="acc", best_mode="max"))
    recs = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    accs = [(r["valid_acc"], r["step"]) for r in recs if "valid_acc" in r]
    best_acc = max(a for a, _ in accs)
    first_best_step = min(s for a, s in accs if a == best_acc)
    info = json.loads((res.run_dir / "best/trainer.json").read_text())
    assert info["step"] == first_best_step and res.best["acc"] == best_acc
    with pytest.raises(ValueError, match="best_metric 'bpc' is not among"):
        train(ToyTask(), cfg(tmp_path, "x", steps=10, best_metric="bpc"))


def test_lr_schedule_warmup_then_cosine():
    c = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(c, 0, 0.0) == pytest.approx(0.1)  # (0+1)/10 of peak
    assert lr_at(c, 9, 0.09) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.09)))
    assert lr_at(c, 50, 0.5) == pytest.approx(0.55)
    assert lr_at(c, 100, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="budget"):
        TrainConfig()


def test_minutes_budget_stops(tmp_path):
    res = train(ToyTask(), cfg(tmp_path, steps=None, minutes=0.02, eval_every=10 ** 6))
    assert 0 < res.step and 0 < res.elapsed < 10
    assert (res.run_dir / "last/model.safetensors").is_file()


_WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_train import ToyTask
from rnnkit.train import TrainConfig, train
train(ToyTask(rows=4, dropout=0.0),
      TrainConfig(out={out!r}, steps=6, eval_every=3, log_every=1, warmup=2, lr=1e-2,
                  progress=False))
"""


def test_two_process_torchrun_matches_one_process(tmp_path):
    """Same global batch (4 rows): 2 ranks x 2 rows give the loss curve of 1 process x 4 rows
    (dropout masks differ between the two, so compare with dropout off)."""
    one = tmp_path / "n1"
    train(ToyTask(rows=4, dropout=0.0), TrainConfig(out=str(one), steps=6, eval_every=3,
                                                    log_every=1, warmup=2, lr=1e-2,
                                                    progress=False))
    out = tmp_path / "n2"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port itself (a fixed one can collide)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", str(script)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "last/trainer.json").read_text())["step"] == 6
    curves = {}
    for n in (1, 2):
        recs = [json.loads(s) for s in (tmp_path / f"n{n}/metrics.jsonl").read_text()
                .splitlines()]
        curves[n] = [r["train_loss"] for r in recs if "train_loss" in r]
    assert len(curves[1]) == 6
    torch.testing.assert_close(torch.tensor(curves[2]), torch.tensor(curves[1]), rtol=1e-4,
                               atol=1e-5)
    a, b = params(tmp_path / "n1/last"), params(tmp_path / "n2/last")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)



_SLOW_EVAL_WORKER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_train import ToyTask
from rnnkit.train import TrainConfig, train


class SlowEval(ToyTask):
    def evaluate(self, model):   # only rank 0 evaluates: only it knows this takes 1 s
        time.sleep(1.0)
        return super().evaluate(model)


train(SlowEval(rows=4, dropout=0.0),
      TrainConfig(out={out!r}, minutes=0.1, eval_every=50, log_every=1, warmup=2, lr=1e-2,
                  progress=False))
"""


def test_two_processes_stop_together_on_a_minutes_budget_with_a_slow_evaluation(tmp_path):
    """The clock keeps room for the next evaluation, whose length only rank 0 measures: the
    ranks must agree on it, else rank 0 stops while rank 1 trains on and both wait for ever
    (a 2-rank translation run hung so after its last evaluation)."""
    out = tmp_path / "run"
    script = tmp_path / "worker.py"
    script.write_text(_SLOW_EVAL_WORKER.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node", "2", str(script)],
                           capture_output=True, text=True, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the two ranks did not stop together (hung)")
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads((out / "last/trainer.json").read_text())
    assert done["step"] >= 1 and done["elapsed"] <= 6.0 + 1.0
