"""Process settings for a busy machine: the OpenMP wait policy, the thread count, ``--threads``
and the trainer's slowdown notice."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch

from rnnkit import runtime
from rnnkit.tasks.args import add_train_args
from rnnkit.train import Progress, TrainConfig


def _omp_env(extra: dict[str, str]) -> str:
    """What libgomp itself reports it read (``OMP_DISPLAY_ENV=VERBOSE``) in a fresh
    ``import rnnkit``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"OMP_DISPLAY_ENV": "VERBOSE", **extra})
    code = "import rnnkit, torch; torch.ones(8) @ torch.ones(8)"
    r = subprocess.run([sys.executable, "-c", code],
                       env=env, capture_output=True, text=True, timeout=120, check=True)
    return r.stderr + r.stdout


def test_import_bounds_the_spin_before_torch_loads_openmp() -> None:
    # (libgomp displays an unset wait policy as PASSIVE; the spin count is what it does)
    out = _omp_env({})
    assert f"GOMP_SPINCOUNT = '{runtime.SPIN_COUNT}'" in out, out


def test_user_wait_policy_or_spin_count_wins() -> None:
    out = _omp_env({"OMP_WAIT_POLICY": "PASSIVE"})
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out and "GOMP_SPINCOUNT = '0'" in out, out
    assert "GOMP_SPINCOUNT = '77'" in _omp_env({"GOMP_SPINCOUNT": "77"})


def test_too_late_after_torch_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert runtime.bounded_spin() is False  # torch is loaded in this process
    assert "GOMP_SPINCOUNT" not in os.environ


def test_free_cores_in_range() -> None:
    n = runtime.free_cores(0.05)
    assert 1 <= n <= runtime.usable_cores()


def test_choose_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert runtime.choose_threads(1) == (1, "--threads")
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("RNNKIT_THREADS", raising=False)
        n, why = runtime.choose_threads()
        assert n == runtime.usable_cores() and "cores" in why  # not load-dependent
        assert torch.get_num_threads() == n
        with pytest.raises(ValueError, match=">= 1, got 0"):
            runtime.choose_threads(0)
    finally:
        torch.set_num_threads(before)


def test_threads_flag() -> None:
    p = argparse.ArgumentParser()
    add_train_args(p, {})
    args = p.parse_args(["--threads", "1", "--steps", "3"])
    cfg = TrainConfig.from_args(args)
    assert cfg.threads == 1 and "threads" not in cfg.to_json()
    assert TrainConfig.from_args(p.parse_args(["--steps", "3"])).threads is None
    with pytest.raises(SystemExit):
        p.parse_args(["--threads", "0"])
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(steps=1, threads=0)


def test_slowdown_notice_once(capsys: pytest.CaptureFixture[str]) -> None:
    pr = Progress(TrainConfig(steps=100), "train", "chars", 0, 0.0, enabled=False)
    for r in (800.0, 1000.0, 950.0, 900.0, 500.0):  # start measured at 1000; 500 is not "far"
        assert pr.check_rate(r) is None
    line = pr.check_rate(300.0)
    assert line is not None and "30%" in line and "--threads" in line
    assert pr.check_rate(100.0) is None  # once per run
    err = capsys.readouterr().err
    assert err.count("notice: training slowed") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_release_freed_memory_hands_the_kept_peak_back() -> None:
    """With freed memory kept (the command's setting), a freed 256 MB tensor stays resident;
    release_freed_memory gives it back to the system."""
    code = """
import re, torch, rnnkit
from rnnkit import runtime
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024
assert runtime.keep_freed_memory()
x = torch.ones(64 * 2**20); x += 1; del x
kept = rss()
assert runtime.release_freed_memory()
print(kept, rss())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=True, env={**os.environ, "RNNKIT_KEEP_MEMORY": "1"})
    kept, after = map(float, r.stdout.split())
    assert kept - after > 200, (kept, after)  # MB: the 256 MB block went back


def test_import_caps_onednn_caches_unless_set() -> None:
    """``import rnnkit`` caps oneDNN's and ideep's primitive caches (memory that grew with every
    new shape), before torch loads; a value the user set stays."""
    code = ("import os, rnnkit; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], "
            "os.environ['LRU_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [runtime.DNN_CACHE, runtime.DNN_CACHE]
    env["LRU_CACHE_CAPACITY"] = "7"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [runtime.DNN_CACHE, "7"]
